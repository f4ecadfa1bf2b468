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
from hacore.agent.errors import NotNowError, StateConflictError, UnknownNodeError
from hacore.agent.vocabulary import ActiveStatus, Pause
from hacore.backends.consensus import ConsensusBackend
from hacore.backends.records import Lease, NodeRole
from hacore.backends.replication import ReplicationBackend, ReplicationSource
from hacore.errors import HacoreError


def request_switchover(
    consensus: ConsensusBackend, to: str | None, *, timeout: float
) -> keys.StoredSwitchover:
    """Write a switchover request away from the current leader (to ``to``, or the best one).

    A pending request from the same leader younger than ``timeout`` is a conflict; an older
    or stale one is replaced.
    """
    refuse_while_paused(consensus, "a switchover")
    leader = consensus.leader()
    if leader is None:
        raise NotNowError("there is no active node to switch over from")
    if to == leader.name:
        raise StateConflictError(f"{to} is already the active node")
    if to is not None and consensus.get(keys.MEMBERS_PREFIX + to) is None:
        raise UnknownNodeError(f'no live node named "{to}" in this cluster')
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
            raise StateConflictError(f"a switchover away from {leader.name} is already pending")
    request = keys.StoredSwitchover(from_node=leader.name, to_node=to)
    version = current.version if current is not None else 0
    if not consensus.put(keys.SWITCHOVER_KEY, request.encode(), expect_version=version):
        raise StateConflictError("another switchover request was written at the same time")
    return request


def record_bootstrap(consensus: ConsensusBackend, replication: ReplicationBackend) -> None:
    """Name the node that just bootstrapped the database as the last active (status key)."""
    db = replication.status()
    raw = keys.encode_status(ActiveStatus(replication.node_name, db.position, db.timeline))
    if not consensus.put(keys.STATUS_KEY, raw, expect_version=0):
        raise StateConflictError("this cluster already has a status key: it was started before")


def mark_removed(consensus: ConsensusBackend, name: str, *, by: str) -> None:
    leader = consensus.leader()
    if leader is not None and leader.name == name:
        raise StateConflictError(f"{name} is the active node; switch over before removing it")
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
    refuse_while_paused(consensus, "a failover")
    leader = consensus.leader()
    if leader is not None:
        raise StateConflictError(
            f"{leader.name} holds the lease: a failover is for a cluster with no active node; "
            f"hand over with hacore cluster switchover --to {to}"
        )
    removed = keys.removed_names(tuple(kv.key for kv in consensus.get_prefix(keys.REMOVED_PREFIX)))
    if to in removed:
        raise StateConflictError(f"{to} was removed from the cluster")
    target = next((m for m in consensus.members() if m.name == to), None)
    if target is None:
        raise UnknownNodeError(f'no live node named "{to}" in this cluster (is its agent running?)')
    if target.role in (NodeRole.REMOVED, NodeRole.CLONING) or target.position is None:
        raise StateConflictError(
            f"{to} cannot be promoted: it is {target.role.value} and its database position is "
            f"{'unknown' if target.position is None else target.position}"
        )
    raw = consensus.get(keys.STATUS_KEY)
    if raw is None:
        raise StateConflictError(
            "no active was ever recorded in this cluster: nothing to fail over"
        )
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
        raise StateConflictError(
            "another switchover or failover request was written at the same time"
        )
    return {**preview, "requested": True}


def restart_work(
    replication: ReplicationBackend,
    companions: Companions,
    source: ReplicationSource | None,
    *,
    database: bool,
    services: bool,
) -> Callable[[], None]:
    """The job of ``nodes restart`` on a standby: the database stops and starts again
    (following ``source``, the active, when there is one), inside :func:`_around_services`."""

    def restart() -> None:
        replication.stop()
        replication.start(follow=source)

    return _around_services(companions, restart if database else None, services=services)


def _around_services(
    companions: Companions, restart: Callable[[], None] | None, *, services: bool
) -> Callable[[], None]:
    """A restart job: the services that need the database stop first (last started, first
    stopped), then ``restart`` runs, then the services start again in their order."""
    names = companions.everywhere if services else ()
    backend = companions.services

    def work() -> None:
        if backend is not None and names:
            backend.stop_all(names)
        if restart is not None:
            restart()
        if backend is not None and names:
            backend.start_all(names)

    return work


# -- maintenance mode ------------------------------------------------------------------------


def read_pause(consensus: ConsensusBackend) -> tuple[Pause | None, int]:
    """The pause key and its version (0: not paused)."""
    kv = consensus.get(keys.PAUSE_KEY)
    if kv is None:
        return None, 0
    try:
        return keys.decode_pause(kv.value), kv.version
    except HacoreError as err:
        return Pause(by="?", reason=f"unreadable pause key: {err}"), kv.version


def pause_json(pause: Pause | None) -> dict[str, Any] | None:
    if pause is None:
        return None
    return {"by": pause.by, "at": pause.paused_at, "reason": pause.reason}


def refuse_while_paused(consensus: ConsensusBackend, what: str) -> None:
    """Operations that change the active are refused while paused: nobody would act on them."""
    pause, _ = read_pause(consensus)
    if pause is not None:
        raise StateConflictError(
            f"the cluster is paused (by {pause.by}): {what} is refused until hacore cluster resume"
        )


def pause(consensus: ConsensusBackend, wanted: Pause) -> dict[str, Any]:
    """Write the pause key unless it exists; an existing pause is kept as it is."""
    current, _ = read_pause(consensus)
    if current is None and consensus.put(
        keys.PAUSE_KEY, keys.encode_pause(wanted), expect_version=0
    ):
        return {"paused": True, "already": False, "pause": pause_json(wanted)}
    current, _ = read_pause(consensus)
    return {"paused": current is not None, "already": True, "pause": pause_json(current)}


def check_resumable(consensus: ConsensusBackend, name: str, lease: Lease | None) -> None:
    """Resume only through the node that holds the lease: its database is the one writer,
    and it goes back under a deadline before the others may act (docs/fencing.md)."""
    pause, _ = read_pause(consensus)
    if pause is None:
        return
    leader = consensus.leader()
    if leader is None:
        raise StateConflictError(
            "no node holds the lease: the active's agent is not running or does not reach "
            "the store. Start it (it takes the lease back while paused), or, once you made "
            "sure no database writes outside hacore, resume with --force"
        )
    if lease is None or leader.name != name or leader.token != lease.token:
        raise NotNowError(f"{leader.name} holds the lease: send the resume to {leader.name}")


def resume(consensus: ConsensusBackend) -> dict[str, Any]:
    """Delete the pause key (absent: already resumed)."""
    current, version = read_pause(consensus)
    if current is None:
        return {"paused": False, "already": True, "pause": None}
    if not consensus.delete(keys.PAUSE_KEY, expect_version=version):
        raise StateConflictError("the pause key changed meanwhile: try again")
    return {"paused": False, "already": False, "pause": pause_json(current)}


def restart_in_place_work(
    replication: ReplicationBackend, companions: Companions, *, database: bool, services: bool
) -> Callable[[], None]:
    """The job of ``nodes restart --in-place`` on the paused active: the database restarts as
    the primary it is, inside :func:`_around_services`. No fence and no promotion: the pause
    keeps every other node still meanwhile."""
    restart = replication.restart_in_place if database else None
    return _around_services(companions, restart, services=services)
