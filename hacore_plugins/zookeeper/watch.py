"""Ordered watches on top of one persistent recursive ZooKeeper watch per backend.

The backend keeps a single server-side watch on its namespace znode; every event is fanned out,
in the connection thread and so in the order the server applied the changes, to the local
watchers whose prefix matches. A watcher only receives events that follow the reply to its own
``addWatch`` (sent after a ``sync``): changes made before :meth:`ZooKeeperConsensus.watch`
was called are not reported, every change after it returns is.

ZooKeeper events carry no value: a PUT's value is read when the event is handed out, so it
may be newer than the change that caused it (or None when the key is gone again by then).

ZooKeeper forgets watches when the connection drops. After a reconnection (same session or a
new one) the watch is added again, and each watcher replays what it missed as the difference
between the keys it knew and the keys present right after the reconnection (DELETE for keys
gone, PUT for keys new or changed, in the order they were last written); changes made and
undone while disconnected are not seen, and a change around the reconnection may come twice.
When that replay cannot be read within ``retry_timeout``, ``get`` raises
StoreUnavailableError and the next ``get`` tries again.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from hacore.backends.consensus import Watcher
from hacore.backends.records import EventKind, WatchEvent
from hacore_plugins.zookeeper.keys import key_of

log = logging.getLogger(__name__)

_CREATED, _DELETED, _CHANGED = 1, 2, 3

#: key -> (value, stat) of every key under a prefix, as read now
Snapshot = dict[str, tuple[bytes, Any]]


class _Resync:
    """Queue marker: the watch was lost and added again.

    The keys are read at once (not when the consumer gets here), so that what changed while
    the watch was lost is not hidden by later changes.
    """

    def __init__(self, read_prefix: Callable[[str], Snapshot], prefix: str) -> None:
        self.done = threading.Event()
        self.snapshot: Snapshot | None = None
        threading.Thread(target=self._take, args=(read_prefix, prefix), daemon=True).start()

    def _take(self, read_prefix: Callable[[str], Snapshot], prefix: str) -> None:
        try:
            self.snapshot = read_prefix(prefix)
        except Exception:
            log.debug("reading %s* after a reconnection failed", prefix, exc_info=True)
        finally:
            self.done.set()


class ZooKeeperWatcher(Watcher):
    def __init__(
        self,
        prefix: str,
        *,
        read_key: Callable[[str], tuple[bytes, Any] | None],
        read_prefix: Callable[[str], Snapshot],
        on_close: Callable[[ZooKeeperWatcher], None],
    ) -> None:
        self.prefix = prefix
        self._read_key = read_key
        self.read_prefix = read_prefix
        self._on_close = on_close
        self._queue: queue.SimpleQueue[tuple[EventKind, str] | _Resync] = queue.SimpleQueue()
        self._ready: deque[WatchEvent] = deque()
        #: key -> mzxid of the last value this watcher saw, for the replay after a reconnection
        self._known: dict[str, int] = {}
        #: keys whose last event handed out was a DELETE: a second DELETE can only be the same
        #: deletion seen twice (replayed, then live), since a PUT always comes between two
        self._deleted: set[str] = set()
        self._resync: _Resync | None = None
        self._closed = False
        self.active = False

    def offer(self, item: tuple[EventKind, str] | _Resync) -> None:
        self._queue.put(item)

    def remember(self, snapshot: Snapshot) -> None:
        self._known = {key: stat.mzxid for key, (_, stat) in snapshot.items()}

    def get(self, timeout: float) -> WatchEvent | None:
        deadline = time.monotonic() + max(timeout, 0.0)
        while not self._closed:
            if self._resync is not None:
                self._replay(self._resync)
            if self._ready:
                return self._ready.popleft()
            try:
                item = self._queue.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                return None
            if isinstance(item, _Resync):
                self._resync = item
                continue
            kind, key = item
            if kind is EventKind.DELETE:
                if key in self._deleted:
                    continue
                self._known.pop(key, None)
                self._deleted.add(key)
                return WatchEvent(EventKind.DELETE, key)
            self._deleted.discard(key)
            return WatchEvent(EventKind.PUT, key, self._value_now(key))
        return None

    def _value_now(self, key: str) -> bytes | None:
        try:
            found = self._read_key(key)
        except Exception:
            return None
        if found is None:
            self._known.pop(key, None)
            return None
        value, stat = found
        self._known[key] = stat.mzxid
        return value

    def _replay(self, marker: _Resync) -> None:
        """Queue what changed while the watch was lost; raises StoreUnavailableError."""
        marker.done.wait(60.0)
        now = marker.snapshot if marker.snapshot is not None else self.read_prefix(self.prefix)
        self._resync = None
        events = [WatchEvent(EventKind.DELETE, key) for key in sorted(set(self._known) - set(now))]
        changed = [
            (stat.mzxid, key, value)
            for key, (value, stat) in now.items()
            if self._known.get(key) != stat.mzxid
        ]
        events += [WatchEvent(EventKind.PUT, key, value) for _, key, value in sorted(changed)]
        self.remember(now)
        for event in events:
            if event.kind is EventKind.DELETE:
                self._deleted.add(event.key)
            else:
                self._deleted.discard(event.key)
        self._ready.extend(events)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._on_close(self)


class WatchHub:
    """The local watchers of one backend, fed from the connection thread."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._watchers: list[ZooKeeperWatcher] = []

    def __bool__(self) -> bool:
        with self._lock:
            return bool(self._watchers)

    def add(self, watcher: ZooKeeperWatcher) -> None:
        with self._lock:
            self._watchers.append(watcher)

    def remove(self, watcher: ZooKeeperWatcher) -> None:
        with self._lock:
            if watcher in self._watchers:
                self._watchers.remove(watcher)

    def activate(self, watcher: ZooKeeperWatcher) -> None:
        with self._lock:
            watcher.active = True

    def resync_all(self) -> None:
        """The server-side watch was added again after a reconnection."""
        with self._lock:
            for watcher in self._watchers:
                if watcher.active:
                    watcher.offer(_Resync(watcher.read_prefix, watcher.prefix))

    def close_all(self) -> None:
        with self._lock:
            watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            watcher.close()

    def on_event(self, event_type: int, path: str) -> None:
        if event_type not in (_CREATED, _DELETED, _CHANGED):
            return
        if not path.startswith(self.root + "/"):
            return
        key = key_of(path[len(self.root) + 1 :])
        if key is None:
            return
        kind = EventKind.DELETE if event_type == _DELETED else EventKind.PUT
        with self._lock:
            for watcher in self._watchers:
                if watcher.active and key.startswith(watcher.prefix):
                    watcher.offer((kind, key))
