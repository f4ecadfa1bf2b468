"""The consensus backend on Consul: a session for liveness, KV locks for leadership.

Choices (docs/consul.md explains them for users):

* One Consul session per node, ``Behavior=delete`` and no health checks, so only its TTL
  decides when it ends, and then the leader key and the member record it holds are deleted.
* Session TTL ``ttl / 2``: Consul's servers time sessions at twice their TTL (see
  :func:`~hacore_plugins.consul.settings.session_ttl`).
* Lock-delay 1 ms: Consul's default (15 s) would forbid every standby from taking the leader
  key for 15 s after the active died. hacore does not need it: the active fences itself before
  Consul expires its session.
* The fencing token is the leader key's ``ModifyIndex`` right after the acquire: the raft index
  of that write, which is above the index of every earlier write, so of every earlier
  leadership. (``LockIndex`` is not: ``Behavior=delete`` deletes the key, and it restarts at 1.)
  The holder never writes the key again, so readers see the same number.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any, ClassVar

import consul
import consul.callback

from hacore.backends.consensus import (
    CONFIG_KEY,
    LEADER_KEY,
    MEMBERS_PREFIX,
    ConsensusBackend,
    Watcher,
)
from hacore.backends.records import ClusterView, KeyValue, Leader, Lease, Member
from hacore.errors import ConfigError, StoreUnavailableError
from hacore_plugins.consul.client import ConsulPool
from hacore_plugins.consul.settings import ConsulSettings, parse_settings, session_ttl
from hacore_plugins.consul.watch import ConsulWatcher

log = logging.getLogger(__name__)

Entry = Mapping[str, Any]


def _duration(seconds: float) -> str:
    """A Go duration string, in whole seconds where it can be (as Consul shows its defaults)."""
    millis = round(seconds * 1000)
    return f"{millis // 1000}s" if millis % 1000 == 0 else f"{millis}ms"


class ConsulConsensus(ConsensusBackend):
    """A node's Consul session, the leader lock and the cluster's keys under one KV prefix."""

    capabilities: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        settings: Mapping[str, Any],
        *,
        namespace: str,
        node_name: str,
        ttl: float,
        retry_timeout: float,
    ) -> None:
        super().__init__(
            settings,
            namespace=namespace,
            node_name=node_name,
            ttl=ttl,
            retry_timeout=retry_timeout,
        )
        if not namespace or "/" in namespace:
            raise ConfigError(f"namespace {namespace!r} must be a non-empty name without '/'")
        self.config: ConsulSettings = parse_settings(settings)
        #: The session's TTL; Consul times it at twice this, see :func:`session_ttl`.
        self.session_ttl = session_ttl(ttl, self.config)
        self.root = f"{self.config.prefix}/{namespace}/"
        self.session_name = f"hacore:{namespace}:{node_name}"
        self._pool = ConsulPool(self.config, retry_timeout)
        self._lock = threading.RLock()
        self._session: str | None = None
        self._expired = False
        #: monotonic time before the request that last created or renewed the session.
        self._refreshed_at = 0.0
        self._watchers: weakref.WeakSet[ConsulWatcher] = weakref.WeakSet()

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        parse_settings(settings)

    def _key(self, key: str) -> str:
        return self.root + key

    # -- session ---------------------------------------------------------------------------

    def _create_session(self) -> str:
        body = {
            "Name": self.session_name,
            "TTL": _duration(self.session_ttl),
            "Behavior": "delete",
            "LockDelay": _duration(self.config.lock_delay),
            # Present and empty: no serfHealth check, only the TTL ends the session.
            "Checks": [],
        }

        def create(client: consul.Consul) -> str:
            # py-consul's session.create refuses TTLs under 10 s, which servers may allow.
            params = [("dc", client.dc)] if client.dc else []
            session_id: str = client.http.put(
                consul.callback.CB.json(is_id=True),
                "/v1/session/create",
                params=params,
                headers=client.prepare_headers(),
                data=json.dumps(body),
            )
            return session_id

        # A retried create may leave an unused session behind; it expires after its TTL.
        return self._pool.call(create, what="session create")

    def _ensure_session(self) -> str:
        with self._lock:
            if self._session is None:
                started = time.monotonic()
                self._session = self._create_session()
                self._refreshed_at = started
                self._expired = False
                log.debug("consul session %s opened for %s", self._session, self.node_name)
            return self._session

    def _renew_session(self, session_id: str) -> bool:
        started = time.monotonic()
        try:
            self._pool.call(lambda c: c.session.renew(session_id), what="session renew")
        except consul.NotFound:
            with self._lock:
                if self._session == session_id:
                    self._session = None
                    self._expired = True
            return False
        with self._lock:
            if self._session == session_id:
                self._refreshed_at = max(self._refreshed_at, started)
        return True

    def keepalive(self) -> bool:
        with self._lock:
            session_id, expired = self._session, self._expired
        if session_id is None:
            if expired:
                return False
            self._ensure_session()
            return True
        return self._renew_session(session_id)

    def close(self) -> None:
        for watcher in list(self._watchers):
            watcher.close()
        with self._lock:
            session_id, self._session = self._session, None
        try:
            if session_id is not None:
                self._pool.call(lambda c: c.session.destroy(session_id), what="session destroy")
        finally:
            self._pool.close()

    # -- reads -----------------------------------------------------------------------------

    def _get(self, key: str, *, consistent: bool = False) -> Entry | None:
        mode = "consistent" if consistent else None
        _, entry = self._pool.call(
            lambda c: c.kv.get(self._key(key), consistency=mode), what=f"read of {key!r}"
        )
        return entry  # type: ignore[no-any-return]

    def _get_prefix(self, prefix: str) -> list[Entry]:
        _, entries = self._pool.call(
            lambda c: c.kv.get(self._key(prefix), recurse=True), what=f"read of {prefix!r}*"
        )
        return [e for e in entries or () if e["Key"].startswith(self._key(prefix))]

    def _key_value(self, entry: Entry) -> KeyValue:
        return KeyValue(
            key=entry["Key"][len(self.root) :],
            value=entry.get("Value") or b"",
            version=int(entry["ModifyIndex"]),
        )

    @staticmethod
    def _leader_of(entry: Entry | None) -> Leader | None:
        # A key nobody holds (no Session) is free for the taking, not a leader.
        if entry is None or not entry.get("Session"):
            return None
        return Leader(name=(entry.get("Value") or b"").decode(), token=int(entry["ModifyIndex"]))

    # -- leadership ------------------------------------------------------------------------

    def _lease(self, entry: Entry, session_id: str) -> Lease:
        # The key lives as long as the session, which counts from its last refresh, not from
        # the acquire: that is the instant a self-fencing deadline must start from.
        return Lease(
            holder=self.node_name,
            token=int(entry["ModifyIndex"]),
            ttl=self.ttl,
            acquired_at=self._refreshed_at,
            handle=session_id,
        )

    def campaign(self) -> Lease | None:
        session_id = self._ensure_session()
        current = self._get(LEADER_KEY, consistent=True)
        if current is not None and current.get("Session"):
            if current["Session"] == session_id:
                return self._lease(current, session_id)
            return None
        name = self.node_name.encode()
        acquired = self._pool.call(
            lambda c: c.kv.put(self._key(LEADER_KEY), name, acquire=session_id),
            what="leader acquire",
        )
        if not acquired:
            return None
        entry = self._get(LEADER_KEY, consistent=True)
        if entry is None or entry.get("Session") != session_id:
            return None
        log.info("consul: %s acquired leadership, token %s", self.node_name, entry["ModifyIndex"])
        return self._lease(entry, session_id)

    def renew(self, lease: Lease) -> bool:
        if lease.handle is None or lease.handle != self._session:
            return False
        if not self._renew_session(lease.handle):
            return False
        # A consistent read: a partitioned server must not confirm a lost leadership.
        entry = self._get(LEADER_KEY, consistent=True)
        return (
            entry is not None
            and entry.get("Session") == lease.handle
            and int(entry["ModifyIndex"]) == lease.token
        )

    def resign(self, lease: Lease) -> None:
        # The token is the key's ModifyIndex and the holder never rewrites the key, so a
        # check-and-delete on it removes exactly this leadership and nobody else's.
        self._pool.call(
            lambda c: c.kv.delete(self._key(LEADER_KEY), cas=lease.token),
            what="leader resign",
        )

    def leader(self) -> Leader | None:
        return self._leader_of(self._get(LEADER_KEY))

    # -- members ---------------------------------------------------------------------------

    def publish_member(self, member: Member) -> None:
        key = self._key(MEMBERS_PREFIX + member.name)
        data = member.to_bytes()
        for _ in range(2):
            session_id = self._ensure_session()

            def acquire(client: consul.Consul, session_id: str = session_id) -> bool:
                ok: bool = client.kv.put(key, data, acquire=session_id)
                return ok

            if self._pool.call(acquire, what="member publish"):
                return
            if not self._end_previous_incarnation(MEMBERS_PREFIX + member.name, session_id):
                break
        raise ConfigError(
            f"member record {member.name!r} is held by another live Consul session (or is in "
            "its lock-delay): is another node running with the same name?"
        )

    def _end_previous_incarnation(self, key: str, session_id: str) -> bool:
        """End the session of an earlier run of this same node (same session name).

        After a crash and restart the old session holds this node's keys until its TTL runs
        out; it can never be renewed again, so ending it now loses nothing. True when another
        acquire is worth trying.
        """
        entry = self._get(key, consistent=True)
        holder = entry.get("Session") if entry else None
        if not holder or holder == session_id:
            return True
        _, info = self._pool.call(lambda c: c.session.info(holder), what="session info")
        if info and info.get("Name") != self.session_name:
            return False
        log.warning(
            "consul: ending session %s left by an earlier run of %s", holder, self.node_name
        )
        self._pool.call(lambda c: c.session.destroy(holder), what="session destroy")
        return True

    def _members(self, entries: list[Entry]) -> tuple[Member, ...]:
        found = []
        for entry in entries:
            try:
                found.append(Member.from_bytes(entry.get("Value") or b""))
            except (ValueError, TypeError) as exc:
                log.warning("consul: ignoring unreadable member record %s: %s", entry["Key"], exc)
        return tuple(sorted(found, key=lambda m: m.name))

    def members(self) -> tuple[Member, ...]:
        return self._members(self._get_prefix(MEMBERS_PREFIX))

    # -- versioned keys --------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        entry = self._get(key)
        return None if entry is None else self._key_value(entry)

    def get_prefix(self, prefix: str) -> tuple[KeyValue, ...]:
        entries = self._get_prefix(prefix)
        return tuple(sorted((self._key_value(e) for e in entries), key=lambda kv: kv.key))

    def put(self, key: str, value: bytes, *, expect_version: int | None = None) -> bool:
        ok: bool = self._pool.call(
            lambda c: c.kv.put(self._key(key), value, cas=expect_version),
            what=f"write of {key!r}",
            idempotent=expect_version is None,
        )
        return ok

    def delete(self, key: str, *, expect_version: int | None = None) -> bool:
        if expect_version == 0:
            return False
        if expect_version is not None:
            return self._cas_delete(key, expect_version, idempotent=False)
        # Consul answers true for a missing key; read first so "nothing deleted" is told apart,
        # then delete that version, again if a writer got in between.
        deadline = time.monotonic() + self.retry_timeout
        while True:
            entry = self._get(key)
            if entry is None:
                return False
            if self._cas_delete(key, int(entry["ModifyIndex"]), idempotent=False):
                return True
            if time.monotonic() > deadline:
                raise StoreUnavailableError(
                    f"Consul delete of {key!r}: the key kept changing for {self.retry_timeout:g}s"
                )

    def _cas_delete(self, key: str, version: int, *, idempotent: bool) -> bool:
        ok: bool = self._pool.call(
            lambda c: c.kv.delete(self._key(key), cas=version),
            what=f"delete of {key!r}",
            idempotent=idempotent,
        )
        return ok

    def watch(self, prefix: str) -> Watcher:
        watcher = ConsulWatcher(ConsulPool(self.config, self.retry_timeout), self.root, prefix)
        self._watchers.add(watcher)
        return watcher

    # -- snapshot --------------------------------------------------------------------------

    def view(self) -> ClusterView:
        """Leader, members and config from one recursive read of the namespace."""
        entries = {e["Key"][len(self.root) :]: e for e in self._get_prefix("")}
        config = entries.get(CONFIG_KEY)
        return ClusterView(
            leader=self._leader_of(entries.get(LEADER_KEY)),
            members=self._members([e for k, e in entries.items() if k.startswith(MEMBERS_PREFIX)]),
            config=None if config is None else self._key_value(config),
        )
