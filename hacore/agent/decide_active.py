"""The decision while this node holds the lease: stay active, promote, step down or fence.

Rules 1-3 of docs/agent-states.md for the active, with failsafe (F1) and minority mode (N1)
moving its deadline, and a planned switchover handed to the best standby. Pure, called by
:func:`hacore.agent.decide.decide`.
"""

from __future__ import annotations

import attrs

from hacore.agent import minority
from hacore.agent.catch_up import target_lag
from hacore.agent.decide_facts import (
    NOT_CANDIDATE_ROLES,
    db_writable,
    failsafe_holds,
    fencing_deadline,
    held_lease,
    rank_of_member,
    sync_eligible,
)
from hacore.agent.vocabulary import (
    Action,
    Decision,
    DecisionConfig,
    Failsafe,
    LeaseStatus,
    NodeState,
    Observation,
)
from hacore.backends.records import Lease, Member

#: The check that fails while the store does not answer (hacore/agent/checks.py): under
#: failsafe that outage is what the members' confirmations cover, so it is no step-down reason.
_STORE_CHECK = "store"


def holding(obs: Observation, cfg: DecisionConfig) -> Decision:
    """HELD or UNCERTAIN, and the view (if any) still names our lease as the leader."""
    lease = held_lease(obs)
    deadline = fencing_deadline(obs, cfg, lease)
    failsafe = failsafe_holds(obs, cfg, lease)
    # Rule N1: minority mode keeps an active cut off from the store's majority active; its
    # other step-down reasons still apply (the store check is the outage itself)
    cut_off = minority.store_out_of_reach(obs, cfg)
    if minority.holds(obs, cfg, deadline) and not step_down_reason(obs, cfg, lease, failsafe=True):
        return minority.holding(obs, cfg, deadline)
    if obs.now >= deadline:
        age = obs.now - (obs.last_renewal or 0.0)
        return Decision(
            Action.FENCE,
            NodeState.FENCED,
            f"no successful lease renewal for {age:.1f}s (deadline is ttl - safety_margin"
            f"{', or the failsafe confirmations' if failsafe else ''}); "
            "fencing before the lease can expire elsewhere",
        )
    certain = obs.lease_status is LeaseStatus.HELD
    problem = step_down_reason(obs, cfg, lease, failsafe=failsafe or cut_off)
    if problem is not None:
        after = NodeState.REMOVED if obs.removed else NodeState.FENCED
        if certain:
            return Decision(Action.STEP_DOWN, after, f"stepping down: {problem}", deadline=deadline)
        return Decision(Action.FENCE, after, f"fencing ({problem}); the store cannot take a resign")
    if not obs.db.known:
        # Unknown is not "not writable" (DESIGN rule 7): finishing a promotion here would
        # promote a healthy but slow active and rewrite the status key without its
        # synchronous standby, which then could not campaign. Nothing is touched; the failing
        # database check makes the node step down (rule 2) on the documented check timing.
        held = NodeState.ACTIVE if obs.previous is NodeState.ACTIVE else NodeState.PROMOTING
        return Decision(
            Action.NONE,
            held,
            "the database did not answer: its state is unknown; holding the lease without "
            "promoting or writing the status key until it answers or its check fails",
            deadline=deadline,
        )
    if not certain:
        if db_writable(obs.db) and failsafe:
            return Decision(
                Action.STAY_ACTIVE,
                NodeState.ACTIVE,
                f"failsafe: the store does not answer, but every member confirmed this active; "
                f"staying active until the deadline in {deadline - obs.now:.1f}s",
                deadline=deadline,
                failsafe=Failsafe.HOLDING,
            )
        if db_writable(obs.db):
            return Decision(
                Action.STAY_ACTIVE,
                NodeState.ACTIVE,
                f"store did not answer the renewal; staying active until the deadline in "
                f"{deadline - obs.now:.1f}s",
                deadline=deadline,
            )
        return Decision(
            Action.NONE,
            NodeState.PROMOTING,
            "store did not answer the renewal; not promoting on an uncertain lease",
            deadline=deadline,
        )
    handover = _switchover_as_active(obs, cfg)
    if handover is not None and handover.action is Action.STEP_DOWN:
        return attrs.evolve(handover, deadline=deadline)
    if not (db_writable(obs.db) and obs.db_token == lease.token):
        return Decision(
            Action.PROMOTE,
            NodeState.ACTIVE,
            f"this node holds the lease (token {lease.token}) but its database is not yet the "
            "active's; promoting",
            deadline=deadline,
        )
    if handover is not None:
        return attrs.evolve(handover, deadline=deadline)
    return Decision(
        Action.STAY_ACTIVE, NodeState.ACTIVE, "lease renewed; staying active", deadline=deadline
    )


def step_down_reason(
    obs: Observation, cfg: DecisionConfig, lease: Lease, *, failsafe: bool = False
) -> str | None:
    if obs.removed:
        return "this node was removed from the cluster"
    if not obs.initialized:
        return "this node holds the lease but has no database"
    if obs.db_token is not None and obs.db_token > lease.token:
        return (
            f"the database already saw a newer leadership (token {obs.db_token} > "
            f"{lease.token}); this lease is stale"
        )
    failing = obs.health.failing | obs.health.expired if cfg.check_fail_fast else obs.health.expired
    if failsafe:
        failing = failing - {_STORE_CHECK}
    if failing:
        return f"health checks failing: {', '.join(sorted(failing))}"
    return None


def _switchover_as_active(obs: Observation, cfg: DecisionConfig) -> Decision | None:
    req = obs.switchover
    if req is None:
        return None
    if req.manual:
        # written while no node held the lease: this lease makes it moot (rule M1)
        why = f"the manual failover to {req.to_node} is done or moot; clearing it"
        return _stay(why, clear=True)
    if req.from_node != obs.node_name:
        why = f"the switchover request away from {req.from_node} is done or stale; clearing it"
        return _stay(why, clear=True)
    if obs.now - req.seen_at >= cfg.switchover_timeout:
        return _stay(
            f"the switchover request expired after {cfg.switchover_timeout:g}s", clear=True
        )
    if req.to_node == obs.node_name:
        return _stay("the switchover target is already the active; clearing it", clear=True)
    members = obs.view.members if obs.view is not None else ()
    if req.to_node is not None:
        named = next((m for m in members if m.name == req.to_node), None)
        problem = _handover_problem(obs, cfg, named)
        if problem is not None:
            return _stay(f"switchover to {req.to_node} waits: {problem}")
        target = req.to_node
    else:
        fit = [m for m in members if m.name != obs.node_name and not _handover_problem(obs, cfg, m)]
        if not fit:
            return _stay("switchover waits: no standby is healthy and caught up")
        # max() keeps the first of equals: sorting by name makes ties go to the smallest name.
        target = max(sorted(fit, key=lambda m: m.name), key=rank_of_member).name
    return Decision(
        Action.STEP_DOWN,
        NodeState.FENCED,
        f"planned switchover to {target}: stepping down",
        target=target,
    )


def _handover_problem(obs: Observation, cfg: DecisionConfig, m: Member | None) -> str | None:
    """Why ``m`` cannot take over from this active right now, or None."""
    if m is None:
        return "it is not a member"
    if m.role in NOT_CANDIDATE_ROLES:
        return f"it is {m.role.value}"
    if not m.healthy or not m.candidate:
        return "it is not healthy or not a candidate"
    if not sync_eligible(obs, cfg, m.name):
        return "it is not a synchronous standby"
    behind = _bytes_behind(obs, m)
    if behind is None:
        return "its position is unknown"
    if m.timeline is not None and obs.db.timeline is not None and m.timeline != obs.db.timeline:
        return f"it is on timeline {m.timeline}, not {obs.db.timeline}"
    if behind > cfg.switchover_max_lag:
        return f"it is {behind} bytes behind (limit {cfg.switchover_max_lag})"
    return None


def _bytes_behind(obs: Observation, m: Member) -> int | None:
    """How far ``m`` is behind this active: what the database sees of it now, else its record.

    A record is up to a loop old: under a steady write load of tens of MiB/s it put a standby
    that streams in step past ``switchover_max_lag`` for seconds, and the switchover waited.
    """
    live = target_lag(obs.db, m.name)
    if live is not None:
        return live
    if m.position is None or obs.db.position is None:
        return None
    return obs.db.position - m.position


def _stay(reason: str, *, clear: bool = False) -> Decision:
    return Decision(Action.STAY_ACTIVE, NodeState.ACTIVE, reason, clear_switchover=clear)
