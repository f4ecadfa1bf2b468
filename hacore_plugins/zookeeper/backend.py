"""The consensus backend on ZooKeeper, through kazoo.

The node's session is the kazoo session, opened with timeout ``ttl``: the leader key and the
member record are ephemeral znodes of that session, so they vanish when it expires or is
closed. The fencing token is the leader znode's ``czxid`` (the zxid that created it), which
grows with every new leadership. Keys live under ``/hacore/<namespace>/`` (see
:mod:`~hacore_plugins.zookeeper.keys`); a key's version is the znode's ``version + 1``, so 0
can mean "must not exist".

Reads are preceded by a ``sync`` (pipelined, no extra round trip for the client), so the server
answering has caught up with every write acknowledged before: a read sees the writes of other
nodes that completed before it started, as with etcd.

kazoo's blocking calls wait as long as the connection lives, so every call here goes through
the ``_async`` variants and waits at most ``retry_timeout``. A SUSPENDED connection (lost, the
session perhaps still alive) is waited for until then, and StoreUnavailableError is raised.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

import attrs
from kazoo.exceptions import (
    AuthFailedError,
    BadVersionError,
    ConnectionLoss,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    RolledBackError,
    SessionExpiredError,
    UnimplementedError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.states import KazooState
from kazoo.retry import KazooRetry
from kazoo.security import OPEN_ACL_UNSAFE, make_digest_acl

from hacore.backends.consensus import (
    CONFIG_KEY,
    LEADER_KEY,
    MEMBERS_PREFIX,
    ConsensusBackend,
    Watcher,
)
from hacore.backends.records import ClusterView, KeyValue, Leader, Lease, Member, TlsFiles
from hacore.errors import ConfigError, HacoreError, StoreUnavailableError
from hacore_plugins.zookeeper.client import PersistentWatchClient
from hacore_plugins.zookeeper.keys import key_of, node_name
from hacore_plugins.zookeeper.settings import ZooKeeperSettings, parse_settings
from hacore_plugins.zookeeper.tls import kazoo_options
from hacore_plugins.zookeeper.watch import Snapshot, WatchHub, ZooKeeperWatcher

log = logging.getLogger(__name__)

T = TypeVar("T")
ROOT = "/hacore"
#: the granted session timeout may differ from ``ttl`` by this much (servers round to ms)
TIMEOUT_TOLERANCE = 0.05
_LOST = (ConnectionLoss, SessionExpiredError)


@attrs.frozen
class _LeaseHandle:
    session_id: int


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def remaining(self) -> float:
        return max(self.end - time.monotonic(), 0.0)

    def expired(self) -> bool:
        return time.monotonic() >= self.end


class ZooKeeperConsensus(ConsensusBackend):
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
            settings,
            namespace=namespace,
            node_name=node_name,
            ttl=ttl,
            retry_timeout=retry_timeout,
        )
        if not namespace or "/" in namespace or namespace in (".", ".."):
            raise ConfigError(f"namespace {namespace!r} must be a non-empty name without '/'")
        self.tls = tls
        self._cfg: ZooKeeperSettings = parse_settings(settings, tls)
        self._root = f"{ROOT}/{namespace}"
        self._acl = (
            [make_digest_acl(self._cfg.user, self._cfg.password, all=True)]
            if self._cfg.user and self._cfg.password
            else None
        )
        self._lock = threading.Lock()
        self._root_ready = False
        self._hub = WatchHub(self._root)
        self._session: int | None = None
        self._dead_sessions: set[int] = set()
        #: the session this node's member record is bound to
        self._member_session: int | None = None
        # Connecting starts now, in the background, so the first call rarely waits for it.
        self._client: PersistentWatchClient | None = self._new_client()
        self._client.start_async()

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        parse_settings(settings)

    # -- connection --------------------------------------------------------------------------

    def _new_client(self) -> PersistentWatchClient:
        auth = [("digest", f"{self._cfg.user}:{self._cfg.password}")] if self._acl else None
        step = min(0.5, max(self.ttl / 8, 0.05))
        client = PersistentWatchClient(
            **kazoo_options(self._cfg.tls),
            hosts=self._cfg.connect_string,
            timeout=self.ttl,
            auth_data=auth,
            default_acl=self._acl,
            connection_retry=KazooRetry(
                max_tries=-1, delay=0.05, backoff=1.5, max_jitter=0.2, max_delay=step
            ),
            command_retry=KazooRetry(max_tries=0),
        )
        client.persistent_callback = self._hub.on_event
        client.add_listener(self._on_state)
        return client

    def _replace(self, dead: PersistentWatchClient) -> PersistentWatchClient:
        """A new client for one whose connection thread died: its session is lost, as after
        an expiry (the next keepalive says so), and the new one connects afresh."""
        log.warning(
            "%s: the ZooKeeper client's connection thread ended on an error it does not "
            "handle; starting a new client",
            self.node_name,
        )
        dead.persistent_callback = None
        dead.remove_listener(self._on_state)
        threading.Thread(target=_stop_client, args=(dead,), daemon=True).start()
        client = self._new_client()
        client.start_async()
        return client

    def _on_state(self, state: str) -> None:
        """Connection thread: must not block."""
        client = self._client
        if client is None:
            return
        if state == KazooState.LOST:
            if self._session is not None:
                self._dead_sessions.add(self._session)
            return
        if state != KazooState.CONNECTED:
            return
        current = client.session_id
        if self._session is not None and current != self._session:
            self._dead_sessions.add(self._session)
        self._session = current
        if self._hub:
            # The server forgot our watch with the old connection: add it again, then replay.
            client.sync_async(self._root)
            client.add_recursive_watch_async(self._root, on_added=self._hub.resync_all)

    def _connected(self, deadline: _Deadline) -> PersistentWatchClient:
        with self._lock:
            client = self._client
            if client is not None and client.loop_ended:
                client = self._client = self._replace(client)
        if client is None:
            raise HacoreError(f"the ZooKeeper backend of {self.node_name} is closed")
        if not client.connected and not client._live.wait(deadline.remaining()):
            raise StoreUnavailableError(
                f"no ZooKeeper server of {self._cfg.connect_string} answered within "
                f"{self.retry_timeout:g}s"
            )
        self._check_timeout(client)
        if not self._root_ready:
            self._ensure_root(client, deadline)
        return client

    def _check_timeout(self, client: PersistentWatchClient) -> None:
        granted = client.negotiated_timeout
        if granted is None or abs(granted - self.ttl) <= TIMEOUT_TOLERANCE * self.ttl:
            return
        bound = "minSessionTimeout" if granted > self.ttl else "maxSessionTimeout"
        raise ConfigError(
            f"ZooKeeper granted a {granted:g}s session instead of ttl {self.ttl:g}s: the "
            f"servers' {bound} is {granted:g}s (limits are minSessionTimeout..maxSessionTimeout,"
            f" by default 2..20 x tickTime); change ttl or the servers' limits"
        )

    def _ensure_root(self, client: PersistentWatchClient, deadline: _Deadline) -> None:
        # Usually there: a local read. Else both creates at once (writes need the quorum).
        if self._wait(client.exists_async(self._root), deadline, "a read of " + self._root):
            self._root_ready = True
            return
        creates = [
            client.create_async(path, b"", acl=acl)
            for path, acl in ((ROOT, OPEN_ACL_UNSAFE), (self._root, self._acl))
        ]
        for result in creates:
            with contextlib.suppress(NodeExistsError):
                self._wait(result, deadline, "creating " + self._root)
        self._root_ready = True

    def _wait(self, result: Any, deadline: _Deadline, what: str) -> Any:
        try:
            return result.get(timeout=max(deadline.remaining(), 0.001))
        except KazooTimeoutError:
            raise StoreUnavailableError(
                f"ZooKeeper did not answer {what} within {self.retry_timeout:g}s"
            ) from None
        except NoAuthError:
            raise ConfigError(
                f"ZooKeeper refused {what} under {self._root}: check the zookeeper auth setting"
            ) from None
        except AuthFailedError:
            raise ConfigError("ZooKeeper rejected the zookeeper auth credentials") from None
        except UnimplementedError:
            raise ConfigError(
                f"ZooKeeper does not implement {what}: hacore needs ZooKeeper 3.6 or newer"
            ) from None

    def _create(
        self,
        client: PersistentWatchClient,
        path: str,
        value: bytes,
        deadline: _Deadline,
        what: str,
        **options: Any,
    ) -> Any:
        try:
            return self._wait(client.create_async(path, value, **options), deadline, what)
        except NoNodeError:
            # The namespace znode was deleted under us (by hand): make it again, once.
            self._ensure_root(client, deadline)
            return self._wait(client.create_async(path, value, **options), deadline, what)

    def _retrying(self, what: str, attempt: Callable[[PersistentWatchClient, _Deadline], T]) -> T:
        """Run an idempotent ``attempt`` again after a lost connection, until the deadline."""
        deadline = _Deadline(self.retry_timeout)
        while True:
            client = self._connected(deadline)
            try:
                return attempt(client, deadline)
            except _LOST as exc:
                if deadline.expired():
                    raise StoreUnavailableError(
                        f"ZooKeeper connection lost during {what} for {self.retry_timeout:g}s"
                    ) from exc
                time.sleep(min(0.02, deadline.remaining()))

    def _path(self, key: str) -> str:
        return f"{self._root}/{node_name(key)}"

    # -- session -----------------------------------------------------------------------------

    def keepalive(self) -> bool:
        def attempt(client: PersistentWatchClient, deadline: _Deadline) -> int | None:
            self._wait(client.exists_async(self._root), deadline, "a keepalive")
            return client.session_id

        session = self._retrying("a keepalive", attempt)
        previous, self._member_session = self._member_session, session
        return previous is None or previous == session

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        self._hub.close_all()
        if client is None:
            return
        client.persistent_callback = None
        # kazoo's stop() waits for the server's answer to "close session", without a bound.
        stopper = threading.Thread(target=_stop_client, args=(client,), daemon=True)
        stopper.start()
        stopper.join(max(self.retry_timeout, 1.0))

    # -- leadership --------------------------------------------------------------------------

    def _lease(self, stat: Any, asked_at: float) -> Lease:
        return Lease(
            holder=self.node_name,
            token=stat.czxid,
            ttl=self.ttl,
            acquired_at=asked_at,
            handle=_LeaseHandle(stat.ephemeralOwner),
        )

    def campaign(self) -> Lease | None:
        path = self._path(LEADER_KEY)

        def attempt(client: PersistentWatchClient, deadline: _Deadline) -> Lease | None:
            while True:
                # Before the request, so a deadline counted from it errs on the safe side.
                asked_at = time.monotonic()
                try:
                    _, stat = self._create(
                        client,
                        path,
                        self.node_name.encode(),
                        deadline,
                        "a campaign",
                        ephemeral=True,
                        include_data=True,
                    )
                    return self._lease(stat, asked_at)
                except NodeExistsError:
                    pass
                try:
                    _, stat = self._wait(client.get_async(path), deadline, "a campaign")
                except NoNodeError:
                    continue
                # Ours when campaigning again, or when an earlier create timed out here.
                if stat.ephemeralOwner != client.session_id:
                    return None
                return self._lease(stat, asked_at)

        return self._retrying("a campaign", attempt)

    def renew(self, lease: Lease) -> bool:
        handle = lease.handle
        if not isinstance(handle, _LeaseHandle) or handle.session_id in self._dead_sessions:
            return False
        path = self._path(LEADER_KEY)

        def attempt(client: PersistentWatchClient, deadline: _Deadline) -> bool:
            if client.session_id != handle.session_id:
                return False
            client.sync_async(path)
            stat = self._wait(client.exists_async(path), deadline, "a lease renewal")
            return bool(
                stat is not None
                and stat.czxid == lease.token
                and stat.ephemeralOwner == handle.session_id
            )

        try:
            return self._retrying("a lease renewal", attempt)
        except StoreUnavailableError:
            if handle.session_id in self._dead_sessions:
                return False
            raise

    def resign(self, lease: Lease) -> None:
        handle = lease.handle
        if not isinstance(handle, _LeaseHandle):
            return
        path = self._path(LEADER_KEY)

        def attempt(client: PersistentWatchClient, deadline: _Deadline) -> None:
            stat = self._wait(client.exists_async(path), deadline, "a resignation")
            if stat is None or stat.czxid != lease.token:
                return
            if stat.ephemeralOwner != handle.session_id:
                return
            with contextlib.suppress(NoNodeError, BadVersionError):
                self._wait(client.delete_async(path, stat.version), deadline, "a resignation")

        self._retrying("a resignation", attempt)

    def leader(self) -> Leader | None:
        found = self._read_key(LEADER_KEY)
        if found is None:
            return None
        value, stat = found
        return Leader(name=value.decode(errors="replace"), token=stat.czxid)

    # -- members -----------------------------------------------------------------------------

    def publish_member(self, member: Member) -> None:
        path = self._path(MEMBERS_PREFIX + member.name)
        data = member.to_bytes()

        def attempt(client: PersistentWatchClient, deadline: _Deadline) -> int:
            while not deadline.expired():
                try:
                    _, stat = self._create(
                        client,
                        path,
                        data,
                        deadline,
                        "publishing the member record",
                        ephemeral=True,
                        include_data=True,
                    )
                    return int(stat.ephemeralOwner)
                except NodeExistsError:
                    pass
                try:
                    _, stat = self._wait(client.get_async(path), deadline, "a member read")
                    if stat.ephemeralOwner == client.session_id:
                        self._wait(
                            client.set_async(path, data, stat.version), deadline, "a member write"
                        )
                        return int(stat.ephemeralOwner)
                    # A record left by an earlier session of this node (or a namesake): rebind.
                    txn = client.transaction()
                    txn.delete(path, stat.version)
                    txn.create(path, data, acl=self._acl, ephemeral=True)
                    results = self._wait(txn.commit_async(), deadline, "a member write")
                    if not any(isinstance(r, Exception) for r in results):
                        return int(client.session_id or 0)
                except (NoNodeError, BadVersionError, RolledBackError):
                    continue
            raise StoreUnavailableError(
                f"could not publish the member record of {member.name} within "
                f"{self.retry_timeout:g}s"
            )

        self._member_session = self._retrying("publishing the member record", attempt)

    def members(self) -> tuple[Member, ...]:
        return self._members_of(self._read_prefix(MEMBERS_PREFIX))

    def _members_of(self, snapshot: Snapshot) -> tuple[Member, ...]:
        members = []
        for key, (value, _) in snapshot.items():
            try:
                members.append(Member.from_bytes(value))
            except (ValueError, TypeError) as exc:
                log.warning("ignoring the unreadable member record %s: %s", key, exc)
        return tuple(sorted(members, key=lambda m: m.name))

    # -- versioned keys ----------------------------------------------------------------------

    def _read_key(self, key: str) -> tuple[bytes, Any] | None:
        path = self._path(key)

        def attempt(client: PersistentWatchClient, deadline: _Deadline) -> Any:
            client.sync_async(self._root)
            try:
                return self._wait(client.get_async(path), deadline, f"reading {key}")
            except NoNodeError:
                return None

        found = self._retrying(f"reading {key}", attempt)
        return None if found is None else (found[0] or b"", found[1])

    def _read_prefix(self, prefix: str) -> Snapshot:
        return self._read_matching(lambda key: key.startswith(prefix), f"reading {prefix}*")

    def _read_matching(self, wanted: Callable[[str], bool], what: str) -> Snapshot:
        """The keys ``wanted`` selects, read with pipelined requests (two round trips)."""

        def attempt(client: PersistentWatchClient, deadline: _Deadline) -> Snapshot:
            client.sync_async(self._root)
            names = self._wait(client.get_children_async(self._root), deadline, what)
            keys = [k for k in map(key_of, names) if k is not None and wanted(k)]
            pending = [(key, client.get_async(f"{self._root}/{node_name(key)}")) for key in keys]
            found: Snapshot = {}
            for key, result in pending:
                try:
                    value, stat = self._wait(result, deadline, what)
                except NoNodeError:
                    continue
                found[key] = (value or b"", stat)
            return found

        return self._retrying(what, attempt)

    def get(self, key: str) -> KeyValue | None:
        found = self._read_key(key)
        if found is None:
            return None
        value, stat = found
        return KeyValue(key=key, value=value, version=stat.version + 1)

    def get_prefix(self, prefix: str) -> tuple[KeyValue, ...]:
        snapshot = self._read_prefix(prefix)
        return tuple(
            KeyValue(key=key, value=value, version=stat.version + 1)
            for key, (value, stat) in sorted(snapshot.items())
        )

    def put(self, key: str, value: bytes, *, expect_version: int | None = None) -> bool:
        path = self._path(key)
        what = f"writing {key}"
        if expect_version is None:

            def attempt(client: PersistentWatchClient, deadline: _Deadline) -> bool:
                while True:
                    try:
                        self._wait(client.set_async(path, value), deadline, what)
                        return True
                    except NoNodeError:
                        pass
                    try:
                        self._create(client, path, value, deadline, what)
                        return True
                    except NodeExistsError:
                        continue

            return self._retrying(what, attempt)
        # A conditional write whose answer was lost may have been applied: never repeat it.
        deadline = _Deadline(self.retry_timeout)
        client = self._connected(deadline)
        try:
            if expect_version == 0:
                self._create(client, path, value, deadline, what)
            else:
                self._wait(client.set_async(path, value, expect_version - 1), deadline, what)
        except (NodeExistsError, NoNodeError, BadVersionError):
            return False
        except _LOST as exc:
            raise StoreUnavailableError(f"ZooKeeper connection lost during {what}") from exc
        return True

    def delete(self, key: str, *, expect_version: int | None = None) -> bool:
        if expect_version == 0:
            return False
        path = self._path(key)
        what = f"deleting {key}"
        deadline = _Deadline(self.retry_timeout)
        client = self._connected(deadline)
        version = -1 if expect_version is None else expect_version - 1
        try:
            self._wait(client.delete_async(path, version), deadline, what)
        except (NoNodeError, BadVersionError):
            return False
        except _LOST as exc:
            raise StoreUnavailableError(f"ZooKeeper connection lost during {what}") from exc
        return True

    def watch(self, prefix: str) -> Watcher:
        watcher = ZooKeeperWatcher(
            prefix,
            read_key=self._read_key,
            read_prefix=self._read_prefix,
            on_close=self._hub.remove,
        )
        self._hub.add(watcher)

        def attempt(client: PersistentWatchClient, deadline: _Deadline) -> None:
            # The sync makes the server catch up first, so earlier changes are not reported.
            client.sync_async(self._root)
            added = client.add_recursive_watch_async(
                self._root, on_added=lambda: self._hub.activate(watcher)
            )
            self._wait(added, deadline, "adding a watch")

        try:
            self._retrying("adding a watch", attempt)
            watcher.remember(self._read_prefix(prefix))
        except BaseException:
            watcher.close()
            raise
        return watcher

    # -- snapshot ----------------------------------------------------------------------------

    def view(self) -> ClusterView:
        snapshot = self._read_matching(
            lambda key: key in (LEADER_KEY, CONFIG_KEY) or key.startswith(MEMBERS_PREFIX),
            "reading the cluster view",
        )
        leader = snapshot.get(LEADER_KEY)
        config = snapshot.get(CONFIG_KEY)
        return ClusterView(
            leader=None
            if leader is None
            else Leader(name=leader[0].decode(errors="replace"), token=leader[1].czxid),
            members=self._members_of(
                {k: v for k, v in snapshot.items() if k.startswith(MEMBERS_PREFIX)}
            ),
            config=None
            if config is None
            else KeyValue(key=CONFIG_KEY, value=config[0], version=config[1].version + 1),
        )


def _stop_client(client: PersistentWatchClient) -> None:
    try:
        client.stop()
        client.close()
    except Exception:
        log.debug("closing the ZooKeeper client failed", exc_info=True)
