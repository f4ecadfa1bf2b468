"""The etcd consensus backend.

The node's session is one etcd lease, granted when first needed: the leader key and the
member record are both attached to it, so both vanish when the node stops renewing. The
fencing token is the leader key's ``create_revision``: etcd's revision only ever grows, so each
new leadership gets a larger one. A key's ``mod_revision`` is its version for compare-and-set.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any, ClassVar

from hacore.backends.consensus import CONFIG_KEY, LEADER_KEY, MEMBERS_PREFIX, ConsensusBackend
from hacore.backends.records import ClusterView, KeyValue, Leader, Lease, Member, TlsFiles
from hacore.errors import HacoreError
from hacore_plugins.etcd.client import KV, EtcdClient, EtcdRequestError, b64, prefix_end
from hacore_plugins.etcd.settings import EtcdSettings
from hacore_plugins.etcd.watch import EtcdWatcher

log = logging.getLogger(__name__)


def _lease_missing(err: EtcdRequestError) -> bool:
    return "lease not found" in str(err)


class EtcdConsensus(ConsensusBackend):
    capabilities: ClassVar[frozenset[str]] = frozenset({"managed_servers", "ordered_watch"})
    accepts_tls: ClassVar[bool] = True

    def __init__(
        self,
        settings: Mapping[str, Any],
        *,
        namespace: str,
        node_name: str,
        ttl: float,
        retry_timeout: float,
        tls: TlsFiles | None = None,
    ) -> None:
        super().__init__(
            settings, namespace=namespace, node_name=node_name, ttl=ttl, retry_timeout=retry_timeout
        )
        self.tls = tls
        parsed = EtcdSettings.parse(settings, node_tls=tls)
        self._client = EtcdClient(
            parsed.endpoints,
            timeout=retry_timeout,
            username=parsed.username,
            password=parsed.password,
            tls=parsed.tls,
            discover=True,
        )
        self._root = f"/hacore/{namespace.strip('/')}/".encode()
        self._lease_id: int | None = None
        self._session_lock = threading.Lock()
        self._watchers: weakref.WeakSet[EtcdWatcher] = weakref.WeakSet()
        self._closed = False

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        EtcdSettings.parse(settings)

    @property
    def lease_ttl(self) -> int:
        """etcd counts lease TTLs in whole seconds."""
        return max(1, math.ceil(self.ttl))

    def _key(self, key: str) -> bytes:
        return self._root + key.encode()

    def _relative(self, key: bytes) -> str:
        return key[len(self._root) :].decode(errors="replace")

    def _kv(self, kv: KV) -> KeyValue:
        return KeyValue(key=self._relative(kv.key), value=kv.value, version=kv.mod_revision)

    # -- session ---------------------------------------------------------------------------

    def _session(self, deadline: float) -> int:
        with self._session_lock:
            if self._lease_id is None:
                self._lease_id = self._client.lease_grant(self.lease_ttl, deadline=deadline)
            return self._lease_id

    def _forget_session(self, lease_id: int) -> None:
        with self._session_lock:
            if self._lease_id == lease_id:
                self._lease_id = None

    def _with_session(self, deadline: float, action: Any) -> Any:
        """Run ``action(lease_id)``; once more with a new lease if etcd says ours expired."""
        lease_id = self._session(deadline)
        try:
            return action(lease_id)
        except EtcdRequestError as err:
            if not _lease_missing(err):
                raise
            self._forget_session(lease_id)
            return action(self._session(deadline))

    def keepalive(self) -> bool:
        with self._session_lock:
            lease_id = self._lease_id
        if lease_id is None:
            return False
        if self._client.lease_keepalive(lease_id) > 0:
            return True
        self._forget_session(lease_id)
        return False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for watcher in list(self._watchers):
            watcher.close()
        with self._session_lock:
            lease_id, self._lease_id = self._lease_id, None
        if lease_id is not None:
            try:
                self._client.lease_revoke(lease_id)
            except HacoreError as err:
                log.warning("could not end the etcd session of %s: %s", self.node_name, err)
        self._client.close()

    # -- leadership ------------------------------------------------------------------------

    def campaign(self) -> Lease | None:
        deadline = self._client.deadline()
        key = b64(self._key(LEADER_KEY))
        me = self.node_name.encode()

        def attempt(lease_id: int) -> Lease | None:
            result = self._client.txn(
                [{"key": key, "target": "CREATE", "create_revision": "0", "result": "EQUAL"}],
                [{"request_put": {"key": key, "value": b64(me), "lease": str(lease_id)}}],
                [{"request_range": {"key": key}}],
                deadline=deadline,
            )
            if result.succeeded:
                return self._lease(result.revision, lease_id)
            # Already ours (a retried request that had succeeded, or a second campaign).
            holder = next(iter(result.ranges()[0]), None) if result.ranges() else None
            if holder is not None and holder.lease == lease_id and holder.value == me:
                return self._lease(holder.create_revision, lease_id)
            return None

        lease: Lease | None = self._with_session(deadline, attempt)
        return lease

    def _lease(self, token: int, lease_id: int) -> Lease:
        return Lease(
            holder=self.node_name,
            token=token,
            ttl=self.ttl,
            acquired_at=time.monotonic(),
            handle=lease_id,
        )

    def renew(self, lease: Lease) -> bool:
        if not isinstance(lease.handle, int):
            return False
        deadline = self._client.deadline()
        if self._client.lease_keepalive(lease.handle, deadline=deadline) <= 0:
            self._forget_session(lease.handle)
            return False
        kvs = self._client.range(self._key(LEADER_KEY), deadline=deadline)
        return bool(kvs) and (
            kvs[0].create_revision == lease.token
            and kvs[0].lease == lease.handle
            and kvs[0].value == lease.holder.encode()
        )

    def resign(self, lease: Lease) -> None:
        key = b64(self._key(LEADER_KEY))
        ours = {"key": key, "target": "CREATE", "create_revision": str(lease.token)}
        self._client.txn(
            [{**ours, "result": "EQUAL"}],
            [{"request_delete_range": {"key": key}}],
        )

    def leader(self) -> Leader | None:
        kvs = self._client.range(self._key(LEADER_KEY))
        return self._leader(kvs)

    @staticmethod
    def _leader(kvs: list[KV]) -> Leader | None:
        if not kvs:
            return None
        return Leader(name=kvs[0].value.decode(errors="replace"), token=kvs[0].create_revision)

    # -- members ---------------------------------------------------------------------------

    def publish_member(self, member: Member) -> None:
        deadline = self._client.deadline()
        key = self._key(MEMBERS_PREFIX + member.name)
        raw = member.to_bytes()
        self._with_session(
            deadline, lambda lease_id: self._client.put(key, raw, lease=lease_id, deadline=deadline)
        )

    def members(self) -> tuple[Member, ...]:
        prefix = self._key(MEMBERS_PREFIX)
        return self._members(self._client.range(prefix, prefix_end(prefix)))

    def _members(self, kvs: list[KV]) -> tuple[Member, ...]:
        found = []
        for kv in kvs:
            try:
                found.append(Member.from_bytes(kv.value))
            except (ValueError, TypeError) as err:
                log.warning("ignoring unreadable member record %s: %s", self._relative(kv.key), err)
        return tuple(sorted(found, key=lambda m: m.name))

    # -- versioned keys --------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        kvs = self._client.range(self._key(key))
        return self._kv(kvs[0]) if kvs else None

    def get_prefix(self, prefix: str) -> tuple[KeyValue, ...]:
        start = self._key(prefix)
        kvs = self._client.range(start, prefix_end(start))
        return tuple(sorted((self._kv(kv) for kv in kvs), key=lambda kv: kv.key))

    @staticmethod
    def _version_compare(key: str, expect_version: int) -> dict[str, str]:
        if expect_version == 0:
            return {"key": key, "target": "CREATE", "create_revision": "0", "result": "EQUAL"}
        return {"key": key, "target": "MOD", "mod_revision": str(expect_version), "result": "EQUAL"}

    def put(self, key: str, value: bytes, *, expect_version: int | None = None) -> bool:
        if expect_version is None:
            self._client.put(self._key(key), value)
            return True
        raw_key = b64(self._key(key))
        result = self._client.txn(
            [self._version_compare(raw_key, expect_version)],
            [{"request_put": {"key": raw_key, "value": b64(value)}}],
            [{"request_range": {"key": raw_key}}],
        )
        if result.succeeded:
            return True
        current = next(iter(result.ranges()), [])
        if result.resent and current and current[0].value == value:
            # Resent after a lost answer, and the key holds exactly what this call writes:
            # the earlier attempt was applied (a put that said "changed under you" made the
            # agent drop its synchronous standby and refuse its own cluster start).
            log.info("etcd applied an earlier attempt of this compare-and-set on %s", key)
            return True
        return False

    def delete(self, key: str, *, expect_version: int | None = None) -> bool:
        if expect_version is None:
            return self._client.delete_range(self._key(key)) > 0
        if expect_version == 0:
            return False  # "only if absent": there is nothing to delete
        raw_key = b64(self._key(key))
        result = self._client.txn(
            [self._version_compare(raw_key, expect_version)],
            [{"request_delete_range": {"key": raw_key}}],
            [{"request_range": {"key": raw_key}}],
        )
        if result.succeeded:
            return True
        if result.resent and not any(result.ranges()):
            log.info("etcd applied an earlier attempt of this compare-and-delete on %s", key)
            return True
        return False

    def watch(self, prefix: str) -> EtcdWatcher:
        watcher = EtcdWatcher(self._client, self._root, prefix).start(self.retry_timeout)
        self._watchers.add(watcher)
        return watcher

    # -- snapshot --------------------------------------------------------------------------

    def view(self) -> ClusterView:
        """Leader, members and config read in one transaction: one consistent revision."""
        members = self._key(MEMBERS_PREFIX)
        result = self._client.txn(
            [],
            [
                {"request_range": {"key": b64(self._key(LEADER_KEY))}},
                {"request_range": {"key": b64(members), "range_end": b64(prefix_end(members))}},
                {"request_range": {"key": b64(self._key(CONFIG_KEY))}},
            ],
        )
        leader, member_kvs, config = result.ranges()
        return ClusterView(
            leader=self._leader(leader),
            members=self._members(member_kvs),
            config=self._kv(config[0]) if config else None,
        )
