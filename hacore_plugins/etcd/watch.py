"""Watching a key prefix through the gateway's streaming ``/v3/watch``.

One background thread per watcher holds one long POST open and turns each response line into
:class:`~hacore.backends.records.WatchEvent` objects, in revision order. Each connection first
asks the endpoint for a linearizable read: it proves the member serves (an isolated member
would keep a stream open and silent), and the first one fixes the revision the watch starts
after, so every change made once :meth:`EtcdWatcher.start` returned is delivered. A broken or
silent stream is reopened, on another endpoint when the member stopped answering (the
endpoint is then suspect for the client's requests too), from the revision after the last
event seen: nothing is lost or repeated across reconnects.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import socket
import threading
import time
from typing import Any

import httpx

from hacore.backends.consensus import Watcher
from hacore.backends.records import EventKind, WatchEvent
from hacore.errors import StoreUnavailableError
from hacore_plugins.etcd.client import (
    KV,
    EtcdClient,
    EtcdRequestError,
    TryElsewhere,
    as_int,
    b64,
    describe_error,
    gateway_error,
    prefix_end,
)

log = logging.getLogger(__name__)

#: A stream silent for this long is reopened (after checking the member still serves).
IDLE_TIMEOUT = 10.0
_ROUND_PAUSE = 0.1


class _Reconnect(Exception):
    """Reopen the stream on the same endpoint."""


class EtcdWatcher(Watcher):
    def __init__(
        self,
        client: EtcdClient,
        root: bytes,
        prefix: str,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        self._client = client
        self._root = root
        self._prefix = prefix
        self._key = root + prefix.encode()
        self._end = prefix_end(self._key)
        self._idle_timeout = idle_timeout
        self._events: queue.Queue[WatchEvent] = queue.Queue()
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._next_revision: int | None = None
        self._last_error = "no answer yet"
        self._http = client.new_http()
        self._response: httpx.Response | None = None
        self._response_lock = threading.Lock()
        self._start_deadline = 0.0
        self._thread = threading.Thread(
            target=self._run, name=f"etcd-watch:{prefix or '*'}", daemon=True
        )

    def start(self, timeout: float) -> EtcdWatcher:
        """Returns once etcd confirmed the watch; StoreUnavailableError after ``timeout``."""
        self._start_deadline = time.monotonic() + timeout
        self._thread.start()
        if not self._ready.wait(timeout):
            self._shut(join_timeout=0.0)
            raise StoreUnavailableError(
                f"etcd did not start a watch on {self._prefix or 'the namespace'!r} within "
                f"{timeout:.1f}s ({self._last_error})"
            )
        return self

    def get(self, timeout: float) -> WatchEvent | None:
        try:
            return self._events.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def close(self) -> None:
        self._shut(join_timeout=2.0)

    def _shut(self, join_timeout: float) -> None:
        self._stopped.set()
        with self._response_lock:
            self._abort_response()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=join_timeout)

    # -- the reader thread ---------------------------------------------------------------

    def _abort_response(self) -> None:
        """Wake the reader blocked on the stream: shutting the socket down ends its recv."""
        if self._response is None:
            return
        stream = self._response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _attempt_timeout(self) -> httpx.Timeout:
        if not self._ready.is_set():
            remaining = self._start_deadline - time.monotonic()
            if remaining > 0:
                return self._client.attempt_timeout(remaining)
        return self._client.attempt_timeout(self._client.timeout)

    def _run(self) -> None:
        try:
            self._watch_until_stopped()
        finally:
            self._http.close()

    def _watch_until_stopped(self) -> None:
        endpoint = self._client.candidates()[0]
        failures = 0
        while not self._stopped.is_set():
            try:
                self._follow(endpoint)
            except _Reconnect:
                failures = 0
                continue
            except Exception as err:  # the watcher must outlive any one bad connection
                if self._stopped.is_set():
                    break
                self._last_error = f"{endpoint}: {describe_error(err)}"
                expected = isinstance(err, TryElsewhere | EtcdRequestError | httpx.HTTPError)
                log.log(
                    logging.DEBUG if expected else logging.WARNING,
                    "etcd watch on %r: %s",
                    self._prefix,
                    self._last_error,
                    exc_info=not expected,
                )
                # Shared with the client's requests: neither returns to it for a while.
                unreachable = isinstance(err, httpx.ConnectError | httpx.ConnectTimeout) or (
                    isinstance(err, TryElsewhere) and err.unreachable
                )
                self._client.note_failure(endpoint, unreachable=unreachable)
                endpoint = self._client.candidates()[0]
                failures += 1
                if failures % len(self._client.endpoints) == 0:
                    self._stopped.wait(_ROUND_PAUSE)
        log.debug("etcd watch on %r stopped", self._prefix)

    def _follow(self, endpoint: str) -> None:
        timeout = self._attempt_timeout()
        probe = self._client.post_once(
            endpoint, "/v3/kv/range", {"key": b64(self._key), "count_only": True}, timeout
        )
        if self._next_revision is None:
            self._next_revision = as_int(probe.get("header", {}).get("revision")) + 1
        self._client.ensure_token(endpoint, timeout)
        create = {
            "key": b64(self._key),
            "range_end": b64(self._end),
            "start_revision": str(self._next_revision),
        }
        # Also asks for a leader: etcd then ends the stream of a member that lost its leader,
        # instead of leaving it open and silent until the idle timeout.
        headers = self._client.auth_headers()
        token = headers.get("Authorization")
        stream_timeout = httpx.Timeout(self._idle_timeout, connect=timeout.connect)
        with self._http.stream(
            "POST",
            f"{endpoint}/v3/watch",
            json={"create_request": create},
            headers=headers,
            timeout=stream_timeout,
        ) as resp:
            with self._response_lock:
                if self._stopped.is_set():
                    return
                self._response = resp
            try:
                self._read(resp, token)
            except httpx.ReadTimeout:
                raise _Reconnect from None
            finally:
                with self._response_lock:
                    self._response = None
        if not self._stopped.is_set():
            raise TryElsewhere("watch stream ended")

    def _read(self, resp: httpx.Response, token: str | None) -> None:
        for line in resp.iter_lines():
            if self._stopped.is_set():
                return
            if not line.strip():
                continue
            message: dict[str, Any] = json.loads(line)
            if message.get("error"):
                code, text = gateway_error(message)
                if code == 16:
                    self._client.forget_token(token)
                raise TryElsewhere(text)
            result = message.get("result", {})
            if result.get("canceled"):
                self._canceled(result)
            if result.get("created"):
                self._ready.set()
            for event in result.get("events", ()):
                self._deliver(event)

    def _canceled(self, result: dict[str, Any]) -> None:
        compacted = as_int(result.get("compact_revision"))
        if compacted:
            log.warning(
                "etcd compacted its history past revision %s: changes under %r before "
                "revision %s were missed",
                self._next_revision,
                self._prefix,
                compacted,
            )
            self._next_revision = compacted
            raise _Reconnect
        raise TryElsewhere(f"watch canceled: {result.get('cancel_reason', 'no reason given')}")

    def _deliver(self, event: dict[str, Any]) -> None:
        kv = KV.from_json(event.get("kv", {}))
        key = kv.key[len(self._root) :].decode(errors="replace")
        if event.get("type") == "DELETE":
            self._events.put(WatchEvent(EventKind.DELETE, key, None))
        else:
            self._events.put(WatchEvent(EventKind.PUT, key, kv.value))
        self._next_revision = kv.mod_revision + 1
