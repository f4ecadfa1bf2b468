"""The decision of a node that holds no lease while another node leads (or none can be read).

A writable database without a lease is fenced; then a job in progress, a node without a
database (clone), a stopped database (start or rewind), a standby that follows the leader,
and the leader key left by this node's own session (reclaim). Pure, called by
:func:`hacore.agent.decide.decide`.
"""

from __future__ import annotations

from hacore.agent.decide_facts import (
    PRIMARY_STATES,
    idle,
)
from hacore.agent.vocabulary import (
    Action,
    Decision,
    NodeState,
    Observation,
)
from hacore.backends.records import ClusterView, Leader, NodeRole
from hacore.backends.replication import ReplicationRole


def unleased_writer(obs: Observation) -> Decision:
    view = obs.view
    leader = view.leader if view is not None else None
    if view is not None and leader is not None and leader.name != obs.node_name:
        waiting = not_active_yet(view, leader)
        if waiting is not None:
            return Decision(
                Action.FENCE,
                NodeState.FENCED,
                f"the database is writable while {leader.name} holds the leader key: fencing; "
                f"the rewind waits until {waiting}",
            )
        return Decision(
            Action.FENCE_AND_REWIND,
            NodeState.REJOINING,
            f"the database is writable while {leader.name} holds the leader key: fencing, then "
            "rewinding to follow it",
            target=leader.name,
        )
    return Decision(
        Action.FENCE,
        NodeState.FENCED,
        f"the database is writable but this node holds no lease it can renew "
        f"(lease {obs.lease_status.value}): fencing",
    )


def busy(job: Action) -> Decision:
    state = NodeState.CLONING if job is Action.CLONE else NodeState.REJOINING
    if job is Action.RESTART:
        state = NodeState.STANDBY
    return Decision(Action.NONE, state, f"{job.value} is still running")


def no_database(obs: Observation, leader: Leader | None, view: ClusterView) -> Decision:
    if leader is not None and leader.name != obs.node_name:
        waiting = not_active_yet(view, leader)
        if waiting is not None:
            return idle(obs, f"no database yet: cloning waits until {waiting}")
        return Decision(
            Action.CLONE,
            NodeState.CLONING,
            f"no database yet: cloning from {leader.name}",
            target=leader.name,
        )
    return idle(obs, "no database and no leader to clone from; waiting (cluster start bootstraps)")


def stopped(obs: Observation, leader: Leader | None, view: ClusterView) -> Decision:
    if leader is None:
        return Decision(
            Action.START_STANDBY,
            NodeState.STANDBY,
            "no leader: starting the database read-only so this node can report its position",
        )
    waiting = not_active_yet(view, leader)
    if obs.needs_rewind or obs.previous in PRIMARY_STATES:
        if waiting is not None:
            return idle(
                obs, f"stopped former primary or diverged; the rewind waits until {waiting}"
            )
        return _rewind(leader, "the stopped database was a primary or has diverged")
    if waiting is not None:
        return Decision(
            Action.START_STANDBY,
            NodeState.STANDBY,
            f"starting the database read-only; following waits until {waiting}",
        )
    return Decision(
        Action.START_STANDBY,
        NodeState.STANDBY,
        f"starting the database as a standby of {leader.name}",
        target=leader.name,
    )


def follower(obs: Observation, leader: Leader, view: ClusterView) -> Decision:
    if obs.db.role is ReplicationRole.PRIMARY or obs.needs_rewind:
        waiting = not_active_yet(view, leader)
        if waiting is not None:
            return idle(obs, f"a former primary or diverged; the rewind waits until {waiting}")
        return _rewind(leader, "the database is a former primary or has diverged")
    if obs.db.following != leader.name:
        waiting = not_active_yet(view, leader)
        if waiting is not None:
            return idle(obs, f"following {leader.name} waits until {waiting}")
        return Decision(
            Action.FOLLOW,
            NodeState.STANDBY,
            f"following the new leader {leader.name} (was {obs.db.following or 'nobody'})",
            target=leader.name,
        )
    return Decision(Action.NONE, NodeState.STANDBY, f"following {leader.name}")


def not_active_yet(view: ClusterView, leader: Leader) -> str | None:
    """Why the leader cannot be copied or followed yet, or None once its record says active.

    Between winning the leader key and finishing its promotion the leader's database is still
    a standby (or not running): a clone, rewind or follow aimed at it would fail or copy a
    history that is about to fork, so they wait for its member record to say ``active``.
    """
    record = view.member(leader.name)
    if record is None:
        return f"the leader {leader.name} publishes its member record"
    if record.role is not NodeRole.ACTIVE:
        return f"the leader {leader.name} is active (it is {record.role.value})"
    return None


def _rewind(leader: Leader, why: str) -> Decision:
    return Decision(
        Action.REWIND,
        NodeState.REJOINING,
        f"{why}: rewinding to follow {leader.name}",
        target=leader.name,
    )


def reclaim(leader: Leader) -> Decision:
    """The leader key names us, but the loop holds no lease for it.

    Either a campaign committed but its answer was lost (the key is bound to our live session,
    which the keepalive keeps alive: waiting would block every node forever), or an earlier
    agent process left it (its session is not ours and expires by itself). Only the backend
    can tell the two apart: ``campaign()`` returns the current lease for a key of our session
    and None for anyone else's, so asking costs one call and is safe either way.
    """
    return Decision(
        Action.CAMPAIGN,
        NodeState.PROMOTING,
        f"the leader key (token {leader.token}) names this node but no lease is held for it: "
        "campaigning to reclaim it if it is this session's (an earlier session's key is left "
        "to expire)",
    )
