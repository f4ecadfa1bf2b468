"""Why a node does what it does, and whether it would take over if the active died now.

"Why did my standby not take over?" has its answer in the loop's last observation: the
decision is a pure function of it. This module asks that same function (:func:`decide`) about
a hypothetical observation in which the active is gone (no leader key, no member record of
the old active, no lease), and lists the reasons from the same conditions ``decide`` uses
(:func:`~hacore.agent.decide.campaign_blockers`), so the explanation cannot drift from the
behaviour. Each reason has a stable ``code`` for scripts and a sentence for people.
"""

from __future__ import annotations

from typing import Any

import attrs

from hacore.agent.decide import Blocker, campaign_blockers, decide, member_ahead
from hacore.agent.vocabulary import (
    Action,
    Decision,
    DecisionConfig,
    LeaseStatus,
    NodeState,
    Observation,
)
from hacore.backends.replication import ReplicationRole

__all__ = ["Blocker", "Explanation", "explain", "without_active"]


@attrs.frozen
class Explanation:
    """One node's answer to ``cluster explain``."""

    node: str
    state: NodeState
    #: The last decision (None before the first loop).
    decision: Decision | None
    #: This node holds (or believes it holds) the lease: the question of taking over is moot.
    active: bool
    #: Whether this node would campaign if the active died now; None for the active itself.
    would_take_over: bool | None
    #: Every reason it would not, empty when it would (or is the active).
    reasons: tuple[Blocker, ...] = ()

    def to_json(self) -> dict[str, Any]:
        decision = self.decision
        return {
            "node": self.node,
            "state": self.state.value,
            "active": self.active,
            "last_decision": None
            if decision is None
            else {
                "action": decision.action.value,
                "next_state": decision.next_state.value,
                "reason": decision.reason,
                "target": decision.target,
                "failsafe": decision.failsafe.value,
            },
            "would_take_over": self.would_take_over,
            "reasons": [{"code": r.code, "text": r.text} for r in self.reasons],
        }


def without_active(obs: Observation) -> Observation:
    """``obs`` as it would be if the active died now: its leader key and member record gone
    (both are bound to its session) and this node holding no lease."""
    view = obs.view
    if view is not None and view.leader is not None:
        gone = view.leader.name
        view = attrs.evolve(
            view, leader=None, members=tuple(m for m in view.members if m.name != gone)
        )
    return attrs.evolve(
        obs, view=view, lease_status=LeaseStatus.NONE, lease=None, last_renewal=None
    )


def _holds_lease(obs: Observation) -> bool:
    if obs.lease_status in (LeaseStatus.HELD, LeaseStatus.UNCERTAIN):
        return True
    leader = obs.view.leader if obs.view is not None else None
    return leader is not None and leader.name == obs.node_name


def reasons_not_to_campaign(obs: Observation, cfg: DecisionConfig) -> tuple[Blocker, ...]:
    """Every reason ``decide`` would not campaign on ``obs`` (a leaderless observation)."""
    found: list[Blocker] = []
    if obs.view is None:
        detail = obs.store_error or "no answer"
        found.append(Blocker("store_unreachable", f"the store is unreachable ({detail})"))
    db = obs.db
    if db.running and db.role is ReplicationRole.PRIMARY and db.writable:
        found.append(
            Blocker(
                "database_writable",
                "its database is writable without a lease: it would be fenced, not promoted",
            )
        )
    if obs.job is not None:
        found.append(Blocker("job_running", f"{obs.job.value} is still running"))
    found.extend(campaign_blockers(obs, cfg))
    if not found:
        ahead = member_ahead(obs, cfg)
        if ahead is not None:
            found.append(
                Blocker(
                    "member_ahead",
                    f"{ahead.name} is at least as up to date (timeline {ahead.timeline}, "
                    f"position {ahead.position}) and would campaign first",
                )
            )
    return tuple(found)


def explain(
    obs: Observation | None, decision: Decision | None, cfg: DecisionConfig, state: NodeState
) -> Explanation:
    """This node's explanation from its last observation and decision."""
    if obs is None:
        return Explanation(
            node="",
            state=state,
            decision=decision,
            active=False,
            would_take_over=False,
            reasons=(Blocker("no_observation", "the agent has not completed a loop yet"),),
        )
    if _holds_lease(obs):
        return Explanation(obs.node_name, state, decision, True, None)
    gone = without_active(obs)
    if decide(gone, cfg).action is Action.CAMPAIGN:
        return Explanation(obs.node_name, state, decision, False, True)
    reasons = reasons_not_to_campaign(gone, cfg) or (
        Blocker("unexplained", decide(gone, cfg).reason),
    )
    return Explanation(obs.node_name, state, decision, False, False, reasons)
