"""HTTP/1.1 over sockets for the REST API, with bounded costs whatever the clients do
(DESIGN rule 8): one thread owns every socket in a selector, a few workers run what may block,
each client address has a connection cap enforced at accept, and each request one deadline for
its TLS handshake, headers and body (see :class:`Transport`)."""

from __future__ import annotations

import collections
import contextlib
import enum
import errno
import logging
import queue
import selectors
import socket
import ssl
import threading
import time
from typing import cast
from urllib.parse import urlsplit

from hacore.api.app import ApiApp
from hacore.api.limits import Throttle
from hacore.api.messages import (
    MAX_BODY,
    MAX_HEAD,
    Head,
    PlainHttp,
    Refused,
    Request,
    Response,
    encode,
    error_response,
    parse_head,
)

logger = logging.getLogger(__name__)
access_log = logging.getLogger("hacore.api.access")

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
_SWEEP_INTERVAL = 0.25
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE

#: the first byte of a TLS handshake record: how a TLS client is told from a plain one
_TLS_HANDSHAKE = 0x16


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
        self.head: Head | None = None
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


class Transport:
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
        while len(conn.buf) <= MAX_HEAD + MAX_BODY:
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
            if len(data) < _READ_SIZE and not conn.tls:
                # drained (the selector reports what comes next): no second call just to
                # hear EAGAIN. A TLS socket may hold decrypted bytes the selector cannot see.
                break
        self._advance(conn)

    def _advance(self, conn: _Connection) -> None:
        """Answer or dispatch the requests complete in the buffer, one at a time."""
        while conn.stage is _Stage.READ and not conn.closed:
            if conn.head is None:
                if not conn.buf:
                    if conn.eof:
                        self._close(conn)
                    return
                while conn.buf.startswith((b"\r", b"\n")):
                    del conn.buf[:1]
                try:
                    conn.head = parse_head(conn.buf, max(0, conn.scanned - 3))
                except Refused as refused:
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
        conn.out += encode(resp, head_only=conn.head_only, close=conn.close_after)
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
