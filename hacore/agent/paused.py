"""Maintenance mode (``hacore cluster pause``): the decision rules P0-P3 while it is set.

An operator pauses the cluster to work on it (restart or upgrade the active's agent, change a
PostgreSQL parameter, repair the store) without hacore reacting to what it sees meanwhile.
While paused, ``decide`` takes its answer from here, before every other rule:

- nobody promotes, steps down, fences, rewinds, follows, starts, clones or restarts anything:
  PostgreSQL, the file sync and the services stay as they are;
- the active keeps its lease while the store answers (``STAY_ACTIVE``: status key and
  synchronous standby kept current, nothing started), with **no self-fencing deadline**;
- the only campaign is a writable primary taking the lease back (its agent restarted, or the
  lease expired while the store did not answer): no node is elected, the writer keeps writing.

Why the active does not fence when the store does not answer, and why that is safe, is in
docs/fencing.md ("Maintenance mode"); in short, no other node can become a writer until the
pause ends, and it can only end through the node holding the lease.

Pure, like :mod:`hacore.agent.decide`, which calls it.
"""

from __future__ import annotations

from hacore.agent.vocabulary import Action, Decision, LeaseStatus, NodeState, Observation, Pause
from hacore.backends.replication import ReplicationRole, ReplicationStatus

#: Actions a paused agent may take; everything else waits for ``cluster resume``.
ALLOWED = frozenset({Action.NONE, Action.STAY_ACTIVE, Action.CAMPAIGN})
_PRIMARY_STATES = frozenset(
    {NodeState.PROMOTING, NodeState.ACTIVE, NodeState.FENCED, NodeState.REJOINING}
)


def describe(pause: Pause) -> str:
    """The pause in words ("paused by NAME (reason)") for decision reasons and messages."""
    return f"paused by {pause.by}" + (f" ({pause.reason})" if pause.reason else "")


def decide(obs: Observation) -> Decision:
    """Rules P0-P3 (docs/agent-states.md); ``obs.pause`` must be set."""
    assert obs.pause is not None
    why = describe(obs.pause)
    writable = _writable(obs.db)
    if obs.job is not None:
        # P0: a clone or rewind started before the pause is left to finish; none starts.
        state = NodeState.CLONING if obs.job is Action.CLONE else NodeState.REJOINING
        if obs.job is Action.RESTART:
            # ``nodes restart --in-place`` of the active restarts it as the active
            active = obs.previous is NodeState.ACTIVE
            state = NodeState.ACTIVE if active else NodeState.STANDBY
        return Decision(Action.NONE, state, f"{why}: {obs.job.value} is still running")
    if _lease_stands(obs):
        return _holding(obs, why, writable)
    if writable:
        return _unleased_writer(obs, why)
    return Decision(Action.NONE, _state_from_db(obs), f"{why}: changing nothing")


def _holding(obs: Observation, why: str, writable: bool) -> Decision:
    """P1: the lease stands. No deadline: the keeper is told the cluster is paused too."""
    assert obs.lease is not None
    token = obs.lease.token
    if not writable:
        return Decision(
            Action.NONE,
            _state_from_db(obs),
            f"{why}: holding the lease (token {token}) but the database is not writable; "
            "not promoting while paused",
        )
    if obs.db_token is not None and obs.db_token > token:
        return Decision(
            Action.NONE,
            NodeState.ACTIVE,
            f"{why}: the database saw a newer leadership (token {obs.db_token} > {token}); "
            "not stepping down while paused",
        )
    renewed = "renewed" if obs.lease_status is LeaseStatus.HELD else "not renewed (store silent)"
    return Decision(
        Action.STAY_ACTIVE,
        NodeState.ACTIVE,
        f"{why}: staying active, lease {renewed}; no self-fencing while paused",
    )


def _unleased_writer(obs: Observation, why: str) -> Decision:
    """P2: a writable database without a standing lease stays writable; it takes the lease
    back when the store names no leader, or names this node under an earlier session."""
    view = obs.view
    if view is None:
        return Decision(
            Action.NONE,
            NodeState.ACTIVE,
            f"{why}: the store does not answer ({obs.store_error or 'no answer'}); the "
            "database stays writable",
        )
    leader = view.leader
    if obs.removed:
        return Decision(Action.NONE, NodeState.ACTIVE, f"{why}: removed, but not fencing")
    if leader is None or leader.name == obs.node_name:
        return Decision(
            Action.CAMPAIGN,
            NodeState.ACTIVE,
            f"{why}: the database is writable and holds no lease; taking the lease back "
            "(no election: nobody else campaigns while paused)",
        )
    return Decision(
        Action.NONE,
        NodeState.ACTIVE,
        f"{why}: the database is writable while {leader.name} holds the leader key; not "
        "fencing while paused (resume to settle it)",
    )


def _lease_stands(obs: Observation) -> bool:
    if obs.lease_status not in (LeaseStatus.HELD, LeaseStatus.UNCERTAIN) or obs.lease is None:
        return False
    if obs.view is None:
        return True
    leader = obs.view.leader
    return leader is not None and leader.name == obs.node_name and leader.token == obs.lease.token


def _state_from_db(obs: Observation) -> NodeState:
    db = obs.db
    if obs.removed:
        return NodeState.REMOVED
    if not obs.initialized:
        return NodeState.EMPTY
    if db.running and db.role is ReplicationRole.PRIMARY:
        return NodeState.ACTIVE if db.writable else NodeState.FENCED
    if not db.known:
        return obs.previous if obs.previous is not NodeState.INIT else NodeState.STANDBY
    if not db.running and obs.previous in _PRIMARY_STATES:
        return NodeState.FENCED
    return NodeState.STANDBY


def _writable(db: ReplicationStatus) -> bool:
    return db.running and db.role is ReplicationRole.PRIMARY and db.writable
