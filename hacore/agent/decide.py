"""The agent's decision: one pure function from an observation to the next action.

All of the agent's branching lives here, as one small helper per situation, so every rule of
docs/agent-states.md is unit-tested without a store, a database or a clock. The helpers are
tried in a fixed order of precedence: a lease we hold (and its self-fencing deadline) first,
then a database that writes without one, then work in progress, then the rest. The same
observation always gives the same decision, which is what makes the agent resumable after a
crash.
"""

from __future__ import annotations

import attrs

from hacore.agent import minority, paused
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
from hacore.backends.records import ClusterView, Leader, Lease, Member, NodeRole
from hacore.backends.replication import ReplicationRole, ReplicationStatus

#: States in which the local database was (or was becoming) the primary.
_PRIMARY_STATES = frozenset(
    {NodeState.PROMOTING, NodeState.ACTIVE, NodeState.FENCED, NodeState.REJOINING}
)
#: Published roles whose members cannot take part in an election.
_NOT_CANDIDATE_ROLES = frozenset({NodeRole.REMOVED, NodeRole.CLONING})
#: The check that fails while the store does not answer (hacore/agent/checks.py): under
#: failsafe that outage is what the members' confirmations cover, so it is no step-down reason.
_STORE_CHECK = "store"

Rank = tuple[int, int]


def decide(obs: Observation, cfg: DecisionConfig) -> Decision:
    """The next action for this node, given what it observed this loop.

    Rule F0 above all others: a node under a live failsafe promise never campaigns, whatever
    rule asked for it (docs/fencing.md, "Failsafe mode"). Then, while the cluster is paused,
    rules P0-P3 (:mod:`hacore.agent.paused`) replace every other rule.
    """
    decision = _decide(obs, cfg)
    if decision.action is Action.CAMPAIGN and _promised(obs):
        return _promised_rest(obs, decision.reason)
    return decision


def _decide(obs: Observation, cfg: DecisionConfig) -> Decision:
    if obs.pause is not None:
        # Rules P0-P3: maintenance mode decides before everything else (hacore/agent/paused.py)
        return paused.decide(obs)
    if _leasing(obs) and _lease_stands(obs):
        return _holding(obs, cfg)
    if _writable(obs.db) and _failsafe_reclaims(obs, cfg):
        return Decision(
            Action.CAMPAIGN,
            NodeState.PROMOTING,
            "failsafe: the store is back but the lease expired during the outage; every member "
            "still holds its promise, so this active campaigns to take the lease back",
            failsafe=Failsafe.HOLDING,
        )
    if minority.reclaims(obs, cfg):
        return minority.reclaiming()
    if _writable(obs.db):
        return _unleased_writer(obs)
    if obs.job is not None:
        return _busy(obs.job)
    if not obs.db.known and obs.previous in (NodeState.ACTIVE, NodeState.PROMOTING):
        return Decision(
            Action.FENCE,
            NodeState.FENCED,
            "the database does not answer and this node holds no lease it can renew: "
            "fencing (a database that does not answer may still write)",
        )
    if _leasing(obs) and obs.now >= _deadline(obs, cfg, _lease(obs)):
        # The store no longer names our lease and our own clock says it may have expired:
        # nothing may be built on it, not even a campaign; the next renewal settles it.
        return _rest(
            obs,
            "the lease this node held is past its self-fencing deadline and the store no "
            "longer names it: not campaigning until the next renewal",
        )
    view = obs.view
    if view is None:
        return _rest(
            obs, f"store unreachable ({obs.store_error or 'no answer'}); never acting blind"
        )
    if obs.removed:
        return _rest(obs, "this node was removed from the cluster; it never campaigns")
    leader = view.leader
    if not obs.initialized:
        return _empty(obs, leader, view)
    if leader is not None and leader.name == obs.node_name:
        return _reclaim(leader)
    if not obs.db.known:
        return _rest(
            obs,
            "the local database did not answer: its state is unknown, so it is neither "
            "started, followed, rewound nor a candidate on a guess",
        )
    if not _running(obs.db):
        return _stopped(obs, leader, view)
    if leader is not None:
        return _follower(obs, leader, view)
    return _election(obs, cfg, view)


def campaign_blocker(obs: Observation, cfg: DecisionConfig) -> str | None:
    """Why this node may not campaign regardless of the others, or None when it may.

    The I/O edge publishes ``candidate = campaign_blocker(...) is None`` in the member
    record, so the others stop holding back for a node that will not campaign.
    """
    blockers = campaign_blockers(obs, cfg)
    return blockers[0].text if blockers else None


@attrs.frozen
class Blocker:
    """One reason a node may not campaign: a stable ``code`` for scripts, ``text`` for people."""

    code: str
    text: str


def campaign_blockers(obs: Observation, cfg: DecisionConfig) -> tuple[Blocker, ...]:
    """Every reason this node may not campaign regardless of the others, in precedence order.

    The first one is :func:`campaign_blocker`'s answer; ``cluster explain`` shows them all. A
    reason that only makes sense once an earlier one is absent (the lag of a database that is
    not running) is left out while that earlier one holds.
    """
    db = obs.db
    found: list[Blocker] = []
    if obs.removed:
        found.append(Blocker("removed", "this node was removed from the cluster"))
    if obs.pause is not None:
        found.append(Blocker("paused", f"the cluster is {paused.describe(obs.pause)}"))
    if _promised(obs):
        assert obs.promised_until is not None
        found.append(
            Blocker(
                "failsafe_promise",
                f"failsafe: this node confirmed the active and promised not to campaign for "
                f"another {obs.promised_until - obs.now:.1f}s",
            )
        )
    database = obs.initialized and db.known and _running(db) and db.position is not None
    if not obs.initialized:
        found.append(Blocker("no_database", "this node has no database"))
    elif not db.known:
        found.append(
            Blocker("database_unknown", "the local database did not answer: its state is unknown")
        )
    elif not database:
        found.append(Blocker("database_not_running", "the local database is not running"))
    if not obs.health.ok:
        failing = ", ".join(sorted(obs.health.failing | obs.health.expired))
        found.append(Blocker("failing_checks", f"failing checks: {failing}"))
    if obs.veto_until is not None and obs.now < obs.veto_until:
        found.append(
            Blocker(
                "promotion_vetoed",
                f"a promotion was vetoed; retrying in {obs.veto_until - obs.now:.1f}s",
            )
        )
    manual = _manual_failover_to(obs, cfg, obs.node_name)
    if not manual and not _sync_eligible(obs, cfg, obs.node_name):
        found.append(
            Blocker(
                "not_synchronous_standby",
                "synchronous mode: this node is neither a synchronous standby nor the former "
                "active",
            )
        )
    if database and not manual:
        assert db.position is not None
        behind = _lag(obs, db.position)
        if cfg.maximum_lag_on_failover is not None and behind > cfg.maximum_lag_on_failover:
            found.append(
                Blocker(
                    "lag_too_high",
                    f"{behind} bytes behind the last active (limit {cfg.maximum_lag_on_failover})",
                )
            )
    req = _pending_switchover(obs, cfg)
    if req is not None and req.from_node == obs.node_name:
        found.append(Blocker("switchover_away", "a switchover away from this node is pending"))
    if req is not None and req.to_node not in (None, obs.node_name) and obs.view is not None:
        target = obs.view.member(req.to_node)
        if target is not None and target.healthy and target.role not in _NOT_CANDIDATE_ROLES:
            found.append(
                Blocker("switchover_to_other", f"a switchover to {req.to_node} is pending")
            )
    return tuple(found)


def member_ahead(obs: Observation, cfg: DecisionConfig) -> Member | None:
    """A member that campaigns before this node in an election (rule of :func:`_election`)."""
    return None if obs.view is None else _member_ahead(obs, cfg, obs.view)


# -- holding the lease --------------------------------------------------------------------------


def _holding(obs: Observation, cfg: DecisionConfig) -> Decision:
    """HELD or UNCERTAIN, and the view (if any) still names our lease as the leader."""
    lease = _lease(obs)
    deadline = _deadline(obs, cfg, lease)
    failsafe = _failsafe_holds(obs, cfg, lease)
    # Rule N1: minority mode keeps an active cut off from the store's majority active; its
    # other step-down reasons still apply (the store check is the outage itself)
    cut_off = minority.store_out_of_reach(obs, cfg)
    if minority.holds(obs, cfg, deadline) and not _step_down_reason(obs, cfg, lease, failsafe=True):
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
    problem = _step_down_reason(obs, cfg, lease, failsafe=failsafe or cut_off)
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
        if _writable(obs.db) and failsafe:
            return Decision(
                Action.STAY_ACTIVE,
                NodeState.ACTIVE,
                f"failsafe: the store does not answer, but every member confirmed this active; "
                f"staying active until the deadline in {deadline - obs.now:.1f}s",
                deadline=deadline,
                failsafe=Failsafe.HOLDING,
            )
        if _writable(obs.db):
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
    if not (_writable(obs.db) and obs.db_token == lease.token):
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


def _step_down_reason(
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
        target = max(sorted(fit, key=lambda m: m.name), key=_rank_of_member).name
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
    if m.role in _NOT_CANDIDATE_ROLES:
        return f"it is {m.role.value}"
    if not m.healthy or not m.candidate:
        return "it is not healthy or not a candidate"
    if not _sync_eligible(obs, cfg, m.name):
        return "it is not a synchronous standby"
    ours = obs.db.position
    if m.position is None or ours is None:
        return "its position is unknown"
    if m.timeline is not None and obs.db.timeline is not None and m.timeline != obs.db.timeline:
        return f"it is on timeline {m.timeline}, not {obs.db.timeline}"
    if ours - m.position > cfg.switchover_max_lag:
        return f"it is {ours - m.position} bytes behind (limit {cfg.switchover_max_lag})"
    return None


def _stay(reason: str, *, clear: bool = False) -> Decision:
    return Decision(Action.STAY_ACTIVE, NodeState.ACTIVE, reason, clear_switchover=clear)


# -- not holding the lease ----------------------------------------------------------------------


def _unleased_writer(obs: Observation) -> Decision:
    view = obs.view
    leader = view.leader if view is not None else None
    if view is not None and leader is not None and leader.name != obs.node_name:
        waiting = _not_active_yet(view, leader)
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


def _busy(job: Action) -> Decision:
    state = NodeState.CLONING if job is Action.CLONE else NodeState.REJOINING
    if job is Action.RESTART:
        state = NodeState.STANDBY
    return Decision(Action.NONE, state, f"{job.value} is still running")


def _empty(obs: Observation, leader: Leader | None, view: ClusterView) -> Decision:
    if leader is not None and leader.name != obs.node_name:
        waiting = _not_active_yet(view, leader)
        if waiting is not None:
            return _rest(obs, f"no database yet: cloning waits until {waiting}")
        return Decision(
            Action.CLONE,
            NodeState.CLONING,
            f"no database yet: cloning from {leader.name}",
            target=leader.name,
        )
    return _rest(obs, "no database and no leader to clone from; waiting (cluster start bootstraps)")


def _stopped(obs: Observation, leader: Leader | None, view: ClusterView) -> Decision:
    if leader is None:
        return Decision(
            Action.START_STANDBY,
            NodeState.STANDBY,
            "no leader: starting the database read-only so this node can report its position",
        )
    waiting = _not_active_yet(view, leader)
    if obs.needs_rewind or obs.previous in _PRIMARY_STATES:
        if waiting is not None:
            return _rest(
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


def _follower(obs: Observation, leader: Leader, view: ClusterView) -> Decision:
    if obs.db.role is ReplicationRole.PRIMARY or obs.needs_rewind:
        waiting = _not_active_yet(view, leader)
        if waiting is not None:
            return _rest(obs, f"a former primary or diverged; the rewind waits until {waiting}")
        return _rewind(leader, "the database is a former primary or has diverged")
    if obs.db.following != leader.name:
        waiting = _not_active_yet(view, leader)
        if waiting is not None:
            return _rest(obs, f"following {leader.name} waits until {waiting}")
        return Decision(
            Action.FOLLOW,
            NodeState.STANDBY,
            f"following the new leader {leader.name} (was {obs.db.following or 'nobody'})",
            target=leader.name,
        )
    return Decision(Action.NONE, NodeState.STANDBY, f"following {leader.name}")


def _not_active_yet(view: ClusterView, leader: Leader) -> str | None:
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


def _rest(obs: Observation, reason: str) -> Decision:
    """Do nothing; the state follows from what the database is."""
    if obs.removed:
        state = NodeState.REMOVED
    elif not obs.initialized:
        state = NodeState.EMPTY
    elif (_running(obs.db) and obs.db.role is ReplicationRole.PRIMARY) or (
        not _running(obs.db) and obs.previous in _PRIMARY_STATES
    ):
        state = NodeState.FENCED
    else:
        state = NodeState.STANDBY
    return Decision(Action.NONE, state, reason)


def _reclaim(leader: Leader) -> Decision:
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


# -- election -----------------------------------------------------------------------------------


def _election(obs: Observation, cfg: DecisionConfig, view: ClusterView) -> Decision:
    if _promised(obs):
        return _promised_rest(obs, "no leader")
    blocker = campaign_blocker(obs, cfg)
    if blocker is not None:
        return _rest(obs, f"no leader, but not campaigning: {blocker}")
    ahead = _member_ahead(obs, cfg, view)
    req = _pending_switchover(obs, cfg)
    if ahead is not None and req is not None and ahead.name == req.from_node:
        # Not a rival (it never campaigns while the request is pending): its published final
        # position is the floor that keeps its last acknowledged writes. Streaming closes the
        # gap within milliseconds, so look again soon instead of a loop later.
        rest = _rest(
            obs,
            f"switchover: {ahead.name} stepped down at timeline {ahead.timeline}, position "
            f"{ahead.position}; campaigning once this node has received that far",
        )
        return attrs.evolve(rest, observe_soon=True)
    if ahead is not None:
        return _rest(
            obs,
            f"no leader; {ahead.name} is at least as up to date "
            f"(timeline {ahead.timeline}, position {ahead.position}), so it campaigns first",
        )
    return Decision(
        Action.CAMPAIGN,
        NodeState.PROMOTING,
        f"no leader and this node is the most up-to-date eligible member "
        f"(timeline {obs.db.timeline}, position {obs.db.position}): campaigning",
    )


def _member_ahead(obs: Observation, cfg: DecisionConfig, view: ClusterView) -> Member | None:
    """A member that should campaign instead of us, or None.

    Under a pending switchover the node it moves away from never campaigns, but nobody may
    take over before reaching its position; a named target does not wait for the others.
    """
    ours = _rank(obs.db.timeline, obs.db.position)
    req = _pending_switchover(obs, cfg)
    for m in view.members:
        if m.name == obs.node_name or m.position is None:
            continue
        if req is not None and m.name == req.from_node and not req.manual:
            if _short_of_old_active(obs, req, m, ours):
                return m
            continue
        if req is not None and req.to_node == obs.node_name:
            continue
        if not _competes(obs, cfg, m):
            continue
        theirs = _rank_of_member(m)
        if theirs > ours or (theirs == ours and m.name < obs.node_name):
            return m
    return None


def _short_of_old_active(obs: Observation, req: SwitchoverRequest, old: Member, ours: Rank) -> bool:
    """Whether this node lacks some of what the active it replaces had written.

    The old active is no rival: it never campaigns while the request is pending. Its final
    position is only a floor. For the named target the floor is the position alone: the old
    active stepped down to it only after checking that both were on the same timeline, and a
    standby whose stream was just cut by that step-down may report an older timeline (its last
    restartpoint's) for a while; ranking by timeline would hold it back for nothing.
    """
    if req.to_node == obs.node_name:
        return (old.position or -1) > ours[1]
    return _rank_of_member(old) > ours


def _competes(obs: Observation, cfg: DecisionConfig, m: Member) -> bool:
    """Whether ``m``'s published record says it may campaign (it applies the same rules)."""
    if not m.healthy or m.role in _NOT_CANDIDATE_ROLES or not m.candidate:
        return False
    if not _sync_eligible(obs, cfg, m.name):
        return False
    limit = cfg.maximum_lag_on_failover
    return limit is None or m.position is None or _lag(obs, m.position) <= limit


# -- small helpers ------------------------------------------------------------------------------


def _leasing(obs: Observation) -> bool:
    return obs.lease_status in (LeaseStatus.HELD, LeaseStatus.UNCERTAIN)


def _lease(obs: Observation) -> Lease:
    if obs.lease is None:
        raise ValueError("a held lease must come with the lease record")
    return obs.lease


def _lease_stands(obs: Observation) -> bool:
    """The view, if there is one, still names our lease as the leader (renew is done first)."""
    if obs.view is None:
        return True
    leader, lease = obs.view.leader, _lease(obs)
    return leader is not None and leader.name == obs.node_name and leader.token == lease.token


def _deadline(obs: Observation, cfg: DecisionConfig, lease: Lease) -> float:
    """Rule 1's time; rule F1 moves it later while failsafe holds."""
    ttl = min(lease.ttl, cfg.ttl) if lease.ttl > 0 else cfg.ttl
    own = (obs.last_renewal or 0.0) + ttl - cfg.safety_margin
    if _failsafe_holds(obs, cfg, lease):
        assert obs.failsafe_expiry is not None
        return max(own, obs.failsafe_expiry - cfg.safety_margin)
    return own


def _failsafe_holds(obs: Observation, cfg: DecisionConfig, lease: Lease) -> bool:
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


def _failsafe_reclaims(obs: Observation, cfg: DecisionConfig) -> bool:
    """Rule F2: an active that rode out a store outage on its members' confirmations finds the
    store back without its lease (it expired while the store was frozen). Until the last
    confirmations expire no member may campaign, so the active may campaign for the lease
    instead of fencing and waiting for an election it would win anyway."""
    if not cfg.failsafe_mode or obs.failsafe_expiry is None or obs.removed:
        return False
    if obs.now >= obs.failsafe_expiry - cfg.safety_margin or _leasing(obs):
        return False
    view = obs.view
    return (
        obs.previous is NodeState.ACTIVE
        and obs.initialized
        and view is not None
        and view.leader is None
    )


def _promised(obs: Observation) -> bool:
    return obs.promised_until is not None and obs.now < obs.promised_until


def _promised_rest(obs: Observation, why: str) -> Decision:
    assert obs.promised_until is not None
    rest = _rest(
        obs,
        f"{why}, but not campaigning: failsafe: this node confirmed the active and promised "
        f"not to campaign for another {obs.promised_until - obs.now:.1f}s",
    )
    return attrs.evolve(rest, failsafe=Failsafe.PROMISED)


def _manual_failover_to(obs: Observation, cfg: DecisionConfig, name: str) -> bool:
    """Rule M1: a pending manual failover (``cluster failover --to``) names ``name``: the
    operator saw what may be lost and accepted it, so neither ``maximum_lag_on_failover`` nor
    synchronous mode hold that node back, and it does not wait for members ahead of it. The
    rest still does: no database, one that does not answer, failing checks, a veto, a
    failsafe promise. The request is only written while no node holds the lease."""
    req = _pending_switchover(obs, cfg)
    return req is not None and req.manual and req.to_node == name


def _pending_switchover(obs: Observation, cfg: DecisionConfig) -> SwitchoverRequest | None:
    req = obs.switchover
    if req is None or obs.now - req.seen_at >= cfg.switchover_timeout:
        return None
    return req


def _sync_eligible(obs: Observation, cfg: DecisionConfig, name: str) -> bool:
    """In synchronous mode only a recorded synchronous standby or the former active qualifies."""
    if cfg.synchronous_mode is SyncMode.OFF:
        return True
    status = obs.active_status
    return status is not None and (name == status.name or name in status.sync_standbys)


def _lag(obs: Observation, position: int) -> int:
    status = obs.active_status
    if status is None or status.position is None:
        return 0
    return max(0, status.position - position)


def _writable(db: ReplicationStatus) -> bool:
    return db.running and db.role is ReplicationRole.PRIMARY and db.writable


def _running(db: ReplicationStatus) -> bool:
    return db.running and db.role is not ReplicationRole.STOPPED


def _rank(timeline: int | None, position: int | None) -> Rank:
    """Newer timeline first (its history is the one acknowledged), then further position."""
    return (timeline or 0, position if position is not None else -1)


def _rank_of_member(m: Member) -> Rank:
    return _rank(m.timeline, m.position)
