"""The cluster operations the agent offers its API: each is a few store writes.

They run on the caller's thread (an API request), not the loop's, and raise the
:mod:`hacore.api.errors` classes so the CLI shows the reason as it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from hacore.agent import keys
from hacore.agent.companions import Companions
from hacore.agent.state import ActiveStatus
from hacore.api.errors import ConflictError, NotFoundError, UnavailableError
from hacore.consensus import ConsensusBackend
from hacore.errors import HacoreError
from hacore.records import NodeRole
from hacore.replication import ReplicationBackend, ReplicationSource


def request_switchover(
    consensus: ConsensusBackend, to: str | None, *, timeout: float
) -> keys.StoredSwitchover:
    """Write a switchover request away from the current leader (to ``to``, or the best one).

    A pending request from the same leader younger than ``timeout`` is a conflict; an older
    or stale one is replaced.
    """
    leader = consensus.leader()
    if leader is None:
        raise UnavailableError("there is no active node to switch over from")
    if to == leader.name:
        raise ConflictError(f"{to} is already the active node")
    if to is not None and consensus.get(keys.MEMBERS_PREFIX + to) is None:
        raise NotFoundError(f'no live node named "{to}" in this cluster')
    current = consensus.get(keys.SWITCHOVER_KEY)
    if current is not None:
        try:
            pending: keys.StoredSwitchover | None = keys.StoredSwitchover.decode(current.value)
        except HacoreError:
            pending = None
        if (
            pending is not None
            and pending.from_node == leader.name
            and time.time() - pending.requested_at < timeout
        ):
            raise ConflictError(f"a switchover away from {leader.name} is already pending")
    request = keys.StoredSwitchover(from_node=leader.name, to_node=to)
    version = current.version if current is not None else 0
    if not consensus.put(keys.SWITCHOVER_KEY, request.encode(), expect_version=version):
        raise ConflictError("another switchover request was written at the same time")
    return request


def record_bootstrap(consensus: ConsensusBackend, replication: ReplicationBackend) -> None:
    """Name the node that just bootstrapped the database as the last active (status key)."""
    db = replication.status()
    raw = keys.encode_status(ActiveStatus(replication.node_name, db.position, db.timeline))
    if not consensus.put(keys.STATUS_KEY, raw, expect_version=0):
        raise ConflictError("this cluster already has a status key: it was started before")


def mark_removed(consensus: ConsensusBackend, name: str, *, by: str) -> None:
    leader = consensus.leader()
    if leader is not None and leader.name == name:
        raise ConflictError(f"{name} is the active node; switch over before removing it")
    consensus.put(keys.removed_key(name), keys.Removal(by=by).encode())


def request_failover(
    consensus: ConsensusBackend, to: str, *, dry_run: bool = False
) -> dict[str, Any]:
    """``cluster failover --to``: what promoting ``to`` would lose, and (unless ``dry_run``)
    the manual failover request that lets it campaign (rule M1 of decide).

    Refused while a node holds the lease: a live active is handed over by a switchover,
    which loses nothing. What may be lost is the distance between the last position the
    active wrote to the status key and the candidate's own: the writes in between were
    acknowledged by the old active and are not on the candidate.
    """
    leader = consensus.leader()
    if leader is not None:
        raise ConflictError(
            f"{leader.name} holds the lease: a failover is for a cluster with no active node; "
            f"hand over with hacore cluster switchover --to {to}"
        )
    removed = keys.removed_names(tuple(kv.key for kv in consensus.get_prefix(keys.REMOVED_PREFIX)))
    if to in removed:
        raise ConflictError(f"{to} was removed from the cluster")
    target = next((m for m in consensus.members() if m.name == to), None)
    if target is None:
        raise NotFoundError(f'no live node named "{to}" in this cluster (is its agent running?)')
    if target.role in (NodeRole.REMOVED, NodeRole.CLONING) or target.position is None:
        raise ConflictError(
            f"{to} cannot be promoted: it is {target.role.value} and its database position is "
            f"{'unknown' if target.position is None else target.position}"
        )
    raw = consensus.get(keys.STATUS_KEY)
    if raw is None:
        raise ConflictError("no active was ever recorded in this cluster: nothing to fail over")
    last = keys.decode_status(raw.value)
    lost = None if last.position is None else max(0, last.position - target.position)
    preview: dict[str, Any] = {
        "to": to,
        "last_active": last.name,
        "last_position": last.position,
        "last_timeline": last.timeline,
        "position": target.position,
        "timeline": target.timeline,
        "healthy": target.healthy,
        "may_lose_bytes": lost,
        "requested": False,
    }
    if dry_run:
        return preview
    current = consensus.get(keys.SWITCHOVER_KEY)
    request = keys.StoredSwitchover(from_node=last.name, to_node=to, failover=True)
    version = current.version if current is not None else 0
    if not consensus.put(keys.SWITCHOVER_KEY, request.encode(), expect_version=version):
        raise ConflictError("another switchover or failover request was written at the same time")
    return {**preview, "requested": True}


def restart_work(
    replication: ReplicationBackend,
    companions: Companions,
    source: ReplicationSource | None,
    *,
    database: bool,
    services: bool,
) -> Callable[[], None]:
    """The job of ``nodes restart`` on a standby: the services that need the database stop
    first (last started, first stopped), the database stops and starts again (following
    ``source``, the active, when there is one), then the services start in their order."""
    names = companions.everywhere if services else ()
    backend = companions.services

    def work() -> None:
        if backend is not None and names:
            backend.stop_all(names)
        if database:
            replication.stop()
            replication.start(follow=source)
        if backend is not None and names:
            backend.start_all(names)

    return work
