"""The consensus family: who is active, who is a member, and the cluster's small shared state.

The store is the single source of truth for leadership. A backend wraps one client session
to the store (an etcd lease, a ZooKeeper session, a Consul session) whose TTL is fixed when the
backend is made: the leader key and this node's member record are both bound to it, so both
vanish together when the node stops renewing.

Keys are relative to the backend's namespace (``leader``, ``members/<name>``, ``config``...);
each backend maps them under its own root (``/hacore/<namespace>/``). Every call either answers
within ``retry_timeout`` or raises :class:`~hacore.errors.StoreUnavailableError`; none hangs.

Backends are checked by the contract suite in :mod:`hacore.testing.contract`.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

from hacore.backends.declarations import Declarations
from hacore.backends.records import (
    ClusterView,
    KeyValue,
    Leader,
    Lease,
    Member,
    StoreMember,
    WatchEvent,
)

LEADER_KEY = "leader"
MEMBERS_PREFIX = "members/"
CONFIG_KEY = "config"


class Watcher(abc.ABC):
    """Events under one prefix, in the order the store applied them.

    The watch is in force when :meth:`ConsensusBackend.watch` returns: every change made after
    that is delivered.
    """

    @abc.abstractmethod
    def get(self, timeout: float) -> WatchEvent | None:
        """Next event, or None when nothing changed within ``timeout`` seconds."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop watching; idempotent."""

    def __enter__(self) -> Watcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ConsensusBackend(Declarations, abc.ABC):
    """One node's session with the consensus store.

    ``settings`` is the backend's own section of the configuration (endpoints, credentials);
    :meth:`validate_settings` checks it before any connection is tried. With
    ``accepts_tls`` it also takes ``tls``: the node's certificate and the cluster CA, given
    only when hacore runs the store (an external store's TLS is in its settings).
    """

    #: Optional features: ``"managed_servers"`` when a :class:`ManagedStore` is registered
    #: under the same name; ``"ordered_watch"`` when every change (not only the latest value)
    #: is delivered.
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
        self.settings = dict(settings)
        self.namespace = namespace
        self.node_name = node_name
        self.ttl = ttl
        self.retry_timeout = retry_timeout

    # -- session ---------------------------------------------------------------------------

    @abc.abstractmethod
    def keepalive(self) -> bool:
        """Refresh this node's session. False when it had already expired.

        After an expiry the next :meth:`campaign` or :meth:`publish_member` opens a new
        session; the member record must then be published again.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """End the session at once: the member record and any leader key vanish now."""

    # -- leadership ------------------------------------------------------------------------

    @abc.abstractmethod
    def campaign(self) -> Lease | None:
        """Atomically create the leader key for this node, bound to its session.

        Returns the lease, with a fencing token greater than every earlier leadership's, or
        None when another node holds the key. Campaigning while already leader returns the
        current lease.
        """

    @abc.abstractmethod
    def renew(self, lease: Lease) -> bool:
        """Refresh the session and verify the leader key is still this lease's.

        False once leadership is lost (key gone or held by someone else). Raises
        :class:`~hacore.errors.StoreUnavailableError` when the store cannot tell within
        ``retry_timeout``: the caller must then treat leadership as uncertain.
        """

    @abc.abstractmethod
    def resign(self, lease: Lease) -> None:
        """Delete the leader key if it is still this lease's, so a standby need not wait a TTL."""

    @abc.abstractmethod
    def leader(self) -> Leader | None:
        """The current holder of the leader key, if any."""

    # -- members ---------------------------------------------------------------------------

    @abc.abstractmethod
    def publish_member(self, member: Member) -> None:
        """Write this node's member record under ``members/<name>``, bound to its session."""

    @abc.abstractmethod
    def members(self) -> tuple[Member, ...]:
        """Every published member record, sorted by name."""

    # -- versioned keys --------------------------------------------------------------------

    @abc.abstractmethod
    def get(self, key: str) -> KeyValue | None:
        """One key, or None."""

    @abc.abstractmethod
    def get_prefix(self, prefix: str) -> tuple[KeyValue, ...]:
        """Every key under ``prefix``, sorted by key."""

    @abc.abstractmethod
    def put(self, key: str, value: bytes, *, expect_version: int | None = None) -> bool:
        """Write a persistent key.

        ``expect_version`` None writes unconditionally; 0 writes only if the key does not
        exist; any other value writes only if the key is at that version. False when the
        condition failed.
        """

    @abc.abstractmethod
    def delete(self, key: str, *, expect_version: int | None = None) -> bool:
        """Delete a key (conditionally, as for :meth:`put`). False when nothing was deleted."""

    @abc.abstractmethod
    def watch(self, prefix: str) -> Watcher:
        """Start watching every key under ``prefix`` (``""`` for the whole namespace)."""

    # -- snapshot --------------------------------------------------------------------------

    def view(self) -> ClusterView:
        """One snapshot for the agent loop; backends may override it with a single read."""
        return ClusterView(
            leader=self.leader(), members=self.members(), config=self.get(CONFIG_KEY)
        )

    def __enter__(self) -> ConsensusBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ManagedStore(Declarations, abc.ABC):
    """This node's own server of the store, for clusters where hacore runs the store itself.

    The join protocol crosses two nodes::

        joiner:  me = store.identity()                  # not running yet
        active:  spec = store.add_member(me)            # store knows the newcomer
        joiner:  store.join(spec)                       # starts, catches up, becomes a voter
        (failure on the joiner) active: store.remove_member(me.name)

    ``spec`` is a JSON-serialisable mapping, since it travels over the agent API.
    ``settings`` carries the ports (``client_port``, ``peer_port``, and backend-specific ones);
    :meth:`validate_settings` checks them when the configuration is loaded. With
    ``accepts_tls`` the server takes the node's ``tls`` material for its client and peer ports.
    """

    def __init__(
        self, settings: Mapping[str, Any], *, name: str, host: str, data_dir: Path
    ) -> None:
        self.settings = dict(settings)
        self.name = name
        self.host = host
        self.data_dir = Path(data_dir)

    @abc.abstractmethod
    def identity(self) -> StoreMember:
        """How the other servers reach this node's server."""

    @abc.abstractmethod
    def bootstrap(self) -> StoreMember:
        """Create and start a new one-member store here. Refuses a non-empty data directory."""

    @abc.abstractmethod
    def add_member(self, member: StoreMember) -> dict[str, Any]:
        """Tell the running store about a newcomer; returns what the newcomer needs to join."""

    @abc.abstractmethod
    def join(self, spec: Mapping[str, Any]) -> StoreMember:
        """Start this node's server into an existing store and wait until it is a voter."""

    @abc.abstractmethod
    def remove_member(self, name: str) -> None:
        """Remove a server from the store (any member may call this). Idempotent."""

    @abc.abstractmethod
    def members(self) -> tuple[StoreMember, ...]:
        """The store's servers as the store itself reports them."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start this node's server from its existing data directory (after a restart)."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop this node's server; idempotent."""

    @abc.abstractmethod
    def client_settings(self) -> dict[str, Any]:
        """The consensus ``settings`` a :class:`ConsensusBackend` needs to use this store."""

    def is_running(self) -> bool:
        return False

    #: True: :meth:`move_leadership_off` can hand the store's leadership to another server
    #: (etcd can; ZooKeeper has no such operation)
    moves_leadership: ClassVar[bool] = False

    def move_leadership_off(self) -> str | None:
        """If this node's server leads the store, hand the leadership to a healthy voter that
        is caught up; its name, or None when nothing was moved (not the leader, no such voter).

        The agent calls it while its node is active (declare ``moves_leadership``): when a
        whole host dies the store must not lose its leader too, or it first elects one and
        then (etcd's lessor) extends every lease by a full ttl, so the dead active's lease
        outlives it by the election as well. Must return within a few seconds and never
        leave the store without a leader for longer than one transfer."""
        return None
