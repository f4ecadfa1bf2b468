"""The agent's REST API: probes for load balancers, the cluster operations the CLI calls, metrics.

HTTP/1.1 with keep-alive, served so that no client can make the API cost the agent more than
a bounded share of its descriptors and interpreter (DESIGN rule 8): one thread owns every
socket in a selector and answers the probes from the loop's cached
:class:`~hacore.agent.snapshot.NodeSnapshot`, a few worker threads run what may block, each client
address has a connection cap enforced at accept, and each request one deadline for its TLS
handshake, headers and body (see :class:`_Transport`).

Routing lives in :class:`ApiApp`, which turns a :class:`Request` into a :class:`Response`
without touching sockets; :class:`ApiServer` binds it to a port.
"""

from __future__ import annotations

import collections
import contextlib
import email.utils
import enum
import errno
import functools
import http
import json
import logging
import math
import queue
import re
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import attrs

from hacore.agent.failsafe import PATH as FAILSAFE_PATH
from hacore.agent.failsafe import SIGNATURE_HEADER as FAILSAFE_SIGNATURE
from hacore.agent.snapshot import NodeSnapshot, member_json
from hacore.api.auth import JOIN_TOKEN_USER, Authenticator, Role, parse_basic
from hacore.api.errors import (
    AuthenticationError,
    BadRequestError,
    ForbiddenError,
    HttpsRequiredError,
    NotFoundError,
    UnsupportedMediaTypeError,
    status_for,
)
from hacore.api.facade import AgentFacade, probe_json
from hacore.api.limits import AttemptLimiter, Throttle, connection_budget
from hacore.api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from hacore.api.metrics import SnapshotCollector, render
from hacore.config.node import ApiSettings
from hacore.errors import HacoreError

logger = logging.getLogger(__name__)
access_log = logging.getLogger("hacore.api.access")

JSON = "application/json"
MAX_BODY = 1024 * 1024
_MAX_HEADERS = 100
_MAX_LINE = 8192
REALM = 'Basic realm="hacore"'
INTERNAL_ERROR = "internal error in the hacore agent; its log has the details"
#: password checks that may wait for the one running (more get a 503), and for how long
AUTH_MAX_WAITING = 4
AUTH_WAIT_TIMEOUT = 5.0

#: probe path -> the snapshot condition it answers 200 for
PROBES: dict[str, Callable[[NodeSnapshot, float], bool]] = {
    "/status": lambda snap, now: snap.is_active,
    "/api/v3.1/status": lambda snap, now: snap.is_active,
    "/standby": lambda snap, now: snap.standby_streaming,
    "/health": lambda snap, now: snap.healthy,
    "/liveness": lambda snap, now: snap.alive(now),
    "/readiness": lambda snap, now: snap.ready,
}
_PROBE_METHODS = ("GET", "HEAD", "OPTIONS")
#: the first byte of a TLS handshake record: how a TLS client is told from a plain one
_TLS_HANDSHAKE = 0x16


class PlainHttp(enum.Enum):
    """What a server that speaks TLS does with a plain-HTTP connection on the same port."""

    #: nothing: the connection is treated as TLS, and its handshake fails
    NONE = "none"
    #: only the load-balancer probes that need no credentials; anything else gets a 403
    #: naming the HTTPS URL (so no credential or cluster data ever crosses in clear text)
    PROBES = "probes"
    #: everything, as without TLS: a node that is still being started or joined, whose local
    #: CLI may not have switched to HTTPS yet
    ALL = "all"


@attrs.frozen
class Request:
    method: str
    path: str
    #: names in lower case
    headers: Mapping[str, str]
    body: bytes = b""
    #: came over TLS (or from a server without TLS, where the question does not arise)
    secure: bool = True
    #: the client's address (for the per-client limits and the log)
    client: str = ""
    #: what the credentials may do, once checked (None: none checked, or none needed)
    role: Role | None = None
    #: the single-use join token presented instead of credentials (``POST /cluster/join``)
    join_token: str | None = None


@attrs.frozen
class Response:
    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()


def json_response(status: int, data: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, json.dumps(data).encode(), JSON, headers)


def error_response(status: int, message: str, **headers: str) -> Response:
    return json_response(status, {"error": message}, tuple(headers.items()))


Handler = Callable[[Request, dict[str, str]], Response]


@attrs.frozen
class _Route:
    pattern: re.Pattern[str]
    methods: Mapping[str, Handler]
    #: needs credentials only when ``status_requires_auth`` (probes and metrics)
    probe: bool = False
    #: never needs credentials (public material: the CA certificate)
    public: bool = False
    #: a join token may stand in for credentials (the ticket, and its cancellation)
    join: bool = False

    def required(self, method: str) -> Role:
        """The least role for ``method``: probes need the probe role, reading the read-only
        one, anything that changes something (or hands out secrets) the admin."""
        if self.probe:
            return Role.PROBE
        return Role.READ if method in _PROBE_METHODS else Role.ADMIN


class ApiApp:
    """The routes, authentication and error mapping, independent of the transport."""

    def __init__(self, facade: AgentFacade, settings: ApiSettings) -> None:
        self.facade = facade
        #: outlives credential changes, so swapping them does not reset a client's failures
        self._attempts = AttemptLimiter()
        self.set_settings(settings)
        self._plain: tuple[PlainHttp, str] = (PlainHttp.ALL, "")
        self._collector = SnapshotCollector(facade.snapshot)
        probe = {method: self._probe for method in _PROBE_METHODS}
        self._routes = [
            *(_Route(re.compile(re.escape(path)), probe, probe=True) for path in PROBES),
            _Route(re.compile("/metrics"), {"GET": self._metrics}, probe=True),
            _Route(re.compile("/cluster"), {"GET": self._cluster}),
            _Route(re.compile("/cluster/ca"), {"GET": self._cluster_ca}, public=True),
            _Route(re.compile("/cluster/start"), {"POST": self._start}),
            _Route(re.compile("/cluster/join"), {"POST": self._join}, join=True),
            _Route(re.compile("/cluster/teardown"), {"POST": self._teardown}),
            _Route(re.compile("/nodes"), {"GET": self._nodes}),
            _Route(
                re.compile("/nodes/(?P<name>[^/]+)"), {"GET": self._node, "DELETE": self._remove}
            ),
            _Route(re.compile("/nodes/(?P<name>[^/]+)/explain"), {"GET": self._explain}),
            _Route(re.compile("/nodes/(?P<name>[^/]+)/restart"), {"POST": self._restart}),
            _Route(re.compile("/nodes/(?P<name>[^/]+)/reinit"), {"POST": self._reinit}),
            _Route(re.compile("/failover"), {"POST": self._manual_failover}),
            _Route(re.compile("/pause"), {"POST": self._pause}),
            _Route(re.compile("/resume"), {"POST": self._resume}),
            _Route(re.compile("/history"), {"GET": self._history}),
            _Route(re.compile("/salvage"), {"GET": self._salvage_list}),
            _Route(re.compile("/salvage/(?P<ident>[^/]+)"), {"GET": self._salvage_show}),
            _Route(re.compile("/switchover"), {"POST": self._switchover}),
            # failsafe questions are signed with the cluster's key, checked by the agent
            _Route(re.compile(FAILSAFE_PATH), {"POST": self._failsafe}, public=True),
        ]

    def set_settings(self, settings: ApiSettings) -> None:
        """Swap the credentials in place (``cluster start`` creates them while serving)."""
        authenticator = Authenticator(
            settings.auth,
            users=settings.users,
            max_waiting=AUTH_MAX_WAITING,
            wait_timeout=AUTH_WAIT_TIMEOUT,
            attempts=self._attempts,
        )
        self._auth_state = (settings, authenticator)

    def set_plain(self, plain: PlainHttp, https_url: str) -> None:
        """What requests that did not come over TLS may do (see :class:`PlainHttp`)."""
        self._plain = (plain, https_url)

    def immediate(self, req: Request) -> bool:
        """True when answering ``req`` cannot block: a probe from the cached snapshot whose
        credentials, if it needs any, cost no hashing. The transport answers those on its own
        thread and sends the rest to its workers."""
        path = req.path.rstrip("/") or "/"
        if path not in PROBES:
            return False
        settings, authenticator = self._auth_state
        return not settings.status_requires_auth or authenticator.known(
            req.headers.get("authorization")
        )

    def respond(self, req: Request) -> Response:
        path = req.path.rstrip("/") or "/"
        for route in self._routes:
            match = route.pattern.fullmatch(path)
            if match is not None:
                break
        else:
            return error_response(404, f"no such endpoint: {req.method} {path}")
        if not req.secure:
            refused = self._plain_refusal(route, path)
            if refused is not None:
                return refused
        handler = route.methods.get(req.method)
        if handler is None and req.method == "HEAD":
            # the transport sends GET's headers and drops the body
            handler = route.methods.get("GET")
        if handler is None:
            allow = ", ".join(sorted({*route.methods, "OPTIONS"}))
            if req.method == "OPTIONS":
                return Response(204, content_type="", headers=(("Allow", allow),))
            return error_response(
                405, f"{path} does not accept {req.method} (use {allow})", Allow=allow
            )
        if req.method == "POST" and not _is_json(req.headers.get("content-type")):
            err = UnsupportedMediaTypeError(
                f"POST {path} takes a JSON body: send Content-Type: {JSON}"
            )
            return error_response(err.status, str(err))
        return self._guarded(route, req, handler, match.groupdict())

    def _plain_refusal(self, route: _Route, path: str) -> Response | None:
        plain, https_url = self._plain
        if plain is PlainHttp.ALL:
            return None
        settings, _ = self._auth_state
        if route.probe and path in PROBES and not settings.status_requires_auth:
            return None
        err = HttpsRequiredError(
            f"this agent serves its API over HTTPS only: use {https_url}{path} (plain HTTP "
            "answers only the load-balancer probes that need no credentials)"
        )
        return error_response(err.status, str(err))

    def _guarded(
        self, route: _Route, req: Request, handler: Handler, params: dict[str, str]
    ) -> Response:
        settings, authenticator = self._auth_state
        try:
            if route.public:
                pass
            elif route.join and _join_token(req) is not None:
                req = attrs.evolve(req, join_token=_join_token(req))
            elif not route.probe or settings.status_requires_auth:
                role = self._authenticate(authenticator, req)
                needed = route.required(req.method)
                if role < needed:
                    raise ForbiddenError(
                        f"the API user's role ({role.name.lower()}) may not {req.method} "
                        f"{req.path}: that needs the {needed.name.lower()} role"
                    )
                req = attrs.evolve(req, role=role)
            return handler(req, params)
        except HacoreError as err:
            status = status_for(err)
            if status == 500:
                logger.warning("%s %s failed: %s", req.method, req.path, err)
            extra = {"WWW-Authenticate": REALM} if status == 401 else {}
            retry = getattr(err, "retry_after", None)
            if retry is not None:
                extra["Retry-After"] = str(max(1, math.ceil(retry)))
            return error_response(status, str(err) or type(err).__name__, **extra)
        except Exception:
            logger.exception("%s %s failed", req.method, req.path)
            return error_response(500, INTERNAL_ERROR)

    @staticmethod
    def _authenticate(authenticator: Authenticator, req: Request) -> Role:
        header = req.headers.get("authorization")
        role = authenticator.role(header, req.client)
        if role is not None:
            return role
        if not authenticator.configured:
            raise AuthenticationError(
                "this agent has no API credentials yet (api.auth is unset), so it refuses "
                "requests that need them"
            )
        if not header:
            raise AuthenticationError("authentication required: send HTTP Basic credentials")
        raise AuthenticationError("wrong credentials")

    # ---- probes and metrics: from the cached snapshot only ----

    def _probe(self, req: Request, params: dict[str, str]) -> Response:
        path = req.path.rstrip("/")
        now = time.monotonic()
        snap = self.facade.snapshot()
        status = 200 if PROBES[path](snap, now) else 503
        if req.method != "GET":
            return Response(status, content_type="")
        body = probe_json(snap, now)
        if req.role is None:
            # not for anyone on the network: the fencing token and the exact version
            for secret in _PROBE_PRIVATE:
                body.pop(secret, None)
        return json_response(status, body)

    def _metrics(self, req: Request, params: dict[str, str]) -> Response:
        return Response(200, render(self._collector), METRICS_CONTENT_TYPE)

    # ---- the cluster view ----

    def _cluster(self, req: Request, params: dict[str, str]) -> Response:
        return json_response(200, self.facade.cluster())

    def _cluster_ca(self, req: Request, params: dict[str, str]) -> Response:
        source = getattr(self.facade, "cluster_ca", None)
        found = source() if source is not None else None
        if found is None:
            raise NotFoundError(f"{self.facade.snapshot().node_name} has no cluster CA")
        return json_response(200, found)

    def _nodes(self, req: Request, params: dict[str, str]) -> Response:
        snap = self.facade.snapshot()
        nodes = [member_json(member, snap) for member in snap.members]
        return json_response(200, {"leader": snap.leader, "nodes": nodes})

    def _node(self, req: Request, params: dict[str, str]) -> Response:
        name = unquote(params["name"])
        snap = self.facade.snapshot()
        member = snap.member(name)
        if member is None:
            raise NotFoundError(f'no node named "{name}" in this cluster')
        return json_response(200, member_json(member, snap))

    def _explain(self, req: Request, params: dict[str, str]) -> Response:
        source = getattr(self.facade, "explain", None)
        if source is None:
            raise NotFoundError(f"{self.facade.snapshot().node_name} explains nothing")
        return json_response(200, source(unquote(params["name"])))

    def _history(self, req: Request, params: dict[str, str]) -> Response:
        source = getattr(self.facade, "history", None)
        if source is None:
            raise NotFoundError(f"{self.facade.snapshot().node_name} keeps no history")
        return json_response(200, source())

    def _salvage_list(self, req: Request, params: dict[str, str]) -> Response:
        source = getattr(self.facade, "salvage_list", None)
        if source is None:
            raise NotFoundError(f"{self.facade.snapshot().node_name} keeps no salvage archives")
        return json_response(200, source())

    def _salvage_show(self, req: Request, params: dict[str, str]) -> Response:
        source = getattr(self.facade, "salvage_show", None)
        if source is None:
            raise NotFoundError(f"{self.facade.snapshot().node_name} keeps no salvage archives")
        return json_response(200, source(unquote(params["ident"])))

    # ---- operations ----

    def _start(self, req: Request, params: dict[str, str]) -> Response:
        return json_response(200, self.facade.start_cluster(_json_object(req)))

    def _join(self, req: Request, params: dict[str, str]) -> Response:
        body = _json_object(req)
        body.pop("join_token", None)
        body.pop("join_client", None)
        if req.join_token is not None:
            action = body.get("action", "ticket")
            if action not in ("ticket", "cancel"):
                raise ForbiddenError(f'a join token may ask for a ticket or cancel, not "{action}"')
            body["join_token"], body["join_client"] = req.join_token, req.client
        return json_response(200, self.facade.join_ticket(body))

    def _teardown(self, req: Request, params: dict[str, str]) -> Response:
        teardown = getattr(self.facade, "teardown", None)
        if teardown is None:
            raise NotFoundError(f"{self.facade.snapshot().node_name} takes no teardown")
        return json_response(200, teardown())

    def _remove(self, req: Request, params: dict[str, str]) -> Response:
        return json_response(200, self.facade.remove_node(unquote(params["name"])))

    def _switchover(self, req: Request, params: dict[str, str]) -> Response:
        body = _json_object(req)
        unknown = sorted(set(body) - {"to"})
        if unknown:
            raise BadRequestError(
                f'unknown field "{unknown[0]}" in the switchover request (only "to")'
            )
        to = body.get("to")
        if to is not None and (not isinstance(to, str) or not to):
            raise BadRequestError('"to" must be a node name or null')
        return json_response(200, self.facade.switchover(to))

    def _restart(self, req: Request, params: dict[str, str]) -> Response:
        source = getattr(self.facade, "restart_node", None)
        if source is None:
            raise NotFoundError(f"{self.facade.snapshot().node_name} restarts nothing")
        return json_response(200, source(unquote(params["name"]), _json_object(req)))

    def _reinit(self, req: Request, params: dict[str, str]) -> Response:
        source = getattr(self.facade, "reinit_node", None)
        if source is None:
            raise NotFoundError(f"{self.facade.snapshot().node_name} re-clones nothing")
        return json_response(200, source(unquote(params["name"])))

    def _manual_failover(self, req: Request, params: dict[str, str]) -> Response:
        source = getattr(self.facade, "failover", None)
        if source is None:
            raise NotFoundError(f"{self.facade.snapshot().node_name} takes no failover")
        return json_response(200, source(_json_object(req)))

    def _pause(self, req: Request, params: dict[str, str]) -> Response:
        source = getattr(self.facade, "pause", None)
        if source is None:
            raise NotFoundError(f"{self.facade.snapshot().node_name} takes no pause")
        credentials = parse_basic(req.headers.get("authorization"))
        user = credentials[0] if credentials is not None else "?"
        return json_response(200, source(_json_object(req), f"{user}@{req.client or '?'}"))

    def _resume(self, req: Request, params: dict[str, str]) -> Response:
        source = getattr(self.facade, "resume", None)
        if source is None:
            raise NotFoundError(f"{self.facade.snapshot().node_name} takes no resume")
        return json_response(200, source(_json_object(req)))

    def _failsafe(self, req: Request, params: dict[str, str]) -> Response:
        answer = getattr(self.facade, "failsafe", None)
        if answer is None:
            raise NotFoundError(f"{self.facade.snapshot().node_name} takes no failsafe questions")
        body, signature = answer(req.body, req.headers.get(FAILSAFE_SIGNATURE, ""))
        return Response(200, body, JSON, ((FAILSAFE_SIGNATURE, signature),))


#: probe answer fields shown only on an authenticated probe (``status_requires_auth: true``);
#: open probes check no credentials, so they hide them from everyone
_PROBE_PRIVATE = ("lease_token", "version")


def _is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == JSON


def _join_token(req: Request) -> str | None:
    """The join token, when the request presents one as the join user's password."""
    credentials = parse_basic(req.headers.get("authorization"))
    if credentials is None or credentials[0] != JOIN_TOKEN_USER or not credentials[1]:
        return None
    return credentials[1]


def _json_object(req: Request) -> dict[str, Any]:
    """The body as a JSON object; an empty body is an empty object."""
    if not req.body.strip():
        return {}
    try:
        data = json.loads(req.body)
    except UnicodeDecodeError:
        raise BadRequestError("the request body is not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise BadRequestError(f"the request body is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise BadRequestError(
            f"the request body must be a JSON object, not a {type(data).__name__}"
        )
    return data


# ---------------------------------------------------------------------------------------------
# Transport
# ---------------------------------------------------------------------------------------------

#: seconds a client has for a whole request (TLS handshake, headers and body), counted from its
#: connection, or on a kept-alive one from the request's first byte: a client that trickles
#: bytes (slowloris) is closed then, however often it sends
REQUEST_TIMEOUT = 10.0
#: seconds a kept-alive connection may wait for its next request
IDLE_TIMEOUT = 60.0
#: threads for the requests that may block: operations, the store-backed views, password checks
WORKERS = 8
#: requests waiting for a worker; past that they are answered 503 at once
QUEUE = 64
#: connections one client address may hold open; more are closed as soon as they are accepted
PER_CLIENT = 64
LISTEN_BACKLOG = 512
_READ_SIZE = 65536
#: the largest request head (request line and headers) that can be valid
_MAX_HEAD = (_MAX_LINE + 2) * (_MAX_HEADERS + 1)
_SWEEP_INTERVAL = 0.25
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE


@functools.lru_cache(maxsize=2)
def _http_date(second: int) -> str:
    return email.utils.formatdate(second, usegmt=True)


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class _Refused(Exception):
    """A request the transport answers itself, then closes the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@attrs.frozen
class _Head:
    method: str
    target: str
    version: str
    #: names in lower case
    headers: dict[str, str]
    #: bytes of the head, its blank line included
    size: int
    body_length: int
    close: bool
    expect_continue: bool


def _head_end(buf: bytearray, start: int) -> tuple[int, int] | None:
    """Where the head's last line ends and where its blank line ends."""
    crlf, lf = buf.find(b"\n\r\n", start), buf.find(b"\n\n", start)
    found = [hit for hit in ((crlf, crlf + 3), (lf, lf + 2)) if hit[0] >= 0]
    return min(found) if found else None


def _parse_head(buf: bytearray, start: int = 0) -> _Head | None:
    """The request head at the start of ``buf`` (no leading blank lines), None while it is not
    all there; raises :class:`_Refused`. ``start``: where a new line end may be."""
    end = _head_end(buf, start)
    if end is None:
        line_start = buf.rfind(b"\n") + 1
        if len(buf) - line_start > _MAX_LINE:
            if line_start:
                raise _Refused(431, "a request header line is too long")
            raise _Refused(414, "the request line is too long")
        if len(buf) > _MAX_HEAD:
            raise _Refused(431, f"more than {_MAX_HEADERS} request headers")
        return None
    last, size = end
    lines = bytes(buf[:last]).split(b"\n")
    requestline = lines[0].rstrip(b"\r").decode("iso-8859-1")
    if len(lines[0]) > _MAX_LINE:
        raise _Refused(414, "the request line is too long")
    words = requestline.split()
    if len(words) != 3 or not words[2].startswith("HTTP/"):
        raise _Refused(400, f"malformed request line {requestline[:80]!r}")
    method, target, version = words
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise _Refused(505, f"HTTP version {version[5:]!r} is not supported (use 1.1)")
    headers: dict[str, str] = {}
    for index, raw in enumerate(lines[1:]):
        if len(raw) > _MAX_LINE + 1:
            raise _Refused(431, "a request header line is too long")
        if index >= _MAX_HEADERS:
            raise _Refused(431, f"more than {_MAX_HEADERS} request headers")
        line = raw.rstrip(b"\r").decode("iso-8859-1")
        name, colon, value = line.partition(":")
        # no folded lines, no space before the colon (RFC 9112 section 5)
        if not colon or not name or name != name.strip():
            raise _Refused(400, "malformed request header line")
        key, value = name.lower(), value.strip()
        # repeated headers are joined, so a repeated Content-Length is refused
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    if "transfer-encoding" in headers:
        raise _Refused(411, "send the request body with a Content-Length")
    raw_length = headers.get("content-length")
    try:
        length = int(raw_length) if raw_length is not None else 0
    except ValueError:
        length = -1
    if length < 0:
        raise _Refused(400, "Content-Length is not a number >= 0")
    if length > MAX_BODY:
        raise _Refused(413, f"request bodies are limited to {MAX_BODY} bytes")
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    return _Head(
        method=method,
        target=target,
        version=version,
        headers=headers,
        size=size,
        body_length=length,
        close=version == "HTTP/1.0" or "close" in tokens,
        expect_continue=version == "HTTP/1.1"
        and headers.get("expect", "").lower() == "100-continue",
    )


def _encode(resp: Response, *, head_only: bool, close: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {resp.status} {_reason(resp.status)}",
        "Server: hacore",
        f"Date: {_http_date(int(time.time()))}",
    ]
    if resp.content_type:
        lines.append(f"Content-Type: {resp.content_type}")
    lines.append(f"Content-Length: {len(resp.body)}")
    lines.extend(f"{name}: {value}" for name, value in resp.headers)
    if close:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("iso-8859-1")
    return head if head_only or not resp.body else head + resp.body


class _Stage(enum.Enum):
    #: a new connection: its first byte tells TLS from plain HTTP
    PEEK = "peek"
    HANDSHAKE = "handshake"
    #: reading a request (or waiting for the next one)
    READ = "read"
    #: a worker has its request
    BUSY = "busy"
    #: sending a response
    WRITE = "write"


class _Connection:
    __slots__ = (
        "buf",
        "close_after",
        "closed",
        "continued",
        "deadline",
        "eof",
        "fd",
        "head",
        "head_only",
        "idle",
        "io",
        "mask",
        "out",
        "peer",
        "scanned",
        "stage",
        "tls",
        "want",
    )

    def __init__(self, sock: socket.socket, peer: str, deadline: float) -> None:
        self.fd = sock.fileno()
        #: what bytes go through: the accepted socket, or the TLS socket over it
        self.io = sock
        self.peer = peer
        self.stage = _Stage.PEEK
        self.deadline = deadline
        #: waiting for a kept-alive connection's next request (the idle timeout applies)
        self.idle = False
        self.tls = False
        self.buf = bytearray()
        #: how far ``buf`` was searched for the end of the head
        self.scanned = 0
        self.head: _Head | None = None
        self.out = bytearray()
        self.continued = False
        self.close_after = False
        self.head_only = False
        self.eof = False
        self.closed = False
        #: the events the selector watches for it (0: not registered)
        self.mask = 0
        #: what the TLS handshake waits for
        self.want = _READ


class _Transport:
    """HTTP/1.1 for :class:`ApiApp`, with bounded costs whatever the clients do.

    One thread owns every socket (non-blocking, in a selector): it accepts, refuses what is
    over the limits at once, runs TLS handshakes, reads requests, answers the probes from the
    cached snapshot and writes answers. Requests that may block (operations, the store-backed
    views, password checks) go to ``workers`` threads through a bounded queue. So a connection
    costs a descriptor and a few hundred bytes, not a thread; an idle or slow client costs
    nothing until its deadline; and however many clients there are, the API never runs more
    than ``workers + 1`` threads, which bounds how much of the interpreter it can take from
    the agent's loop (DESIGN rule 8).
    """

    def __init__(
        self,
        address: tuple[str, int],
        app: ApiApp,
        ssl_context: ssl.SSLContext | None,
        plain: PlainHttp,
        *,
        idle_timeout: float,
        request_timeout: float,
        workers: int,
        per_client: int,
        max_connections: int,
    ) -> None:
        self.app = app
        #: swapped whole (one assignment) when a node gets its TLS material
        self.tls: tuple[ssl.SSLContext | None, PlainHttp] = (ssl_context, plain)
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.per_client = per_client
        self.max_connections = max_connections
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind(address)
            self.listener.listen(LISTEN_BACKLOG)
        except OSError:
            self.listener.close()
            raise
        self.listener.setblocking(False)
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._conns: dict[int, _Connection] = {}
        self._per_peer: dict[str, int] = {}
        self._jobs: queue.Queue[tuple[_Connection, Request] | None] = queue.Queue(QUEUE)
        self._done: collections.deque[tuple[_Connection, Response]] = collections.deque()
        self._workers = [
            threading.Thread(target=self._work, name=f"hacore-api-{index}", daemon=True)
            for index in range(workers)
        ]
        self._stopping = False
        self._accept_paused_until: float | None = None
        self._refusals = Throttle()
        #: connections refused at accept (tests and benchmarks read it)
        self.refused = 0

    # -- life cycle --------------------------------------------------------------------------

    def serve(self) -> None:
        """The I/O thread's body, until :meth:`stop`."""
        for worker in self._workers:
            worker.start()
        self._selector.register(self.listener.fileno(), _READ, None)
        self._selector.register(self._wake_r.fileno(), _READ, self._wake_r)
        next_sweep = time.monotonic() + _SWEEP_INTERVAL
        try:
            while not self._stopping:
                for key, events in self._selector.select(_SWEEP_INTERVAL):
                    data = key.data
                    if data is None:
                        self._accept()
                    elif isinstance(data, _Connection):
                        self._on_event(data, events)
                    else:
                        self._drain_wakeups()
                self._finish_done()
                now = time.monotonic()
                if now >= next_sweep:
                    next_sweep = now + _SWEEP_INTERVAL
                    self._sweep(now)
        finally:
            self._close_all()

    def stop(self) -> None:
        self._stopping = True
        self._wake()

    def _close_all(self) -> None:
        for conn in list(self._conns.values()):
            with contextlib.suppress(OSError):
                conn.io.shutdown(socket.SHUT_RDWR)
            self._close(conn)
        for _ in self._workers:
            with contextlib.suppress(queue.Full):
                self._jobs.put(None, timeout=1.0)
        self.close()

    def close(self) -> None:
        """Release the port and the selector (after :meth:`serve` ended, or without it)."""
        self._selector.close()
        for sock in (self.listener, self._wake_r, self._wake_w):
            sock.close()

    # -- accepting ---------------------------------------------------------------------------

    def _accept(self) -> None:
        for _ in range(64):
            try:
                sock, address = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # the listener stays readable: stop polling it for a moment
                    self._selector.unregister(self.listener.fileno())
                    self._accept_paused_until = time.monotonic() + 0.1
                    if self._refusals.allow("accept") is not None:
                        logger.warning("the REST API cannot accept connections: %s", err)
                return
            peer = str(address[0])
            held = self._per_peer.get(peer, 0)
            if held >= self.per_client or len(self._conns) >= self.max_connections:
                self._refuse_at_accept(sock, peer, held)
                continue
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(sock, peer, time.monotonic() + self.request_timeout)
            self._conns[conn.fd] = conn
            self._per_peer[peer] = held + 1
            context, plain = self.tls
            if context is not None and plain is PlainHttp.NONE:
                self._start_tls(conn, context)
            self._update(conn)

    def _refuse_at_accept(self, sock: socket.socket, peer: str, held: int) -> None:
        self.refused += 1
        sock.close()
        suppressed = self._refusals.allow(peer)
        if suppressed is None:
            return
        why = (
            f"it holds {held} connections (the per-client limit)"
            if held >= self.per_client
            else f"the API holds {len(self._conns)} connections (its limit)"
        )
        more = f"; {suppressed} more refused since the last report" if suppressed else ""
        logger.warning("refused a connection from %s: %s%s", peer, why, more)

    # -- events ------------------------------------------------------------------------------

    def _on_event(self, conn: _Connection, events: int) -> None:
        if conn.stage is _Stage.PEEK:
            self._peek(conn)
        elif conn.stage is _Stage.HANDSHAKE:
            self._handshake(conn)
        else:
            if events & _WRITE and conn.out:
                self._flush(conn)
            if not conn.closed and conn.stage is _Stage.READ:
                if events & _READ:
                    self._read(conn)
                else:
                    self._advance(conn)
        self._update(conn)

    def _peek(self, conn: _Connection) -> None:
        try:
            first = conn.io.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return
        except OSError:
            self._close(conn)
            return
        if not first:
            self._close(conn)
            return
        context, _ = self.tls
        if first[0] != _TLS_HANDSHAKE:
            conn.stage = _Stage.READ
            self._read(conn)
        elif context is None:
            # a TLS client of a plain server: closed at once, so it fails fast
            logger.debug("TLS handshake from %s to a plain-HTTP API", conn.peer)
            self._close(conn)
        else:
            self._start_tls(conn, context)

    def _start_tls(self, conn: _Connection, context: ssl.SSLContext) -> None:
        try:
            conn.io = context.wrap_socket(conn.io, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError) as err:
            logger.debug("TLS with %s failed: %s", conn.peer, err)
            self._close(conn)
            return
        conn.stage, conn.tls = _Stage.HANDSHAKE, True
        self._handshake(conn)

    def _handshake(self, conn: _Connection) -> None:
        try:
            cast(ssl.SSLSocket, conn.io).do_handshake()
        except ssl.SSLWantReadError:
            conn.want = _READ
            return
        except ssl.SSLWantWriteError:
            conn.want = _WRITE
            return
        except (OSError, ValueError) as err:
            logger.debug("TLS handshake with %s failed: %s", conn.peer, err)
            self._close(conn)
            return
        conn.stage = _Stage.READ
        self._read(conn)

    def _read(self, conn: _Connection) -> None:
        while len(conn.buf) <= _MAX_HEAD + MAX_BODY:
            try:
                data = conn.io.recv(_READ_SIZE)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            except OSError:
                self._close(conn)
                return
            if not data:
                conn.eof = True
                break
            if conn.idle:
                conn.idle = False
                conn.deadline = time.monotonic() + self.request_timeout
            conn.buf += data
        self._advance(conn)

    def _advance(self, conn: _Connection) -> None:
        """Answer or dispatch the requests complete in the buffer, one at a time."""
        while conn.stage is _Stage.READ and not conn.closed:
            if conn.head is None:
                while conn.buf.startswith((b"\r", b"\n")):
                    del conn.buf[:1]
                try:
                    conn.head = _parse_head(conn.buf, max(0, conn.scanned - 3))
                except _Refused as refused:
                    conn.close_after = True
                    self._reply(conn, error_response(refused.status, str(refused)))
                    return
                conn.scanned = len(conn.buf)
            head = conn.head
            if head is None or len(conn.buf) < head.size + head.body_length:
                if conn.eof:
                    self._close(conn)
                elif head is not None and head.expect_continue and not conn.continued:
                    conn.continued = True
                    conn.out += _CONTINUE
                    self._flush(conn)
                return
            end = head.size + head.body_length
            body = bytes(conn.buf[head.size : end])
            del conn.buf[:end]
            conn.head, conn.scanned, conn.continued = None, 0, False
            conn.close_after = head.close or conn.eof
            conn.head_only = head.method == "HEAD"
            req = Request(
                head.method,
                urlsplit(head.target).path,
                head.headers,
                body,
                secure=conn.tls or self.tls[0] is None,
                client=conn.peer,
            )
            if access_log.isEnabledFor(logging.DEBUG):
                access_log.debug("%s %s %s %s", conn.peer, head.method, head.target, head.version)
            if self.app.immediate(req):
                self._reply(conn, self.app.respond(req))
                continue
            try:
                self._jobs.put_nowait((conn, req))
            except queue.Full:
                self._reply(
                    conn,
                    error_response(
                        503, "the agent's API is busy: try again shortly", **{"Retry-After": "1"}
                    ),
                )
                continue
            conn.stage = _Stage.BUSY

    def _reply(self, conn: _Connection, resp: Response) -> None:
        conn.out += _encode(resp, head_only=conn.head_only, close=conn.close_after)
        conn.head_only = False
        conn.stage = _Stage.WRITE
        conn.deadline = max(conn.deadline, time.monotonic() + self.request_timeout)
        self._flush(conn)

    def _flush(self, conn: _Connection) -> None:
        while conn.out:
            try:
                sent = conn.io.send(conn.out)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return
            except OSError:
                self._close(conn)
                return
            del conn.out[:sent]
        if conn.stage is not _Stage.WRITE:
            return
        if conn.close_after:
            with contextlib.suppress(OSError):
                conn.io.shutdown(socket.SHUT_WR)
            self._close(conn)
            return
        conn.stage = _Stage.READ
        conn.idle = not conn.buf
        timeout = self.idle_timeout if conn.idle else self.request_timeout
        conn.deadline = time.monotonic() + timeout

    def _update(self, conn: _Connection) -> None:
        """Watch for what the connection waits for."""
        if conn.closed:
            return
        stage = conn.stage
        if stage is _Stage.HANDSHAKE:
            mask = conn.want
        elif stage is _Stage.WRITE:
            mask = _WRITE
        elif stage is _Stage.BUSY:
            mask = 0
        else:
            mask = _READ | (_WRITE if conn.out else 0)
        if mask == conn.mask:
            return
        if not conn.mask:
            self._selector.register(conn.fd, mask, conn)
        elif not mask:
            self._selector.unregister(conn.fd)
        else:
            self._selector.modify(conn.fd, mask, conn)
        conn.mask = mask

    def _close(self, conn: _Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        if conn.mask:
            self._selector.unregister(conn.fd)
            conn.mask = 0
        self._conns.pop(conn.fd, None)
        held = self._per_peer.get(conn.peer, 1) - 1
        if held > 0:
            self._per_peer[conn.peer] = held
        else:
            self._per_peer.pop(conn.peer, None)
        conn.io.close()

    def _sweep(self, now: float) -> None:
        paused = self._accept_paused_until
        if paused is not None and now >= paused:
            self._accept_paused_until = None
            self._selector.register(self.listener.fileno(), _READ, None)
        for conn in [c for c in self._conns.values() if c.deadline <= now]:
            if conn.stage is not _Stage.BUSY:
                if not conn.idle:
                    logger.debug(
                        "closing a connection from %s: request not complete in time", conn.peer
                    )
                self._close(conn)

    # -- workers -----------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            conn, req = job
            try:
                resp = self.app.respond(req)
            except Exception:
                logger.exception("%s %s failed", req.method, req.path)
                resp = error_response(
                    500, "internal error in the hacore agent; its log has the details"
                )
            self._done.append((conn, resp))
            self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _drain_wakeups(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass

    def _finish_done(self) -> None:
        while self._done:
            conn, resp = self._done.popleft()
            if conn.closed:
                continue
            conn.stage = _Stage.READ
            self._reply(conn, resp)
            if not conn.closed and conn.stage is _Stage.READ:
                self._advance(conn)
            self._update(conn)


class ApiServer:
    """The REST API on one address; :meth:`start` serves it from a background thread.

    It binds at construction, so a taken port fails at once and ``port`` (0 asks the kernel for
    a free one) is known before :meth:`start`. The limits (see :class:`_Transport` and
    docs/api.md) default to the module's constants; ``max_connections`` to what the process's
    descriptor limit leaves after the agent's own needs.
    """

    def __init__(
        self,
        facade: AgentFacade,
        settings: ApiSettings,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        plain: PlainHttp = PlainHttp.NONE,
        idle_timeout: float = IDLE_TIMEOUT,
        request_timeout: float = REQUEST_TIMEOUT,
        workers: int = WORKERS,
        per_client: int = PER_CLIENT,
        max_connections: int | None = None,
    ) -> None:
        self.app = ApiApp(facade, settings)
        self.host = host
        self.tls = ssl_context is not None
        try:
            self._transport = _Transport(
                (host, port),
                self.app,
                ssl_context,
                plain,
                idle_timeout=idle_timeout,
                request_timeout=request_timeout,
                workers=workers,
                per_client=per_client,
                max_connections=max_connections or connection_budget(),
            )
        except OSError as err:
            raise HacoreError(
                f"the REST API cannot listen on {host}:{port}: {err.strerror or err}"
            ) from None
        self._thread: threading.Thread | None = None
        if self.tls:
            self.app.set_plain(plain, self.url)

    @property
    def port(self) -> int:
        return int(self._transport.address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def refused(self) -> int:
        """Connections refused at accept so far (over the per-client or the total limit)."""
        return self._transport.refused

    def set_settings(self, settings: ApiSettings) -> None:
        self.app.set_settings(settings)

    def set_tls(self, ssl_context: ssl.SSLContext | None, plain: PlainHttp) -> None:
        """Serve TLS from now on (new connections), and ``plain`` to plain-HTTP ones; None
        goes back to plain HTTP for everything."""
        self.tls = ssl_context is not None
        self.app.set_plain(plain if self.tls else PlainHttp.ALL, self.url)
        self._transport.tls = (ssl_context, plain)

    def start(self) -> ApiServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._transport.serve, name=f"hacore-api-{self.port}", daemon=True
            )
            self._thread.start()
            logger.info("REST API listening on %s", self.url)
        return self

    def shutdown(self) -> None:
        """Stop accepting, end open keep-alive connections, release the port."""
        if self._thread is not None:
            self._transport.stop()
            self._thread.join()
            self._thread = None
        else:
            self._transport.close()

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


__all__ = ["ApiApp", "ApiServer", "PlainHttp", "Request", "Response"]
