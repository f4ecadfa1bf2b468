"""This node as its loop last saw it: the record the loop publishes once per iteration.

The API serves its probes and ``/metrics`` from the latest one, and the cluster view's member
entries are rendered from it (:func:`member_json`). It belongs to the agent, which builds it;
the API only reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs

from hacore.agent.counters import EventCounts
from hacore.agent.supervise import ServerStatus
from hacore.agent.vocabulary import Decision, NodeState, Observation
from hacore.backends.filesync import SyncState
from hacore.backends.health import CheckResult
from hacore.backends.records import Member
from hacore.backends.replication import ReplicationStatus


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
    ttl: float = 6.0
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
    #: Maintenance mode as this node last saw it (``by``, ``at``, ``reason``); None: not paused.
    paused: Mapping[str, Any] | None = attrs.field(default=None, converter=_frozen_optional)
    #: The cluster-wide settings this node runs (hacore/agent/settings_sync.py): the store
    #: revision applied and the keys that wait for the agent's restart.
    settings: Mapping[str, Any] | None = attrs.field(default=None, converter=_frozen_optional)

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
        "extra": member.published_extra(),
    }
    if member.name == snap.node_name:
        data["checks"] = checks_json(snap.checks)
        # the read role's, not the probes' nor /metrics' (docs/security.md, finding 8)
        data["lease_token"] = snap.lease_token
        data["failsafe"] = None if snap.failsafe is None else dict(snap.failsafe)
        data["minority"] = None if snap.minority is None else dict(snap.minority)
        data["settings"] = None if snap.settings is None else dict(snap.settings)
        data["pending_restart"] = (
            None if snap.replication is None else snap.replication.pending_restart
        )
    return data


def checks_json(checks: Mapping[str, CheckResult]) -> dict[str, dict[str, Any]]:
    return {name: {"ok": result.ok, "detail": result.detail} for name, result in checks.items()}
