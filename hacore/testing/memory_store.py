"""The server side of the in-memory consensus store: :class:`MemoryStore` (keys, revisions,
sessions, watchers, simulated servers) and the per-process registry of stores by name.

The semantics it gives are described in :mod:`hacore.testing.memory`, whose backends
(:class:`~hacore.testing.memory.MemoryConsensus`,
:class:`~hacore.testing.memory.MemoryManagedStore`) are its clients.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import attrs

from hacore.backends.consensus import Watcher
from hacore.backends.records import EventKind, WatchEvent
from hacore.errors import StoreUnavailableError

#: How often waiters re-check session expiry: bounds how late an expiry is noticed.
_POLL = 0.02


@attrs.define
class Entry:
    value: bytes
    create_revision: int
    mod_revision: int
    session: int | None


@attrs.define
class _Session:
    ttl: float
    deadline: float
    keys: set[str] = attrs.field(factory=set)


@attrs.define
class StoreServer:
    """One simulated server of a managed store."""

    name: str
    running: bool = False
    voting: bool = False


class MemoryStore:
    """The shared state behind every backend made with one ``store`` name.

    All state is guarded by one condition variable; waiters (watchers, calls on a store that
    does not serve) wake on every change and at least every few milliseconds to expire sessions.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.cond = threading.Condition()
        self.revision = 0
        self._entries: dict[str, Entry] = {}
        self._sessions: dict[int, _Session] = {}
        self._next_session = 1
        self._watchers: set[MemoryWatcher] = set()
        self._offset = 0.0
        self._frozen = False
        self._paused_since: float | None = None
        self.servers: dict[str, StoreServer] = {}

    # -- clock and availability ------------------------------------------------------------

    def now(self) -> float:
        return time.monotonic() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the store's clock forward (sessions expire as if that time had passed)."""
        with self.cond:
            self._offset += seconds
            self._expire()
            self.cond.notify_all()

    def freeze(self) -> None:
        """Stop answering, as a store whose servers are all SIGSTOPped."""
        with self.cond:
            self._frozen = True
            self.availability_changed()

    def thaw(self) -> None:
        with self.cond:
            self._frozen = False
            self.availability_changed()

    def serving(self) -> bool:
        if self._frozen:
            return False
        voters = [s for s in self.servers.values() if s.voting]
        return not voters or sum(s.running for s in voters) * 2 > len(voters)

    def availability_changed(self) -> None:
        """Note when service stopped; on resume, give sessions back the time they lost."""
        now = self.now()
        if not self.serving():
            if self._paused_since is None:
                self._paused_since = now
        elif self._paused_since is not None:
            lost = now - self._paused_since
            for session in self._sessions.values():
                session.deadline += lost
            self._paused_since = None
        self.cond.notify_all()

    def wait_serving(self, timeout: float) -> None:
        """Return once the store serves; StoreUnavailableError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not self.serving():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise StoreUnavailableError(
                    f"memory store {self.name!r} did not answer within {timeout:g}s"
                )
            self.cond.wait(min(remaining, _POLL))
        self._expire()

    # -- sessions --------------------------------------------------------------------------

    def _expire(self) -> None:
        if not self.serving():
            return
        now = self.now()
        for sid in [sid for sid, s in self._sessions.items() if s.deadline <= now]:
            self.end_session(sid)

    def open_session(self, ttl: float) -> int:
        sid = self._next_session
        self._next_session += 1
        self._sessions[sid] = _Session(ttl=ttl, deadline=self.now() + ttl)
        return sid

    def session_alive(self, sid: int | None) -> bool:
        return sid is not None and sid in self._sessions

    def refresh_session(self, sid: int | None) -> bool:
        session = self._sessions.get(sid) if sid is not None else None
        if session is None:
            return False
        session.deadline = self.now() + session.ttl
        return True

    def end_session(self, sid: int) -> None:
        session = self._sessions.pop(sid, None)
        if session is None:
            return
        for key in sorted(session.keys):
            entry = self._entries.get(key)
            if entry is not None and entry.session == sid:
                self.delete(key)

    # -- keys ------------------------------------------------------------------------------

    def entry(self, key: str) -> Entry | None:
        return self._entries.get(key)

    def entries(self, prefix: str) -> list[tuple[str, Entry]]:
        return sorted((k, e) for k, e in self._entries.items() if k.startswith(prefix))

    def put(self, key: str, value: bytes, session: int | None = None) -> Entry:
        self.revision += 1
        old = self._entries.get(key)
        if old is not None and old.session is not None and old.session != session:
            self._unbind(old.session, key)
        entry = Entry(
            value=value,
            create_revision=old.create_revision if old is not None else self.revision,
            mod_revision=self.revision,
            session=session,
        )
        self._entries[key] = entry
        if session is not None:
            self._sessions[session].keys.add(key)
        self._publish(EventKind.PUT, key, value)
        return entry

    def delete(self, key: str) -> None:
        entry = self._entries.pop(key)
        if entry.session is not None:
            self._unbind(entry.session, key)
        self.revision += 1
        self._publish(EventKind.DELETE, key, None)

    def _unbind(self, sid: int, key: str) -> None:
        session = self._sessions.get(sid)
        if session is not None:
            session.keys.discard(key)

    # -- watchers --------------------------------------------------------------------------

    def add_watcher(self, watcher: MemoryWatcher) -> None:
        self._watchers.add(watcher)

    def remove_watcher(self, watcher: MemoryWatcher) -> None:
        self._watchers.discard(watcher)

    def _publish(self, kind: EventKind, key: str, value: bytes | None) -> None:
        for watcher in self._watchers:
            watcher.offer(kind, key, value)
        self.cond.notify_all()

    def expire_and_wait(self, timeout: float) -> None:
        """One bounded wait of a watcher, expiring sessions first (caller holds the lock)."""
        self._expire()
        self.cond.wait(min(timeout, _POLL))


_stores: dict[str, MemoryStore] = {}
_stores_lock = threading.Lock()


def get_store(name: str) -> MemoryStore:
    """The store called ``name``, created empty on first use."""
    with _stores_lock:
        store = _stores.get(name)
        if store is None:
            store = _stores[name] = MemoryStore(name)
        return store


def drop_store(name: str) -> None:
    """Forget a store; backends still holding it keep working on the orphan."""
    with _stores_lock:
        _stores.pop(name, None)


class MemoryWatcher(Watcher):
    def __init__(self, store: MemoryStore, root: str, prefix: str) -> None:
        self._store = store
        self._root = root
        self._prefix = root + prefix
        self._events: deque[WatchEvent] = deque()
        self._closed = False

    def offer(self, kind: EventKind, key: str, value: bytes | None) -> None:
        if key.startswith(self._prefix):
            self._events.append(WatchEvent(kind=kind, key=key[len(self._root) :], value=value))

    def get(self, timeout: float) -> WatchEvent | None:
        deadline = time.monotonic() + timeout
        with self._store.cond:
            while not self._closed:
                if self._events:
                    return self._events.popleft()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._store.expire_and_wait(remaining)
                if self._events:
                    return self._events.popleft()
        return None

    def close(self) -> None:
        with self._store.cond:
            self._closed = True
            self._store.remove_watcher(self)
            self._store.cond.notify_all()
