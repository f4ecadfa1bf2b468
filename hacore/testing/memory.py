"""An in-process consensus store with the semantics of the real ones, for fast tests.

Every :class:`MemoryConsensus` made with the same ``settings["store"]`` shares one
:class:`MemoryStore` in this process, so several "nodes" of a unit test contend for the same
leader key exactly as they would on etcd:

- a session expires ``ttl`` seconds after its last keepalive/renew (monotonic clock); expiry
  is evaluated on every access and by waiting watchers, and deletes the leader key and member
  record bound to it, with watch events;
- one global revision counter orders every write: the version of a key is the revision of its
  last write, and the fencing token of a leadership is the revision that created the key;
- watchers receive every change under their prefix, in order, values included;
- :meth:`MemoryStore.freeze` makes every call wait ``retry_timeout`` and then raise
  :class:`~hacore.errors.StoreUnavailableError`, as a frozen (SIGSTOPped) store would; time
  spent frozen does not count against sessions;
- :meth:`MemoryConsensus.crash` stands for a SIGKILLed node: the backend stops talking to the
  store without ending its session, which then expires after ``ttl``;
- :meth:`MemoryStore.advance` moves the store's clock forward, so unit tests can expire
  sessions without sleeping;
- :class:`MemoryManagedStore` simulates a store of several servers: it stops serving (calls
  raise after ``retry_timeout``) while fewer than a majority of its voters run.

Nothing here leaves the process; stores live until :func:`drop_store`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs

from hacore.backends.consensus import (
    CONFIG_KEY,
    LEADER_KEY,
    MEMBERS_PREFIX,
    ConsensusBackend,
    ManagedStore,
    Watcher,
)
from hacore.backends.records import ClusterView, KeyValue, Leader, Lease, Member, StoreMember
from hacore.errors import ConfigError, HacoreError, ManagedStoreError, StoreUnavailableError
from hacore.plugins.hookspecs import hookimpl
from hacore.plugins.registry import BackendRegistry
from hacore.testing.harness import ConsensusHarness
from hacore.testing.memory_store import (
    Entry,
    MemoryStore,
    MemoryWatcher,
    StoreServer,
    drop_store,
    get_store,
)

log = logging.getLogger(__name__)

_STORE_FILE = "memory-store.json"


class MemoryConsensus(ConsensusBackend):
    """A :class:`~hacore.backends.consensus.ConsensusBackend` on a :class:`MemoryStore`.

    ``settings``: ``{"store": NAME}``; backends with the same name share one store.
    """

    capabilities = frozenset({"ordered_watch", "managed_servers"})

    def __init__(
        self,
        settings: Mapping[str, Any],
        *,
        namespace: str,
        node_name: str,
        ttl: float,
        retry_timeout: float,
    ) -> None:
        self.validate_settings(settings)
        super().__init__(
            settings,
            namespace=namespace,
            node_name=node_name,
            ttl=ttl,
            retry_timeout=retry_timeout,
        )
        self.store = get_store(settings["store"])
        self._root = f"{namespace}/"
        self._session: int | None = None
        self._lease: Lease | None = None
        self._watchers: list[MemoryWatcher] = []
        self._closed = False
        self._crashed = False

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        store = settings.get("store")
        if not isinstance(store, str) or not store:
            raise ConfigError(
                "memory consensus settings need 'store': a name shared by the nodes of one "
                "test cluster"
            )

    @contextmanager
    def _call(self) -> Iterator[MemoryStore]:
        if self._crashed:
            raise StoreUnavailableError(f"memory backend of {self.node_name} has crashed")
        if self._closed:
            raise HacoreError(f"memory backend of {self.node_name} is closed")
        with self.store.cond:
            self.store.wait_serving(self.retry_timeout)
            yield self.store

    def _key(self, key: str) -> str:
        return self._root + key

    def _ensure_session(self, store: MemoryStore) -> int:
        if self._session is None or not store.session_alive(self._session):
            self._session = store.open_session(self.ttl)
        return self._session

    # -- session ---------------------------------------------------------------------------

    def keepalive(self) -> bool:
        with self._call() as store:
            if self._session is None:
                self._session = store.open_session(self.ttl)
                return True
            return store.refresh_session(self._session)

    def close(self) -> None:
        """End the session now; when the store does not answer, it is left to expire."""
        if self._closed or self._crashed:
            return
        self._closed = True
        for watcher in self._watchers:
            watcher.close()
        with self.store.cond:
            if self._session is not None and self.store.serving():
                self.store.end_session(self._session)
            self._session = None

    def crash(self) -> None:
        """Behave as if this node's process got SIGKILL: stop renewing, end nothing.

        The session, the leader key and the member record stay until ``ttl`` runs out;
        every later call raises :class:`~hacore.errors.StoreUnavailableError`.
        """
        self._crashed = True
        for watcher in self._watchers:
            watcher.close()

    # -- leadership ------------------------------------------------------------------------

    def campaign(self) -> Lease | None:
        with self._call() as store:
            entry = store.entry(self._key(LEADER_KEY))
            if entry is not None:
                if self._session is not None and entry.session == self._session:
                    lease = self._lease
                    if lease is None or lease.token != entry.create_revision:
                        lease = self._make_lease(entry)
                    return lease
                return None
            sid = self._ensure_session(store)
            entry = store.put(self._key(LEADER_KEY), self.node_name.encode(), sid)
            return self._make_lease(entry)

    def _make_lease(self, entry: Entry) -> Lease:
        self._lease = Lease(
            holder=self.node_name,
            token=entry.create_revision,
            ttl=self.ttl,
            acquired_at=time.monotonic(),
            handle=entry.session,
        )
        return self._lease

    def renew(self, lease: Lease) -> bool:
        with self._call() as store:
            if not store.refresh_session(self._session):
                return False
            entry = store.entry(self._key(LEADER_KEY))
            return (
                entry is not None
                and entry.session == self._session
                and entry.create_revision == lease.token
            )

    def resign(self, lease: Lease) -> None:
        with self._call() as store:
            entry = store.entry(self._key(LEADER_KEY))
            if entry is not None and entry.create_revision == lease.token:
                store.delete(self._key(LEADER_KEY))

    def leader(self) -> Leader | None:
        with self._call() as store:
            return self._leader(store)

    def _leader(self, store: MemoryStore) -> Leader | None:
        entry = store.entry(self._key(LEADER_KEY))
        if entry is None:
            return None
        return Leader(name=entry.value.decode(), token=entry.create_revision)

    # -- members ---------------------------------------------------------------------------

    def publish_member(self, member: Member) -> None:
        with self._call() as store:
            sid = self._ensure_session(store)
            store.put(self._key(MEMBERS_PREFIX + member.name), member.to_bytes(), sid)

    def members(self) -> tuple[Member, ...]:
        with self._call() as store:
            return self._members(store)

    def _members(self, store: MemoryStore) -> tuple[Member, ...]:
        found = []
        for key, entry in store.entries(self._key(MEMBERS_PREFIX)):
            try:
                found.append(Member.from_bytes(entry.value))
            except (ValueError, TypeError) as err:
                log.warning("ignoring unreadable member record %s: %s", key, err)
        return tuple(sorted(found, key=lambda m: m.name))

    # -- versioned keys --------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        with self._call() as store:
            return self._get(store, key)

    def _get(self, store: MemoryStore, key: str) -> KeyValue | None:
        entry = store.entry(self._key(key))
        if entry is None:
            return None
        return KeyValue(key=key, value=entry.value, version=entry.mod_revision)

    def get_prefix(self, prefix: str) -> tuple[KeyValue, ...]:
        with self._call() as store:
            return tuple(
                KeyValue(key=k[len(self._root) :], value=e.value, version=e.mod_revision)
                for k, e in store.entries(self._key(prefix))
            )

    def put(self, key: str, value: bytes, *, expect_version: int | None = None) -> bool:
        with self._call() as store:
            if not _version_matches(store.entry(self._key(key)), expect_version):
                return False
            store.put(self._key(key), bytes(value))
            return True

    def delete(self, key: str, *, expect_version: int | None = None) -> bool:
        with self._call() as store:
            entry = store.entry(self._key(key))
            if entry is None or not _version_matches(entry, expect_version):
                return False
            store.delete(self._key(key))
            return True

    def watch(self, prefix: str) -> Watcher:
        with self._call() as store:
            watcher = MemoryWatcher(store, self._root, prefix)
            store.add_watcher(watcher)
            self._watchers.append(watcher)
            return watcher

    # -- snapshot --------------------------------------------------------------------------

    def view(self) -> ClusterView:
        with self._call() as store:
            return ClusterView(
                leader=self._leader(store),
                members=self._members(store),
                config=self._get(store, CONFIG_KEY),
            )


def _version_matches(entry: Entry | None, expect_version: int | None) -> bool:
    if expect_version is None:
        return True
    if expect_version == 0:
        return entry is None
    return entry is not None and entry.mod_revision == expect_version


class MemoryManagedStore(ManagedStore):
    """A simulated store server: the store answers only while a majority of voters run.

    The store's name is written to ``data_dir`` at bootstrap/join so :meth:`start` finds it
    again, and a non-empty ``data_dir`` is refused as a real server would refuse it.
    """

    def _store(self) -> MemoryStore:
        path = self.data_dir / _STORE_FILE
        try:
            name = json.loads(path.read_text())["store"]
        except (OSError, ValueError, KeyError) as err:
            raise ManagedStoreError(
                f"{self.name}: no memory store data in {self.data_dir} ({err})"
            ) from err
        return get_store(name)

    def _init_data_dir(self, store_name: str) -> None:
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise ManagedStoreError(
                f"{self.name}: data directory {self.data_dir} is not empty; refusing to "
                "create a new store member over existing data"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / _STORE_FILE).write_text(json.dumps({"store": store_name}))

    def identity(self) -> StoreMember:
        return StoreMember(
            name=self.name,
            peer_url=f"memory://{self.host}/{self.name}/peer",
            client_url=f"memory://{self.host}/{self.name}",
        )

    def bootstrap(self) -> StoreMember:
        store_name = f"managed-{uuid.uuid4().hex}"
        self._init_data_dir(store_name)
        store = get_store(store_name)
        with store.cond:
            store.servers[self.name] = StoreServer(self.name, running=True, voting=True)
            store.availability_changed()
        return self.identity()

    def add_member(self, member: StoreMember) -> dict[str, Any]:
        store = self._store()
        with store.cond:
            if not store.serving():
                raise ManagedStoreError(f"cannot add {member.name}: the store has no quorum")
            store.servers.setdefault(member.name, StoreServer(member.name))
        return {"store": store.name, "member": attrs.asdict(member)}

    def join(self, spec: Mapping[str, Any]) -> StoreMember:
        store_name = spec["store"]
        self._init_data_dir(store_name)
        store = get_store(store_name)
        with store.cond:
            server = store.servers.get(self.name)
            if server is None:
                raise ManagedStoreError(f"{self.name}: the store was not told about this member")
            server.running = True
            server.voting = True
            store.availability_changed()
        return self.identity()

    def remove_member(self, name: str) -> None:
        store = self._store()
        with store.cond:
            if name not in store.servers:
                return
            if not store.serving():
                raise ManagedStoreError(f"cannot remove {name}: the store has no quorum")
            del store.servers[name]
            store.availability_changed()

    def members(self) -> tuple[StoreMember, ...]:
        store = self._store()
        with store.cond:
            return tuple(
                StoreMember(
                    name=s.name,
                    peer_url=f"memory://{self.host}/{s.name}/peer",
                    client_url=f"memory://{self.host}/{s.name}",
                    voting=s.voting,
                    healthy=s.running,
                )
                for s in sorted(store.servers.values(), key=lambda s: s.name)
            )

    def _set_running(self, running: bool) -> None:
        store = self._store()
        with store.cond:
            server = store.servers.get(self.name)
            if server is None:
                if running:
                    raise ManagedStoreError(f"{self.name} was removed from the store")
                return
            server.running = running
            store.availability_changed()

    def start(self) -> None:
        self._set_running(True)

    def stop(self) -> None:
        if (self.data_dir / _STORE_FILE).exists():
            self._set_running(False)

    def is_running(self) -> bool:
        if not (self.data_dir / _STORE_FILE).exists():
            return False
        store = self._store()
        with store.cond:
            server = store.servers.get(self.name)
            return server is not None and server.running

    def client_settings(self) -> dict[str, Any]:
        return {"store": self._store().name}


class MemoryHarness(ConsensusHarness):
    """The contract suite's harness for the memory backend.

    One store per harness. A "killed holder" is an in-process backend whose
    :meth:`MemoryConsensus.crash` was called; freezing makes every call raise after
    ``retry_timeout``; no single server can be lost (``can_kill_member`` False), but the
    managed-store contract runs on :class:`MemoryManagedStore`.
    """

    backend_name = "memory"
    can_kill_member = False
    can_freeze = True
    out_of_process = False
    supports_managed = True

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self._name = f"harness-{uuid.uuid4().hex}"
        self._extra: list[str] = []

    def start(self) -> None:
        get_store(self._name)

    def stop(self) -> None:
        for name in [self._name, *self._extra]:
            get_store(name).thaw()
            drop_store(name)

    def settings(self) -> dict[str, Any]:
        return {"store": self._name}

    def freeze(self) -> None:
        get_store(self._name).freeze()

    def thaw(self) -> None:
        get_store(self._name).thaw()

    def unreachable_settings(self) -> dict[str, Any]:
        name = f"unreachable-{uuid.uuid4().hex}"
        self._extra.append(name)
        get_store(name).freeze()
        return {"store": name}

    def make_managed_store(self, name: str, data_dir: Path) -> ManagedStore:
        return MemoryManagedStore({}, name=name, host="127.0.0.1", data_dir=data_dir)


@hookimpl
def hacore_register_backends(registry: BackendRegistry) -> None:
    registry.add_consensus("memory", MemoryConsensus)
    registry.add_managed_store("memory", MemoryManagedStore)
    registry.add_test_harness("memory", "hacore.testing.memory:MemoryHarness")


__all__ = [
    "MemoryConsensus",
    "MemoryHarness",
    "MemoryManagedStore",
    "MemoryStore",
    "drop_store",
    "get_store",
]
