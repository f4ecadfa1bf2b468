"""The etcd client's unary calls as plain HTTP/1.1 POSTs on kept-alive sockets.

The agent's loop makes about ten store calls per iteration, and each one through httpx cost
about 1.4 ms of Python on the failover benchmark's 2-core machine (request building, cookie
and auth flows, redirects, the connection pool, h11): most of the loop's ~16 ms, all of it
holding the GIL the REST API's probes wait for (docs/api.md, "Probe latency"). These calls
need none of that: a JSON body, three headers, a JSON answer, one endpoint per attempt. The
standard library's :mod:`http.client` does the same POST in about a third of the time.

httpx stays for the watch streams and authentication (:mod:`hacore_plugins.etcd.watch`,
:meth:`~hacore_plugins.etcd.client.EtcdClient.ensure_token`), which are rare.

Like httpx here, proxies from the environment are ignored (nothing reads them), and a
connection is reused only while the server has not closed it: one that became readable
while idle (the server's FIN, or bytes nobody asked for) is dropped before a request.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import ssl
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

#: idle connections kept per endpoint: more threads than this at once open their own
_IDLE_PER_ENDPOINT = 4
#: how long a fresh connection that sends nothing waits for the server's TLS alert
_REFUSAL_WAIT = 0.5


class GatewayError(Exception):
    """The call did not get an answer from this endpoint."""

    def __init__(self, message: str, *, unreachable: bool = False, timed_out: bool = False):
        super().__init__(message)
        #: no connection could be made (refused, or no answer to the handshake in time)
        self.unreachable = unreachable
        self.timed_out = timed_out


@attrs.frozen
class Answer:
    status: int
    #: the decoded JSON answer ({} for an empty body)
    data: dict[str, Any]


@attrs.frozen
class _Origin:
    https: bool
    host: str
    port: int

    @classmethod
    def of(cls, endpoint: str) -> _Origin:
        parts = urlsplit(endpoint)
        https = parts.scheme == "https"
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise GatewayError(f"not an http(s) endpoint: {endpoint!r}", unreachable=True)
        return cls(https, parts.hostname, parts.port or (443 if https else 80))


def _closed_by_peer(sock: socket.socket | None) -> bool:
    """An idle kept-alive socket that is readable was closed by the server (or holds bytes
    nobody asked for): either way it cannot carry the next request."""
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _alert_may_be_lost(err: Exception) -> bool:
    """The connection ended without the TLS alert that would say why (see
    :meth:`GatewayHttp._tls_refusal`)."""
    lost = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)
    return not isinstance(err, ssl.SSLError) or isinstance(err, lost)


def _describe(err: Exception, *, fresh: bool) -> str:
    if isinstance(err, http.client.RemoteDisconnected):
        what = "the server disconnected without sending a response"
    elif isinstance(err, ConnectionResetError):
        what = "connection reset by peer"
    else:
        what = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
    return what if fresh else f"{what} (on a kept-alive connection)"


class GatewayHttp:
    """POST a JSON body to an endpoint and read its JSON answer, on connections kept per
    endpoint. Thread-safe: a connection is used by one call at a time."""

    def __init__(self, ssl_context: ssl.SSLContext) -> None:
        self._ssl = ssl_context
        self._lock = threading.Lock()
        self._idle: dict[str, list[http.client.HTTPConnection]] = {}
        self._origins: dict[str, _Origin] = {}
        self._closed = False

    def post(
        self,
        endpoint: str,
        path: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        *,
        connect_timeout: float,
        timeout: float,
    ) -> Answer:
        """Raises :class:`GatewayError` when the endpoint gave no (JSON) answer."""
        conn = self._take(endpoint)
        fresh = conn is None
        try:
            if conn is None:
                conn = self._connect(endpoint, connect_timeout)
            assert conn.sock is not None
            conn.sock.settimeout(timeout)
            payload = json.dumps(body).encode()
            conn.request(
                "POST",
                path,
                body=payload,
                headers={"Content-Type": "application/json", **headers},
            )
            resp = conn.getresponse()
            raw = resp.read()
            data = json.loads(raw) if raw else {}
        except GatewayError:
            raise
        except TimeoutError as err:
            self._discard(conn)
            raise GatewayError("timed out", timed_out=True) from err
        except (OSError, http.client.HTTPException) as err:
            self._discard(conn)
            why = _describe(err, fresh=fresh)
            if fresh and self._origin(endpoint).https and _alert_may_be_lost(err):
                refusal = self._tls_refusal(endpoint, connect_timeout)
                if refusal:
                    why = f"{why}; the server refused this client's TLS: {refusal}"
            raise GatewayError(why) from err
        except ValueError as err:
            self._discard(conn)
            raise GatewayError("answer was not JSON") from err
        if resp.will_close:
            self._discard(conn)
        else:
            self._give_back(endpoint, conn)
        if not isinstance(data, dict):
            raise GatewayError("answer was not a JSON object")
        return Answer(resp.status, data)

    def close(self) -> None:
        """Close the idle connections; those in use are closed when their call ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def _origin(self, endpoint: str) -> _Origin:
        origin = self._origins.get(endpoint)
        if origin is None:
            origin = self._origins[endpoint] = _Origin.of(endpoint)
        return origin

    def _connect(self, endpoint: str, connect_timeout: float) -> http.client.HTTPConnection:
        origin = self._origin(endpoint)
        conn: http.client.HTTPConnection
        if origin.https:
            conn = http.client.HTTPSConnection(
                origin.host, origin.port, timeout=connect_timeout, context=self._ssl
            )
        else:
            conn = http.client.HTTPConnection(origin.host, origin.port, timeout=connect_timeout)
        try:
            conn.connect()
        except TimeoutError as err:
            conn.close()
            raise GatewayError("timed out connecting", unreachable=True, timed_out=True) from err
        except ssl.SSLError as err:
            conn.close()
            raise GatewayError(f"TLS handshake failed: {err}") from err
        except OSError as err:
            conn.close()
            refused = isinstance(err, ConnectionRefusedError)
            why = "connection refused" if refused else f"cannot connect ({err})"
            raise GatewayError(why, unreachable=True) from err
        assert conn.sock is not None
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _tls_refusal(self, endpoint: str, connect_timeout: float) -> str | None:
        """Why the server ended a fresh TLS connection, if it said so.

        In TLS 1.3 the client's handshake ends before the server has checked the client's
        certificate, so the server's alert (certificate required, unknown CA) races the
        request we send at once: the request arriving on a closed socket makes the kernel
        reset the connection, and the alert is lost. A second connection that sends nothing
        reads the alert intact; a healthy server just stays silent until the timeout.
        """
        try:
            conn = self._connect(endpoint, connect_timeout)
        except GatewayError:
            return None
        try:
            assert conn.sock is not None
            conn.sock.settimeout(min(connect_timeout, _REFUSAL_WAIT))
            conn.sock.recv(1)
        except ssl.SSLError as err:
            return str(err)
        except OSError:
            return None
        finally:
            conn.close()
        return None

    def _take(self, endpoint: str) -> http.client.HTTPConnection | None:
        while True:
            with self._lock:
                conns = self._idle.get(endpoint)
                conn = conns.pop() if conns else None
            if conn is None:
                return None
            if not _closed_by_peer(conn.sock):
                return conn
            conn.close()

    def _give_back(self, endpoint: str, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            conns = self._idle.setdefault(endpoint, [])
            if not self._closed and len(conns) < _IDLE_PER_ENDPOINT:
                conns.append(conn)
                return
        conn.close()

    @staticmethod
    def _discard(conn: http.client.HTTPConnection | None) -> None:
        if conn is not None:
            conn.close()
