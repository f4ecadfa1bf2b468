"""A small multi-endpoint client for etcd's v3 JSON gateway.

The gateway is used instead of gRPC because the maintained gRPC clients drag in a protobuf
stack that breaks other packages; etcd serves the same API as JSON on its client port. Keys
and values travel base64-encoded, int64 fields come back as strings and zero-valued fields are
left out, so every reader here supplies defaults.

Every call has a deadline. An endpoint that refuses, times out or says it cannot serve right
now (no leader, learner) is skipped for the next one, so the loss of any one member is
survived; when no endpoint answered before the deadline the call raises
:class:`~hacore.errors.StoreUnavailableError` and never hangs.

The loss of the raft leader is the hard case: until the others elect a new one (about one
election timeout), every member's follower still forwards to it, and a request to a member
that cannot reach it simply hangs. The agent's renewal budget (``ttl - safety_margin``) only
fits a few attempts, so none may be wasted:

- every request asks for a leader (the ``hasleader`` gRPC metadata, passed by the gateway):
  a member that knows it has none answers "no leader" at once instead of hanging;
- an endpoint that failed is *suspect* for a few seconds and tried after every other one, so
  the next calls do not return to a dead or cut-off member and pay its timeout again;
- the client learns the store's members (their client URLs) from etcd itself and adds them to
  the endpoints it was given: a node that bootstrapped the store was configured with its own
  member alone, and would otherwise have nowhere to go when that member fails.
"""

from __future__ import annotations

import base64
import logging
import ssl
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import httpx

from hacore.backends.client_tls import ClientTls
from hacore.errors import HacoreError, StoreUnavailableError
from hacore_plugins.etcd.gateway_http import GatewayError, GatewayHttp

log = logging.getLogger(__name__)

#: gRPC status codes the gateway reports for "try again, maybe elsewhere".
_RETRYABLE_CODES = frozenset({4, 14})  # DEADLINE_EXCEEDED, UNAVAILABLE
_UNAUTHENTICATED = 16
#: A refused connection is known at once; a silent peer costs at most this long to connect
#: (a handshake takes well under a millisecond on a LAN; a lost SYN is resent after 1 s, so
#: waiting longer than this buys nothing but time the lease does not have).
_CONNECT_TIMEOUT = 0.3
#: A single endpoint never takes less than this share of a deadline (a busy 2-core host).
_MIN_ATTEMPT = 0.25
_ROUND_PAUSE = 0.05
#: How long an endpoint that failed is tried after all the others: longer than an election
#: (so a cut-off old leader is not retried while the rest elect a new one), short enough that
#: a member that came back is used again soon.
SUSPECT_FOR = 5.0
#: How often the endpoints are completed from etcd's member list.
SYNC_INTERVAL = 30.0
#: gRPC metadata (through the gateway's ``Grpc-Metadata-`` headers): fail at once with "no
#: leader" on a member that has none, instead of waiting for one (etcd's WithRequireLeader).
REQUIRE_LEADER = {"Grpc-Metadata-hasleader": "true"}


class TryElsewhere(Exception):
    """This endpoint cannot serve the request now."""

    def __init__(self, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        #: no connection could be made (a dead or cut-off member), not just no answer
        self.unreachable = unreachable


class EtcdRequestError(HacoreError):
    """etcd answered, and refused the request (bad argument, lease or member not found...)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def gateway_error(data: Mapping[str, Any]) -> tuple[int, str]:
    """gRPC code and message of an error answer.

    Unary calls answer ``{"error": text, "message": text, "code": n}``; streaming ones
    (watch, lease keepalive) ``{"error": {"grpc_code": n, "message": text, ...}}``.
    """
    error = data.get("error")
    if isinstance(error, Mapping):
        return as_int(error.get("grpc_code", error.get("code"))), str(error.get("message", ""))
    return as_int(data.get("code")), str(data.get("message") or error or "")


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that selects every key starting with ``prefix``."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b"\0"
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def as_int(value: Any) -> int:
    return int(value) if value not in (None, "") else 0


@attrs.frozen
class KV:
    """One key as etcd reports it, decoded."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KV:
        return cls(
            key=unb64(data.get("key")),
            value=unb64(data.get("value")),
            create_revision=as_int(data.get("create_revision")),
            mod_revision=as_int(data.get("mod_revision")),
            version=as_int(data.get("version")),
            lease=as_int(data.get("lease")),
        )


@attrs.frozen
class TxnResult:
    succeeded: bool
    revision: int
    responses: tuple[Mapping[str, Any], ...]
    #: requests sent before the one answered: an earlier one may have been applied, its
    #: answer lost (a timeout, a proxy's 5xx), so a failed compare may be this txn's own doing
    resent: int = 0

    def ranges(self) -> list[list[KV]]:
        """The key lists of the range operations, in request order."""
        return [
            [KV.from_json(kv) for kv in r["response_range"].get("kvs", [])]
            for r in self.responses
            if "response_range" in r
        ]


@attrs.frozen
class EtcdMember:
    id: int
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    is_learner: bool

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EtcdMember:
        return cls(
            id=as_int(data.get("ID")),
            name=data.get("name", ""),
            peer_urls=tuple(data.get("peerURLs", ())),
            client_urls=tuple(data.get("clientURLs", ())),
            is_learner=bool(data.get("isLearner", False)),
        )


def https_verify(tls: ClientTls | None) -> ssl.SSLContext | bool:
    """httpx's ``verify`` for etcd's https endpoints: a context trusting the CA that signed
    the servers and showing this client's certificate when etcd asks for one
    (``--client-cert-auth``); without a CA, True: httpx's own trust store, as for any public
    https site."""
    if tls is None or not tls.ca_file:
        return True
    return tls.context("etcd", strict_x509=False)


class EtcdClient:
    """Requests to whichever of ``endpoints`` answers, each within ``timeout`` seconds."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float,
        username: str | None = None,
        password: str | None = None,
        tls: ClientTls | None = None,
        discover: bool = False,
    ) -> None:
        """``discover``: complete ``endpoints`` with the members' client URLs, learnt from
        etcd every :data:`SYNC_INTERVAL` seconds (a long-lived client, such as the agent's)."""
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        #: the endpoints given, then those learnt from the member list; replaced, never
        #: changed in place, so a reader holding the list sees a consistent one
        self.endpoints = list(dict.fromkeys(e.rstrip("/") for e in endpoints))
        self._configured = tuple(self.endpoints)
        self.timeout = timeout
        self._username = username
        self._password = password
        verify = https_verify(tls)
        # One context for the client and its watchers: building one reads the CA bundle.
        self._ssl = verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context()
        self._preferred = self.endpoints[0]
        #: endpoint -> (monotonic time until which it is tried last, could not be reached)
        self._suspect: dict[str, tuple[float, bool]] = {}
        self._state_lock = threading.Lock()
        self._synced_at: float | None = None
        self._discover = discover
        self._token: str | None = None
        self._auth_lock = threading.Lock()
        #: the background member sync last started (:meth:`close` waits for it)
        self._sync_thread: threading.Thread | None = None
        #: authentication only; the watchers make their own (:meth:`new_http`)
        self._http = self.new_http()
        #: every other call: plain POSTs on kept-alive sockets (gateway_http.py says why)
        self._gateway = GatewayHttp(self._ssl)

    def new_http(self) -> httpx.Client:
        return httpx.Client(verify=self._ssl, trust_env=False)

    def close(self) -> None:
        """Close the connections, once a member sync still running has ended: closing its
        socket under it would let its TLS write reach whatever reuses the descriptor (a
        short-lived client's sync wrote into a new PostgreSQL connection of the process)."""
        thread = self._sync_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.timeout + _CONNECT_TIMEOUT)
        self._gateway.close()
        self._http.close()

    def __enter__(self) -> EtcdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport -----------------------------------------------------------------------

    def deadline(self, timeout: float | None = None) -> float:
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    def attempt_timeout(self, remaining: float) -> httpx.Timeout:
        """One attempt's share: a quarter of the budget (never less than ``_MIN_ATTEMPT``).

        A healthy member answers in milliseconds; an attempt that waits longer is on a frozen
        member, or on a follower forwarding to a leader that is gone. Such a request stays
        stuck on that member even once the others elected a new leader, so short attempts
        let a renewal that overlaps an election reach the new leader before its deadline.
        """
        share = min(remaining, max(_MIN_ATTEMPT, self.timeout / 4))
        return httpx.Timeout(share, connect=min(share, _CONNECT_TIMEOUT))

    def auth_headers(self) -> dict[str, str]:
        """The headers of every request: the auth token, and "a leader is required"."""
        headers = dict(REQUIRE_LEADER)
        if self._token:
            headers["Authorization"] = self._token
        return headers

    # -- which endpoint ----------------------------------------------------------------------

    def candidates(self) -> list[str]:
        """The endpoints in the order to try them: the one that answered last, then the
        others in turn; then the suspect ones (failed recently), those that answered late or
        said "no leader" before those that could not even be reached, the oldest failure
        first. While the store elects a leader every member may be suspect: the reachable
        ones are where the new leader will answer first."""
        now = time.monotonic()
        with self._state_lock:
            endpoints = self.endpoints
            start = endpoints.index(self._preferred) if self._preferred in endpoints else 0
            ring = endpoints[start:] + endpoints[:start]
            suspect = {e: self._suspect[e] for e in ring if self._suspect.get(e, (0.0,))[0] > now}
        healthy = [e for e in ring if e not in suspect]
        return healthy + sorted(suspect, key=lambda e: (suspect[e][1], suspect[e][0]))

    def note_success(self, endpoint: str) -> None:
        with self._state_lock:
            self._preferred = endpoint
            self._suspect.pop(endpoint, None)

    def note_failure(self, endpoint: str, *, unreachable: bool = False) -> None:
        """``endpoint`` could not serve: try the others first for a while."""
        with self._state_lock:
            self._suspect[endpoint] = (time.monotonic() + SUSPECT_FOR, unreachable)

    def sync_endpoints(self, deadline: float) -> None:
        """Add the client URLs of the store's members to the endpoints (those given stay,
        learnt ones that left the store go). Errors are ignored: the next sync tries again."""
        try:
            members = self.member_list(deadline=deadline)
        except HacoreError as err:
            log.debug("could not learn the etcd members: %s", err)
            return
        learnt = [u.rstrip("/") for m in members if not m.is_learner for u in m.client_urls]
        wanted = list(dict.fromkeys([*self._configured, *learnt]))
        with self._state_lock:
            if wanted != self.endpoints:
                log.info("etcd endpoints: %s", ", ".join(wanted))
                self.endpoints = wanted

    def _sync_soon(self) -> None:
        """Start a sync in the background when one is due: the caller's deadline (a lease
        renewal's, say) must not pay for it."""
        if not self._discover:
            return
        with self._state_lock:
            synced = self._synced_at
            if synced is not None and time.monotonic() - synced < SYNC_INTERVAL:
                return
            self._synced_at = time.monotonic()

        def sync() -> None:
            try:
                self.sync_endpoints(self.deadline())
            except Exception as err:  # a closed client, above all: the next sync tries again
                log.debug("could not learn the etcd members: %s", err)

        thread = threading.Thread(target=sync, name="etcd-endpoints", daemon=True)
        self._sync_thread = thread
        thread.start()

    def _authenticate(self, endpoint: str, timeout: httpx.Timeout, stale: str | None) -> None:
        with self._auth_lock:
            if self._token != stale:
                return  # another thread already refreshed it
            resp = self._http.post(
                f"{endpoint}/v3/auth/authenticate",
                json={"name": self._username, "password": self._password},
                timeout=timeout,
            )
            data = resp.json()
            if "error" in data or "token" not in data:
                raise EtcdRequestError(
                    f"etcd refused the credentials of user {self._username!r}: "
                    f"{data.get('message') or data.get('error') or resp.status_code}",
                    as_int(data.get("code")),
                )
            self._token = data["token"]

    def post_once(
        self, endpoint: str, path: str, body: Mapping[str, Any], timeout: httpx.Timeout
    ) -> dict[str, Any]:
        """One attempt on one endpoint.

        Raises :class:`TryElsewhere` when another endpoint (or a later attempt) may succeed,
        :class:`EtcdRequestError` when etcd refused the request itself.
        """
        try:
            if self._username and self._token is None:
                self._authenticate(endpoint, timeout, None)
            token = self._token
            answer = self._gateway.post(
                endpoint,
                path,
                body,
                self.auth_headers(),
                connect_timeout=_seconds(timeout.connect, _CONNECT_TIMEOUT),
                timeout=_seconds(timeout.read, self.timeout),
            )
        except (httpx.TransportError, ValueError) as err:
            unreachable = isinstance(err, httpx.ConnectError | httpx.ConnectTimeout)
            raise TryElsewhere(describe_error(err), unreachable=unreachable) from err
        except GatewayError as err:
            raise TryElsewhere(str(err), unreachable=err.unreachable) from err
        data, status = answer.data, answer.status
        if "error" not in data and status < 400:
            return data
        code, message = gateway_error(data)
        message = message or f"HTTP {status}"
        if code == _UNAUTHENTICATED and self._username:
            self.forget_token(token)
            raise TryElsewhere(message)
        if code in _RETRYABLE_CODES or status >= 500:
            raise TryElsewhere(message)
        raise EtcdRequestError(f"etcd refused {path}: {message}", code)

    def request(
        self, path: str, body: Mapping[str, Any], *, deadline: float | None = None
    ) -> dict[str, Any]:
        """POST ``body`` to ``path`` on the first endpoint that answers before ``deadline``."""
        return self.request_counted(path, body, deadline=deadline)[0]

    def request_counted(
        self, path: str, body: Mapping[str, Any], *, deadline: float | None = None
    ) -> tuple[dict[str, Any], int]:
        """As :meth:`request`, with how many earlier attempts may have reached etcd."""
        if deadline is None:
            deadline = self.deadline()
        started = time.monotonic()
        failures: dict[str, str] = {}
        attempts = 0
        while True:
            # One round: every endpoint once, the suspect ones last.
            for endpoint in self.candidates():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    detail = "; ".join(f"{e}: {why}" for e, why in failures.items())
                    raise StoreUnavailableError(
                        f"etcd did not answer {path} within {time.monotonic() - started:.1f}s "
                        f"({detail or 'no time left'})"
                    )
                attempts += 1
                try:
                    answer = self.post_once(endpoint, path, body, self.attempt_timeout(remaining))
                except TryElsewhere as err:
                    failures[endpoint] = str(err)
                    self.note_failure(endpoint, unreachable=err.unreachable)
                    log.debug("etcd %s %s: %s", endpoint, path, err)
                    continue
                self.note_success(endpoint)
                self._sync_soon()
                return answer, attempts - 1
            time.sleep(max(0.0, min(_ROUND_PAUSE, deadline - time.monotonic())))

    # -- KV ----------------------------------------------------------------------------------

    def range(
        self, key: bytes, range_end: bytes | None = None, *, deadline: float | None = None
    ) -> list[KV]:
        body: dict[str, Any] = {"key": b64(key)}
        if range_end is not None:
            body["range_end"] = b64(range_end)
        data = self.request("/v3/kv/range", body, deadline=deadline)
        return [KV.from_json(kv) for kv in data.get("kvs", [])]

    def put(
        self, key: bytes, value: bytes, *, lease: int = 0, deadline: float | None = None
    ) -> int:
        """Returns the revision of the write."""
        body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        data = self.request("/v3/kv/put", body, deadline=deadline)
        return as_int(data.get("header", {}).get("revision"))

    def delete_range(
        self, key: bytes, range_end: bytes | None = None, *, deadline: float | None = None
    ) -> int:
        """Returns how many keys were deleted."""
        body: dict[str, Any] = {"key": b64(key)}
        if range_end is not None:
            body["range_end"] = b64(range_end)
        data = self.request("/v3/kv/deleterange", body, deadline=deadline)
        return as_int(data.get("deleted"))

    def txn(
        self,
        compare: Sequence[Mapping[str, Any]],
        success: Sequence[Mapping[str, Any]],
        failure: Sequence[Mapping[str, Any]] = (),
        *,
        deadline: float | None = None,
    ) -> TxnResult:
        body = {"compare": list(compare), "success": list(success), "failure": list(failure)}
        data, resent = self.request_counted("/v3/kv/txn", body, deadline=deadline)
        return TxnResult(
            succeeded=bool(data.get("succeeded", False)),
            revision=as_int(data.get("header", {}).get("revision")),
            responses=tuple(data.get("responses", ())),
            resent=resent,
        )

    # -- leases ------------------------------------------------------------------------------

    def lease_grant(self, ttl: int, *, deadline: float | None = None) -> int:
        data = self.request("/v3/lease/grant", {"TTL": str(ttl)}, deadline=deadline)
        if data.get("error"):  # LeaseGrantResponse has an error field of its own
            raise EtcdRequestError(f"etcd refused a lease: {data['error']}", 0)
        return as_int(data.get("ID"))

    def lease_keepalive(self, lease: int, *, deadline: float | None = None) -> int:
        """The TTL the lease was refreshed to; 0 when it no longer exists."""
        data = self.request("/v3/lease/keepalive", {"ID": str(lease)}, deadline=deadline)
        result = data.get("result", data)
        return as_int(result.get("TTL"))

    def lease_revoke(self, lease: int, *, deadline: float | None = None) -> bool:
        """False when the lease had already gone."""
        try:
            self.request("/v3/lease/revoke", {"ID": str(lease)}, deadline=deadline)
        except EtcdRequestError as err:
            if "lease not found" in str(err):
                return False
            raise
        return True

    # -- cluster membership --------------------------------------------------------------

    def member_list(self, *, deadline: float | None = None) -> list[EtcdMember]:
        data = self.request("/v3/cluster/member/list", {}, deadline=deadline)
        return [EtcdMember.from_json(m) for m in data.get("members", [])]

    def member_add(
        self, peer_urls: Sequence[str], *, learner: bool, deadline: float | None = None
    ) -> tuple[EtcdMember, list[EtcdMember]]:
        """The new member, and the whole membership after the change."""
        body = {"peerURLs": list(peer_urls), "isLearner": learner}
        data = self.request("/v3/cluster/member/add", body, deadline=deadline)
        return (
            EtcdMember.from_json(data.get("member", {})),
            [EtcdMember.from_json(m) for m in data.get("members", [])],
        )

    def member_remove(self, member_id: int, *, deadline: float | None = None) -> None:
        self.request("/v3/cluster/member/remove", {"ID": str(member_id)}, deadline=deadline)

    def member_promote(self, member_id: int, *, deadline: float | None = None) -> None:
        self.request("/v3/cluster/member/promote", {"ID": str(member_id)}, deadline=deadline)

    # -- for the watcher -------------------------------------------------------------------

    def ensure_token(self, endpoint: str, timeout: httpx.Timeout) -> str | None:
        if self._username and self._token is None:
            self._authenticate(endpoint, timeout, None)
        return self._token

    def forget_token(self, stale: str | None) -> None:
        """Drop an auth token the server no longer accepts (the next call re-authenticates)."""
        with self._auth_lock:
            if self._token == stale:
                self._token = None


def _seconds(value: float | None, default: float) -> float:
    return default if value is None else value


def describe_error(err: Exception) -> str:
    if isinstance(err, (TryElsewhere, HacoreError)):
        return str(err)
    if isinstance(err, httpx.TimeoutException):
        return "timed out"
    if isinstance(err, httpx.ConnectError):
        return "connection refused" if "refused" in str(err).lower() else f"cannot connect ({err})"
    if isinstance(err, ValueError):
        return "answer was not JSON"
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
