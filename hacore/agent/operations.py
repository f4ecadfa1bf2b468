"""The cluster operations the agent offers its API: each is a few store writes.

They run on the caller's thread (an API request), not the loop's, and raise the
:mod:`hacore.api.errors` classes so the CLI shows the reason as it is.
"""

from __future__ import annotations

import time

from hacore.agent import keys
from hacore.agent.state import ActiveStatus
from hacore.api.errors import ConflictError, NotFoundError, UnavailableError
from hacore.consensus import ConsensusBackend
from hacore.errors import HacoreError
from hacore.replication import ReplicationBackend


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
