"""The decision when no node leads: whether this node may campaign, and who goes first.

:func:`campaign_blockers` lists every reason this node may not campaign regardless of the
others (``cluster explain`` shows them, the member record publishes whether there is one);
:func:`election` lets the most up-to-date eligible member campaign first. Pure, called by
:func:`hacore.agent.decide.decide`.
"""

from __future__ import annotations

import attrs

from hacore.agent import paused
from hacore.agent.decide_facts import (
    NOT_CANDIDATE_ROLES,
    Rank,
    db_running,
    idle,
    lag_behind,
    manual_failover_to,
    pending_switchover,
    promised,
    promised_rest,
    rank,
    rank_of_member,
    sync_eligible,
)
from hacore.agent.vocabulary import (
    Action,
    Decision,
    DecisionConfig,
    NodeState,
    Observation,
    SwitchoverRequest,
)
from hacore.backends.records import ClusterView, Member


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
    if promised(obs):
        assert obs.promised_until is not None
        found.append(
            Blocker(
                "failsafe_promise",
                f"failsafe: this node confirmed the active and promised not to campaign for "
                f"another {obs.promised_until - obs.now:.1f}s",
            )
        )
    database = obs.initialized and db.known and db_running(db) and db.position is not None
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
    manual = manual_failover_to(obs, cfg, obs.node_name)
    if not manual and not sync_eligible(obs, cfg, obs.node_name):
        found.append(
            Blocker(
                "not_synchronous_standby",
                "synchronous mode: this node is neither a synchronous standby nor the former "
                "active",
            )
        )
    if database and not manual:
        assert db.position is not None
        behind = lag_behind(obs, db.position)
        if cfg.maximum_lag_on_failover is not None and behind > cfg.maximum_lag_on_failover:
            found.append(
                Blocker(
                    "lag_too_high",
                    f"{behind} bytes behind the last active (limit {cfg.maximum_lag_on_failover})",
                )
            )
    req = pending_switchover(obs, cfg)
    if req is not None and req.from_node == obs.node_name:
        found.append(Blocker("switchover_away", "a switchover away from this node is pending"))
    if req is not None and req.to_node not in (None, obs.node_name) and obs.view is not None:
        target = obs.view.member(req.to_node)
        # The target's record may say unhealthy for a moment as the old active stops (its
        # WAL receiver loses the server): within one ttl of the request it still goes first;
        # after that, only a healthy target holds the others back.
        fresh = obs.now - req.seen_at < cfg.ttl
        if (
            target is not None
            and target.role not in NOT_CANDIDATE_ROLES
            and (target.healthy or fresh)
        ):
            found.append(
                Blocker("switchover_to_other", f"a switchover to {req.to_node} is pending")
            )
    return tuple(found)


def member_ahead(obs: Observation, cfg: DecisionConfig) -> Member | None:
    """A member that campaigns before this node in an election (rule of :func:`election`)."""
    return None if obs.view is None else _member_ahead(obs, cfg, obs.view)


def election(obs: Observation, cfg: DecisionConfig, view: ClusterView) -> Decision:
    if promised(obs):
        return promised_rest(obs, "no leader")
    blocker = campaign_blocker(obs, cfg)
    if blocker is not None:
        return idle(obs, f"no leader, but not campaigning: {blocker}")
    ahead = _member_ahead(obs, cfg, view)
    req = pending_switchover(obs, cfg)
    if ahead is not None and req is not None and ahead.name == req.from_node:
        # Not a rival (it never campaigns while the request is pending): its published final
        # position is the floor that keeps its last acknowledged writes. Streaming closes the
        # gap within milliseconds, so look again soon instead of a loop later.
        rest = idle(
            obs,
            f"switchover: {ahead.name} stepped down at timeline {ahead.timeline}, position "
            f"{ahead.position}; campaigning once this node has received that far",
        )
        return attrs.evolve(rest, observe_soon=True)
    if ahead is not None:
        return idle(
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
    ours = rank(obs.db.timeline, obs.db.position)
    req = pending_switchover(obs, cfg)
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
        theirs = rank_of_member(m)
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
    return rank_of_member(old) > ours


def _competes(obs: Observation, cfg: DecisionConfig, m: Member) -> bool:
    """Whether ``m``'s published record says it may campaign (it applies the same rules)."""
    if not m.healthy or m.role in NOT_CANDIDATE_ROLES or not m.candidate:
        return False
    if not sync_eligible(obs, cfg, m.name):
        return False
    limit = cfg.maximum_lag_on_failover
    return limit is None or m.position is None or lag_behind(obs, m.position) <= limit
