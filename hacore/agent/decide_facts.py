"""What every part of :func:`hacore.agent.decide.decide` asks of an observation.

The lease and its self-fencing deadline (rules 1, F1, F2), a failsafe promise (F0), a pending
switchover or manual failover (M1), synchronous eligibility, lag and rank, and the decision
to do nothing (whose state follows from what the database is). Pure, like the rest of the
decision.
"""

from __future__ import annotations

import attrs

from hacore.agent.vocabulary import (
    Action,
    Decision,
    DecisionConfig,
    Failsafe,
    LeaseStatus,
    NodeState,
    Observation,
    SwitchoverRequest,
    SyncMode,
)
from hacore.backends.records import Lease, Member, NodeRole
from hacore.backends.replication import ReplicationRole, ReplicationStatus

#: States in which the local database was (or was becoming) the primary.
PRIMARY_STATES = frozenset(
    {NodeState.PROMOTING, NodeState.ACTIVE, NodeState.FENCED, NodeState.REJOINING}
)
#: Published roles whose members cannot take part in an election.
NOT_CANDIDATE_ROLES = frozenset({NodeRole.REMOVED, NodeRole.CLONING})

Rank = tuple[int, int]


def leasing(obs: Observation) -> bool:
    return obs.lease_status in (LeaseStatus.HELD, LeaseStatus.UNCERTAIN)


def held_lease(obs: Observation) -> Lease:
    if obs.lease is None:
        raise ValueError("a held lease must come with the lease record")
    return obs.lease


def lease_stands(obs: Observation) -> bool:
    """The view, if there is one, still names our lease as the leader (renew is done first)."""
    if obs.view is None:
        return True
    leader, lease = obs.view.leader, held_lease(obs)
    return leader is not None and leader.name == obs.node_name and leader.token == lease.token


def fencing_deadline(obs: Observation, cfg: DecisionConfig, lease: Lease) -> float:
    """Rule 1's time; rule F1 moves it later while failsafe holds."""
    ttl = min(lease.ttl, cfg.ttl) if lease.ttl > 0 else cfg.ttl
    own = (obs.last_renewal or 0.0) + ttl - cfg.safety_margin
    if failsafe_holds(obs, cfg, lease):
        assert obs.failsafe_expiry is not None
        return max(own, obs.failsafe_expiry - cfg.safety_margin)
    return own


def failsafe_holds(obs: Observation, cfg: DecisionConfig, lease: Lease) -> bool:
    """Rule F1: failsafe is on, the store answered nothing this loop (renewal uncertain, no
    view) and every member confirmed this active in a round whose earliest expiry minus
    ``safety_margin`` lies beyond the lease's own deadline."""
    if not cfg.failsafe_mode or obs.failsafe_expiry is None:
        return False
    if obs.lease_status is not LeaseStatus.UNCERTAIN or obs.view is not None:
        return False
    ttl = min(lease.ttl, cfg.ttl) if lease.ttl > 0 else cfg.ttl
    own = (obs.last_renewal or 0.0) + ttl - cfg.safety_margin
    return obs.failsafe_expiry - cfg.safety_margin > own


def failsafe_reclaims(obs: Observation, cfg: DecisionConfig) -> bool:
    """Rule F2: an active that rode out a store outage on its members' confirmations finds the
    store back without its lease (it expired while the store was frozen). Until the last
    confirmations expire no member may campaign, so the active may campaign for the lease
    instead of fencing and waiting for an election it would win anyway."""
    if not cfg.failsafe_mode or obs.failsafe_expiry is None or obs.removed:
        return False
    if obs.now >= obs.failsafe_expiry - cfg.safety_margin or leasing(obs):
        return False
    view = obs.view
    return (
        obs.previous is NodeState.ACTIVE
        and obs.initialized
        and view is not None
        and view.leader is None
    )


def founding(obs: Observation) -> bool:
    """Rule B1: the agent's first loop on the node that just bootstrapped the cluster's
    database. It is writable (the bootstrap had to write the roles) but no lease was ever
    recorded in it (no fencing token), the status key names this node, nobody holds the
    lease and no other node is a member: no other database of this cluster exists, so no
    second writer is possible, and fencing it first would only cost a restart and a timeline."""
    view = obs.view
    status = obs.active_status
    return (
        obs.previous is NodeState.INIT
        and obs.initialized
        and not obs.removed
        and obs.db_token is None
        and obs.lease_status in (LeaseStatus.NONE, LeaseStatus.LOST)
        and view is not None
        and view.leader is None
        and all(m.name == obs.node_name for m in view.members)
        and status is not None
        and status.name == obs.node_name
        and db_writable(obs.db)
    )


def promised(obs: Observation) -> bool:
    return obs.promised_until is not None and obs.now < obs.promised_until


def promised_rest(obs: Observation, why: str) -> Decision:
    assert obs.promised_until is not None
    rest = idle(
        obs,
        f"{why}, but not campaigning: failsafe: this node confirmed the active and promised "
        f"not to campaign for another {obs.promised_until - obs.now:.1f}s",
    )
    return attrs.evolve(rest, failsafe=Failsafe.PROMISED)


def manual_failover_to(obs: Observation, cfg: DecisionConfig, name: str) -> bool:
    """Rule M1: a pending manual failover (``cluster failover --to``) names ``name``: the
    operator saw what may be lost and accepted it, so neither ``maximum_lag_on_failover`` nor
    synchronous mode hold that node back, and it does not wait for members ahead of it. The
    rest still does: no database, one that does not answer, failing checks, a veto, a
    failsafe promise. The request is only written while no node holds the lease."""
    req = pending_switchover(obs, cfg)
    return req is not None and req.manual and req.to_node == name


def pending_switchover(obs: Observation, cfg: DecisionConfig) -> SwitchoverRequest | None:
    req = obs.switchover
    if req is None or obs.now - req.seen_at >= cfg.switchover_timeout:
        return None
    return req


def sync_eligible(obs: Observation, cfg: DecisionConfig, name: str) -> bool:
    """In synchronous mode only a recorded synchronous standby or the former active qualifies."""
    if cfg.synchronous_mode is SyncMode.OFF:
        return True
    status = obs.active_status
    return status is not None and (name == status.name or name in status.sync_standbys)


def lag_behind(obs: Observation, position: int) -> int:
    status = obs.active_status
    if status is None or status.position is None:
        return 0
    return max(0, status.position - position)


def db_writable(db: ReplicationStatus) -> bool:
    return db.running and db.role is ReplicationRole.PRIMARY and db.writable


def db_running(db: ReplicationStatus) -> bool:
    return db.running and db.role is not ReplicationRole.STOPPED


def rank(timeline: int | None, position: int | None) -> Rank:
    """Newer timeline first (its history is the one acknowledged), then further position."""
    return (timeline or 0, position if position is not None else -1)


def rank_of_member(m: Member) -> Rank:
    return rank(m.timeline, m.position)


def idle(obs: Observation, reason: str) -> Decision:
    """Do nothing; the state follows from what the database is."""
    if obs.removed:
        state = NodeState.REMOVED
    elif not obs.initialized:
        state = NodeState.EMPTY
    elif (db_running(obs.db) and obs.db.role is ReplicationRole.PRIMARY) or (
        not db_running(obs.db) and obs.previous in PRIMARY_STATES
    ):
        state = NodeState.FENCED
    else:
        state = NodeState.STANDBY
    return Decision(Action.NONE, state, reason)
