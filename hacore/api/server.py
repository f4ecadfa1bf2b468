"""The agent's REST API: probes for load balancers, the cluster operations the CLI calls, metrics.

Built on the standard library's threading HTTP server with HTTP/1.1 keep-alive, a deep listen
queue (a burst of health checks never waits for a retransmitted SYN, as it does with a backlog
of 5) and one buffered write per response. Probes are answered from the loop's cached
:class:`~hacore.api.facade.NodeSnapshot`, so their latency does not depend on the store.

Routing lives in :class:`ApiApp`, which turns a :class:`Request` into a :class:`Response`
without touching sockets; :class:`ApiServer` binds it to a port.
"""

from __future__ import annotations

import contextlib
import email.utils
import enum
import functools
import json
import logging
import re
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import attrs

from hacore.api.auth import Authenticator
from hacore.api.errors import (
    AuthenticationError,
    BadRequestError,
    HttpsRequiredError,
    NotFoundError,
    status_for,
)
from hacore.api.facade import AgentFacade, NodeSnapshot, member_json, probe_json
from hacore.api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from hacore.api.metrics import SnapshotCollector, render
from hacore.config import ApiSettings
from hacore.errors import HacoreError

logger = logging.getLogger(__name__)
access_log = logging.getLogger("hacore.api.access")

JSON = "application/json"
MAX_BODY = 1024 * 1024
_MAX_HEADERS = 100
_MAX_LINE = 8192
REALM = 'Basic realm="hacore"'

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


class ApiApp:
    """The routes, authentication and error mapping, independent of the transport."""

    def __init__(self, facade: AgentFacade, settings: ApiSettings) -> None:
        self.facade = facade
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
            _Route(re.compile("/cluster/join"), {"POST": self._join}),
            _Route(re.compile("/nodes"), {"GET": self._nodes}),
            _Route(
                re.compile("/nodes/(?P<name>[^/]+)"), {"GET": self._node, "DELETE": self._remove}
            ),
            _Route(re.compile("/switchover"), {"POST": self._switchover}),
        ]

    def set_settings(self, settings: ApiSettings) -> None:
        """Swap the credentials in place (``cluster start`` creates them while serving)."""
        authenticator = Authenticator(settings.auth)
        self._auth_state = (settings, authenticator)

    def set_plain(self, plain: PlainHttp, https_url: str) -> None:
        """What requests that did not come over TLS may do (see :class:`PlainHttp`)."""
        self._plain = (plain, https_url)

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
            elif not route.probe or settings.status_requires_auth:
                self._authenticate(authenticator, req)
            return handler(req, params)
        except HacoreError as err:
            status = status_for(err)
            if status == 500:
                logger.warning("%s %s failed: %s", req.method, req.path, err)
            extra = {"WWW-Authenticate": REALM} if status == 401 else {}
            return error_response(status, str(err) or type(err).__name__, **extra)
        except Exception:
            logger.exception("%s %s failed", req.method, req.path)
            return error_response(
                500, "internal error in the hacore agent; its log has the details"
            )

    @staticmethod
    def _authenticate(authenticator: Authenticator, req: Request) -> None:
        header = req.headers.get("authorization")
        if authenticator.check(header):
            return
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
        return json_response(status, probe_json(snap, now))

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

    # ---- operations ----

    def _start(self, req: Request, params: dict[str, str]) -> Response:
        return json_response(200, self.facade.start_cluster(_json_object(req)))

    def _join(self, req: Request, params: dict[str, str]) -> Response:
        return json_response(200, self.facade.join_ticket(_json_object(req)))

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


@functools.lru_cache(maxsize=2)
def _http_date(second: int) -> str:
    return email.utils.formatdate(second, usegmt=True)


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive. Request lines and headers are parsed here rather than by
    ``http.client.parse_headers``, whose e-mail parser costs more than the rest of a probe."""

    protocol_version = "HTTP/1.1"
    server_version = "hacore"
    disable_nagle_algorithm = True
    # buffered: headers and body leave in one send, flushed after each request
    wbufsize = 64 * 1024
    server: _HttpServer
    raw_requestline: bytes
    #: names in lower case
    request_headers: dict[str, str]

    def setup(self) -> None:
        super().setup()
        # an idle keep-alive connection holds a thread: let it go after a while
        self.connection.settimeout(self.server.idle_timeout)

    def parse_request(self) -> bool:
        self.command = None  # type: ignore[assignment]
        self.close_connection = True
        # error answers below get a status line (the default version, 0.9, gets none)
        self.request_version = "HTTP/1.0"
        self.requestline = str(self.raw_requestline, "iso-8859-1").rstrip("\r\n")
        words = self.requestline.split()
        if not words:
            return False
        if len(words) != 3 or not words[2].startswith("HTTP/"):
            self.send_error(400, f"malformed request line {self.requestline[:80]!r}")
            return False
        command, path, version = words
        if version not in ("HTTP/1.1", "HTTP/1.0"):
            self.send_error(505, f"HTTP version {version[5:]!r} is not supported (use 1.1)")
            return False
        headers = self._read_headers()
        if headers is None:
            return False
        self.command, self.path, self.request_version = command, path, version
        self.request_headers = headers
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        self.close_connection = version == "HTTP/1.0" or "close" in tokens
        if version == "HTTP/1.1" and headers.get("expect", "").lower() == "100-continue":
            return self.handle_expect_100()
        return True

    def _read_headers(self) -> dict[str, str] | None:
        headers: dict[str, str] = {}
        for _ in range(_MAX_HEADERS):
            raw = self.rfile.readline(_MAX_LINE + 1)
            if len(raw) > _MAX_LINE:
                self.send_error(431, "a request header line is too long")
                return None
            if raw in (b"\r\n", b"\n", b""):
                return headers
            line = raw.decode("iso-8859-1").rstrip("\r\n")
            name, colon, value = line.partition(":")
            # no folded lines, no space before the colon (RFC 9112 section 5)
            if not colon or not name or name != name.strip():
                self.send_error(400, "malformed request header line")
                return None
            key, value = name.lower(), value.strip()
            # repeated headers are joined, so a repeated Content-Length is refused
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        self.send_error(431, f"more than {_MAX_HEADERS} request headers")
        return None

    def handle_expect_100(self) -> bool:
        super().handle_expect_100()
        self.wfile.flush()  # the client waits for it before sending the body
        return True

    def version_string(self) -> str:
        return self.server_version

    def date_time_string(self, timestamp: float | None = None) -> str:
        if timestamp is not None:
            return super().date_time_string(timestamp)
        return _http_date(int(time.time()))

    def do_GET(self) -> None:
        self._serve()

    do_HEAD = do_OPTIONS = do_POST = do_DELETE = do_PUT = do_PATCH = do_GET

    def _serve(self) -> None:
        body = self._read_body()
        if body is None:
            return
        secure = self.server.tls[0] is None or isinstance(self.connection, ssl.SSLSocket)
        req = Request(self.command, urlsplit(self.path).path, self.request_headers, body, secure)
        self._send(self.server.app.respond(req))

    def _read_body(self) -> bytes | None:
        if "transfer-encoding" in self.request_headers:
            self._send(error_response(411, "send the request body with a Content-Length"), True)
            return None
        raw = self.request_headers.get("content-length")
        try:
            length = int(raw) if raw is not None else 0
        except ValueError:
            length = -1
        if length < 0:
            self._send(error_response(400, "Content-Length is not a number >= 0"), True)
            return None
        if length > MAX_BODY:
            self._send(error_response(413, f"request bodies are limited to {MAX_BODY} bytes"), True)
            return None
        body = self.rfile.read(length) if length else b""
        if len(body) < length:
            self.close_connection = True
            return None
        return body

    def _send(self, resp: Response, close: bool = False) -> None:
        self.send_response(resp.status)
        if resp.content_type:
            self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(resp.body)))
        for name, value in resp.headers:
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD" and resp.body:
            self.wfile.write(resp.body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors raised while parsing the request line or headers, as JSON like the rest."""
        self.close_connection = True
        text = message or self.responses.get(code, ("error",))[0]
        self._send(error_response(code, text), close=True)

    def log_message(self, format: str, *args: Any) -> None:
        if access_log.isEnabledFor(logging.DEBUG):
            access_log.debug("%s %s", self.address_string(), format % args)

    def address_string(self) -> str:
        return str(self.client_address[0])


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        app: ApiApp,
        ssl_context: ssl.SSLContext | None,
        plain: PlainHttp,
        idle_timeout: float,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.app = app
        #: swapped whole (one assignment) when a node gets its TLS material
        self.tls: tuple[ssl.SSLContext | None, PlainHttp] = (ssl_context, plain)
        self.idle_timeout = idle_timeout
        self.closing = False
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup of the address; skip it
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def finish_request(self, request: Any, client_address: Any) -> None:
        raw = cast(socket.socket, request)
        raw.settimeout(self.idle_timeout)
        with self._lock:
            if self.closing:
                raw.close()
                return
            # the raw socket: shutting it down also ends a TLS connection over it
            self._connections.add(raw)
        try:
            conn = self._secure(raw, client_address[0])
            if conn is not None:
                _Handler(conn, client_address, self)
                if conn is not raw:
                    conn.close()
        finally:
            with self._lock:
                self._connections.discard(raw)

    def _secure(self, conn: socket.socket, peer: str) -> socket.socket | None:
        """``conn`` as the handler should see it (wrapped in TLS when the client speaks it);
        None when it closed, stayed silent or failed its handshake."""
        context, plain = self.tls
        if context is None or plain is not PlainHttp.NONE:
            first = _first_byte(conn)
            if first is None:
                return None
            if first != _TLS_HANDSHAKE:
                return conn
            if context is None:
                # a TLS client of a plain server: closed at once, so it fails fast
                logger.debug("TLS handshake from %s to a plain-HTTP API", peer)
                return None
        try:
            return context.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError) as err:
            logger.debug("TLS handshake with %s failed: %s", peer, err)
            return None

    def close_connections(self) -> None:
        with self._lock:
            self.closing = True
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("connection from %s failed", client_address[0], exc_info=True)


def _first_byte(conn: socket.socket) -> int | None:
    """The connection's first byte, left in the buffer; None when it closed or stayed silent."""
    try:
        data = conn.recv(1, socket.MSG_PEEK)
    except OSError:
        return None
    return data[0] if data else None


class ApiServer:
    """The REST API on one address; :meth:`start` serves it from a background thread.

    It binds at construction, so a taken port fails at once and ``port`` (0 asks the kernel for
    a free one) is known before :meth:`start`.
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
        idle_timeout: float = 60.0,
    ) -> None:
        self.app = ApiApp(facade, settings)
        self.host = host
        self.tls = ssl_context is not None
        try:
            self._httpd = _HttpServer((host, port), self.app, ssl_context, plain, idle_timeout)
        except OSError as err:
            raise HacoreError(
                f"the REST API cannot listen on {host}:{port}: {err.strerror or err}"
            ) from None
        self._thread: threading.Thread | None = None
        if self.tls:
            self.app.set_plain(plain, self.url)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def set_settings(self, settings: ApiSettings) -> None:
        self.app.set_settings(settings)

    def set_tls(self, ssl_context: ssl.SSLContext | None, plain: PlainHttp) -> None:
        """Serve TLS from now on (new connections), and ``plain`` to plain-HTTP ones; None
        goes back to plain HTTP for everything."""
        self.tls = ssl_context is not None
        self.app.set_plain(plain if self.tls else PlainHttp.ALL, self.url)
        self._httpd.tls = (ssl_context, plain)

    def start(self) -> ApiServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.25},
                name=f"hacore-api-{self.port}",
                daemon=True,
            )
            self._thread.start()
            logger.info("REST API listening on %s", self.url)
        return self

    def shutdown(self) -> None:
        """Stop accepting, end open keep-alive connections, release the port."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.close_connections()
        self._httpd.server_close()

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


__all__ = ["ApiApp", "ApiServer", "PlainHttp", "Request", "Response"]
