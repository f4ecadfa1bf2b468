"""What the REST API needs from the agent: one cached snapshot, and the cluster operations.

The agent's loop builds a :class:`NodeSnapshot` once per iteration and the API serves every
probe (``/status``, ``/health``...) and ``/metrics`` from the latest one, so a load balancer
hammering ``/status`` never causes a store round trip and never waits for the loop.

The operations (start, join ticket, remove, switchover) may be slow and touch the store; they
raise :mod:`hacore.api.errors` classes (or :class:`~hacore.errors.HacoreError` subclasses mapped
by :func:`hacore.api.errors.status_for`) whose message the user sees as it is.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Protocol

import attrs

from hacore.agent.counters import EventCounts
from hacore.agent.state import Decision, NodeState, Observation
from hacore.agent.supervise import ServerStatus
from hacore.filesync import SyncState
from hacore.health import CheckResult
from hacore.records import Member
from hacore.replication import ReplicationStatus


def _frozen_checks(value: Mapping[str, CheckResult]) -> Mapping[str, CheckResult]:
    return MappingProxyType(dict(value))


def _frozen_optional(value: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    return None if value is None else MappingProxyType(dict(value))


@attrs.frozen
class NodeSnapshot:
    """This node as its loop last saw it. Times are this node's ``time.monotonic()``."""

    node_name: str
    version: str
    state: NodeState
    #: Holds the lease AND the database is writable AND the active-only services are up: the
    #: one condition under which a load balancer may send traffic here.
    is_active: bool = False
    #: A standby whose database streams from the active right now.
    standby_streaming: bool = False
    healthy: bool = False
    checks: Mapping[str, CheckResult] = attrs.field(factory=dict, converter=_frozen_checks)
    replication: ReplicationStatus | None = None
    #: The fencing token of the lease this node holds (None when it holds none).
    lease_token: int | None = None
    #: Who holds the leader key, as last read from the store.
    leader: str | None = None
    #: Every node the cluster knows; a node whose member record vanished (dead) is listed with
    #: role ``unknown`` and ``healthy`` false, so ``nodes list`` still shows it.
    members: tuple[Member, ...] = ()
    #: The store answered this loop.
    store_ok: bool = False
    #: When the loop last completed; None before the first one.
    last_loop_at: float | None = None
    loop_wait: float = 1.0
    ttl: float = 5.0
    #: The last decision's reason, for people.
    reason: str = ""
    #: The servers the agent runs and supervises (managed store member, file sync engine).
    servers: tuple[ServerStatus, ...] = ()
    #: Failsafe mode as this node last saw it (None when ``failsafe_mode`` is off): whether
    #: the active holds on its members' confirmations, and any promise this node gave.
    failsafe: Mapping[str, Any] | None = attrs.field(default=None, converter=_frozen_optional)
    #: Minority mode as this node last saw it (None when ``minority_mode`` is off): whether
    #: it stays active cut off from the store's majority (hacore/agent/minority.py).
    minority: Mapping[str, Any] | None = attrs.field(default=None, converter=_frozen_optional)
    #: The loop's last observation and decision, for ``cluster explain`` (hacore/agent/explain.py).
    observation: Observation | None = None
    decision: Decision | None = None
    #: What happened since the agent started (hacore/agent/counters.py), for ``/metrics``.
    events: EventCounts = attrs.field(factory=EventCounts)
    #: When the store last answered a call (None: never since the agent started).
    store_reached_at: float | None = None
    #: The file sync's last state on this node (None without file sync, or not read yet).
    files: SyncState | None = None

    def loop_age(self, now: float) -> float | None:
        return None if self.last_loop_at is None else max(0.0, now - self.last_loop_at)

    def alive(self, now: float) -> bool:
        """The loop ran within one ``ttl``: past that, it is stuck and the lease is gone."""
        age = self.loop_age(now)
        return age is not None and age <= self.ttl

    @property
    def ready(self) -> bool:
        """Able to serve its role: the active, or a standby that streams."""
        return self.is_active or self.standby_streaming

    def member(self, name: str) -> Member | None:
        return next((m for m in self.members if m.name == name), None)


class AgentFacade(Protocol):
    """The agent runtime as the API server sees it. Every method is called from many request
    threads at once, so implementations must be thread-safe."""

    def snapshot(self) -> NodeSnapshot:
        """The loop's latest snapshot; must return at once (no store or database call)."""
        ...

    def cluster(self) -> dict[str, Any]:
        """The cluster view as a JSON-able dict: name, leader, members, store members..."""
        ...

    def start_cluster(self, options: dict[str, Any]) -> dict[str, Any]:
        """``cluster start`` on this node; ConflictError when a cluster already exists or the
        database is not empty."""
        ...

    def join_ticket(self, request: dict[str, Any]) -> dict[str, Any]:
        """On the active: check a joining node (name unique, same version, empty) and answer
        what it needs to join. NotActiveError on another node, ConflictError on a refusal;
        a refused request changes nothing."""
        ...

    def remove_node(self, name: str) -> dict[str, Any]:
        """On the active: remove a standby. NotFoundError for an unknown name, ConflictError for
        the active itself."""
        ...

    def switchover(self, to: str | None) -> dict[str, Any]:
        """Hand the active role over (to ``to``, or the best standby). NotFoundError for an
        unknown target, ConflictError when no standby can take over."""
        ...


def probe_json(snap: NodeSnapshot, now: float) -> dict[str, Any]:
    """The small body of the probe endpoints (``/status``...): enough to see why a node
    answered 503 without another request."""
    repl = snap.replication
    age = snap.loop_age(now)
    return {
        "node": snap.node_name,
        "state": snap.state.value,
        "active": snap.is_active,
        "standby_streaming": snap.standby_streaming,
        "healthy": snap.healthy,
        "leader": snap.leader,
        "lease_token": snap.lease_token,
        "position": repl.position if repl else None,
        "timeline": repl.timeline if repl else None,
        "loop_age": None if age is None else round(age, 3),
        "version": snap.version,
        "failsafe": None if snap.failsafe is None else dict(snap.failsafe),
        "minority": None if snap.minority is None else dict(snap.minority),
    }


def member_json(member: Member, snap: NodeSnapshot) -> dict[str, Any]:
    """A member record for ``/nodes``, with its lag behind the leader when both are known."""
    leader = snap.member(snap.leader) if snap.leader else None
    lag = None
    if leader is not None and leader.position is not None and member.position is not None:
        lag = max(0, leader.position - member.position)
    data: dict[str, Any] = {
        "name": member.name,
        "role": member.role.value,
        "active": member.name == snap.leader,
        "healthy": member.healthy,
        "host": member.host,
        "api_url": member.api_url,
        "version": member.version,
        "position": member.position,
        "timeline": member.timeline,
        "lag_bytes": lag,
        "checks": dict(member.checks),
        "extra": dict(member.extra),
    }
    if member.name == snap.node_name:
        data["checks"] = checks_json(snap.checks)
        data["failsafe"] = None if snap.failsafe is None else dict(snap.failsafe)
        data["minority"] = None if snap.minority is None else dict(snap.minority)
    return data


def checks_json(checks: Mapping[str, CheckResult]) -> dict[str, dict[str, Any]]:
    return {name: {"ok": result.ok, "detail": result.detail} for name, result in checks.items()}
