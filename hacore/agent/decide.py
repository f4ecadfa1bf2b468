"""The agent's decision: one pure function from an observation to the next action.

All of the agent's branching lives in this function and the modules it calls, one small helper
per situation, so every rule of docs/agent-states.md is unit-tested without a store, a
database or a clock. The situations are tried in a fixed order of precedence: a lease we hold
(and its self-fencing deadline) first, then a database that writes without one, then work in
progress, then the rest. The same observation always gives the same decision, which is what
makes the agent resumable after a crash.

Where each part lives:

- :mod:`hacore.agent.decide_active`: holding the lease (stay active, promote, step down, fence);
- :mod:`hacore.agent.decide_standby`: another node leads, or this one has no lease to hold;
- :mod:`hacore.agent.decide_election`: nobody leads (who may campaign, who goes first);
- :mod:`hacore.agent.decide_facts`: what they all ask of the observation;
- :mod:`hacore.agent.paused` and :mod:`hacore.agent.minority`: maintenance and minority mode.
"""

from __future__ import annotations

from hacore.agent import minority, paused
from hacore.agent.decide_active import holding
from hacore.agent.decide_election import (
    Blocker,
    campaign_blocker,
    campaign_blockers,
    election,
    member_ahead,
)
from hacore.agent.decide_facts import (
    db_running,
    db_writable,
    failsafe_reclaims,
    fencing_deadline,
    founding,
    held_lease,
    idle,
    lease_stands,
    leasing,
    promised,
    promised_rest,
)
from hacore.agent.decide_standby import (
    busy,
    follower,
    no_database,
    reclaim,
    stopped,
    unleased_writer,
)
from hacore.agent.vocabulary import (
    Action,
    Decision,
    DecisionConfig,
    Failsafe,
    NodeState,
    Observation,
)

__all__ = ["Blocker", "campaign_blocker", "campaign_blockers", "decide", "member_ahead"]


def decide(obs: Observation, cfg: DecisionConfig) -> Decision:
    """The next action for this node, given what it observed this loop.

    Rule F0 above all others: a node under a live failsafe promise never campaigns, whatever
    rule asked for it (docs/fencing.md, "Failsafe mode"). Then, while the cluster is paused,
    rules P0-P3 (:mod:`hacore.agent.paused`) replace every other rule.
    """
    decision = _decide(obs, cfg)
    if decision.action is Action.CAMPAIGN and promised(obs):
        return promised_rest(obs, decision.reason)
    return decision


def _decide(obs: Observation, cfg: DecisionConfig) -> Decision:
    if obs.pause is not None:
        # Rules P0-P3: maintenance mode decides before everything else (hacore/agent/paused.py)
        return paused.decide(obs)
    if leasing(obs) and lease_stands(obs):
        return holding(obs, cfg)
    if db_writable(obs.db) and failsafe_reclaims(obs, cfg):
        return Decision(
            Action.CAMPAIGN,
            NodeState.PROMOTING,
            "failsafe: the store is back but the lease expired during the outage; every member "
            "still holds its promise, so this active campaigns to take the lease back",
            failsafe=Failsafe.HOLDING,
        )
    if minority.reclaims(obs, cfg):
        return minority.reclaiming()
    if founding(obs):
        return Decision(
            Action.CAMPAIGN,
            NodeState.PROMOTING,
            "this node just bootstrapped the cluster's database and no other node is a member: "
            "campaigning for the lease while it stays writable (no second writer can exist)",
        )
    if db_writable(obs.db):
        return unleased_writer(obs)
    if obs.job is not None:
        return busy(obs.job)
    if not obs.db.known and obs.previous in (NodeState.ACTIVE, NodeState.PROMOTING):
        return Decision(
            Action.FENCE,
            NodeState.FENCED,
            "the database does not answer and this node holds no lease it can renew: "
            "fencing (a database that does not answer may still write)",
        )
    if leasing(obs) and obs.now >= fencing_deadline(obs, cfg, held_lease(obs)):
        # The store no longer names our lease and our own clock says it may have expired:
        # nothing may be built on it, not even a campaign; the next renewal settles it.
        return idle(
            obs,
            "the lease this node held is past its self-fencing deadline and the store no "
            "longer names it: not campaigning until the next renewal",
        )
    view = obs.view
    if view is None:
        return idle(
            obs, f"store unreachable ({obs.store_error or 'no answer'}); never acting blind"
        )
    if obs.removed:
        return idle(obs, "this node was removed from the cluster; it never campaigns")
    leader = view.leader
    if not obs.initialized:
        return no_database(obs, leader, view)
    if leader is not None and leader.name == obs.node_name:
        return reclaim(leader)
    if not obs.db.known:
        return idle(
            obs,
            "the local database did not answer: its state is unknown, so it is neither "
            "started, followed, rewound nor a candidate on a guess",
        )
    if not db_running(obs.db):
        return stopped(obs, leader, view)
    if leader is not None:
        return follower(obs, leader, view)
    return election(obs, cfg, view)
