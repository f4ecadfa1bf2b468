"""A kazoo client that also speaks ZooKeeper 3.6 persistent recursive watches.

kazoo 2.11 only has one-shot watches, which lose every change made between an event and the
next read. ZooKeeper 3.6+ can keep a watch on a whole subtree and report every change in the
order it was applied (``addWatch``, opcode 106); this module adds that request and routes its
events, in the connection thread, to one callback. It also records the session timeout the
servers granted, which kazoo does not keep, before kazoo announces the connection: a caller
woken by ``connected`` reads the timeout of this connection, not None or the last one's.

ZooKeeper keeps watches per connection: after kazoo reconnects (to any server) the watch is
gone and must be added again by the owner of the callback.

A response whose xid is not the one kazoo expects makes kazoo raise ``RuntimeError`` in its
connection thread, which ends the thread: the client would never connect again (kazoo issue
254, seen here after a session expiry on a loaded machine). The connection here treats it as a
dropped connection instead, so kazoo fails the pending requests and connects afresh.

Over TLS, kazoo waits for the raw socket to become readable before reading the next
response; responses already decrypted into the TLS layer's buffer would wait for the next
packet (a ping, up to a third of the session timeout later). The connection here drains them.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import ConnectionDropped
from kazoo.protocol.connection import CLOSE_RESPONSE, ConnectionHandler
from kazoo.protocol.serialization import Connect, Watch, int_struct, write_string

PERSISTENT_RECURSIVE = 1

#: ``(event type, path)`` with kazoo's numeric event types: 1 created, 2 deleted, 3 changed.
EventCallback = Callable[[int, str], None]


class AddWatch(namedtuple("AddWatch", "path mode on_added")):
    """``addWatch`` request; ``on_added`` runs in the connection thread before the reply is
    handed back, so no event that follows the reply can be missed by it."""

    type = 106

    def serialize(self) -> bytes:
        return bytes(write_string(self.path) + int_struct.pack(self.mode))

    @classmethod
    def deserialize(cls, buffer: bytes, offset: int) -> bool:
        return True


class _Connection(ConnectionHandler):  # type: ignore[misc]
    client: PersistentWatchClient

    def _invoke(self, timeout: float, request: Any, xid: int | None = None) -> Any:
        try:
            result = super()._invoke(timeout, request, xid)
        except RuntimeError as err:
            _raise_dropped_on_xid_mismatch(err)
            raise
        # The answer to Connect, read before _connect sets ``connected`` and calls the
        # listeners (0 means the session expired: _connect raises, nothing was granted).
        if isinstance(request, Connect) and result[0].time_out > 0:
            self.client.negotiated_timeout = result[0].time_out / 1000.0
        return result

    def _read_socket(self, read_timeout: float) -> Any:
        response = super()._read_socket(read_timeout)
        pending = getattr(self._socket, "pending", None)
        while response != CLOSE_RESPONSE and pending is not None and pending() > 0:
            response = super()._read_socket(read_timeout)
        return response

    def _read_watch_event(self, buffer: bytes, offset: int) -> None:
        watch, _ = Watch.deserialize(buffer, offset)
        callback = self.client.persistent_callback
        if callback is not None and watch.path is not None:
            callback(watch.type, watch.path)
        super()._read_watch_event(buffer, offset)

    def _read_response(self, header: Any, buffer: bytes, offset: int) -> Any:
        pending = self.client._pending
        request = pending[0][0] if pending else None
        if isinstance(request, AddWatch) and not header.err and request.on_added is not None:
            request.on_added()
        try:
            return super()._read_response(header, buffer, offset)
        except RuntimeError as err:
            _raise_dropped_on_xid_mismatch(err)
            raise


def _raise_dropped_on_xid_mismatch(err: RuntimeError) -> None:
    """kazoo's xid mismatch as the dropped connection kazoo recovers from."""
    if err.args and str(err.args[0]).startswith("xids do not match"):
        expected, received = [*err.args[1:], None, None][:2]
        raise ConnectionDropped(
            f"xids do not match (expected {expected}, received {received}): reconnecting"
        ) from err


class PersistentWatchClient(KazooClient):  # type: ignore[misc]
    """KazooClient plus :meth:`add_recursive_watch_async` and :attr:`negotiated_timeout`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._connection = _Connection(self, self._conn_retry.copy(), logger=self.logger)
        #: seconds granted by the server at the last (re)connection, None before the first
        self.negotiated_timeout: float | None = None
        #: receives every event of every persistent recursive watch of this client
        self.persistent_callback: EventCallback | None = None

    @property
    def loop_ended(self) -> bool:
        """kazoo's connection thread ended although nobody stopped the client: an exception
        it does not handle ends it, and the client then never connects again."""
        routine = self._connection._connection_routine
        return routine is not None and not routine.is_alive() and not self._stopped.is_set()

    @property
    def session_id(self) -> int | None:
        """The current session id, or None while there is none."""
        sid = self._session_id
        return int(sid) if sid else None

    def add_recursive_watch_async(
        self, path: str, on_added: Callable[[], None] | None = None
    ) -> Any:
        """Watch ``path`` and everything under it until the connection drops."""
        result = self.handler.async_result()
        self._call(AddWatch(path, PERSISTENT_RECURSIVE, on_added), result)
        return result
