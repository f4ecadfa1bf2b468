"""``cluster explain``'s pure part: it must agree with ``decide`` on every observation."""

from __future__ import annotations

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from test_decide import (
    CFG,
    NOW,
    STANDBY_DB,
    SYNC,
    configs,
    member,
    members,
    observations,
    standby,
    world,
)

from hacore.agent import (
    Action,
    ActiveStatus,
    DecisionConfig,
    HealthReport,
    LeaseStatus,
    NodeState,
    Observation,
    SwitchoverRequest,
    campaign_blocker,
    decide,
)
from hacore.agent.decide import campaign_blockers
from hacore.agent.explain import explain, reasons_not_to_campaign
from hacore.agent.keys import HistoryEntry
from hacore.agent.succession import succession
from hacore.backends.records import ClusterView, Leader, Member, NodeRole


def _leader_removed(obs: Observation) -> Observation:
    """Written out here rather than taken from explain.py, so the property checks it."""
    view = obs.view
    if view is not None and view.leader is not None:
        name = view.leader.name
        view = attrs.evolve(
            view, leader=None, members=tuple(m for m in view.members if m.name != name)
        )
    return attrs.evolve(obs, view=view, lease_status=LeaseStatus.NONE, lease=None)


def _holds(obs: Observation) -> bool:
    leader = obs.view.leader if obs.view is not None else None
    return obs.lease_status in (LeaseStatus.HELD, LeaseStatus.UNCERTAIN) or (
        leader is not None and leader.name == obs.node_name
    )


@settings(max_examples=400, deadline=None)
@given(observations(), configs)
def test_explain_agrees_with_decide_without_the_active(
    obs: Observation, cfg: DecisionConfig
) -> None:
    answer = explain(obs, decide(obs, cfg), cfg, obs.previous)
    if _holds(obs):
        assert answer.active and answer.would_take_over is None
        return
    campaigns = decide(_leader_removed(obs), cfg).action is Action.CAMPAIGN
    assert answer.would_take_over is campaigns
    if campaigns:
        assert answer.reasons == ()
    else:
        codes = [r.code for r in answer.reasons]
        assert codes and "unexplained" not in codes, decide(_leader_removed(obs), cfg).reason


@settings(max_examples=300, deadline=None)
@given(members(), configs, st.sampled_from([None, "a", "c"]))
def test_explain_agrees_with_decide_for_a_healthy_standby(
    others: tuple[Member, ...], cfg: DecisionConfig, leader: str | None
) -> None:
    """Random worlds around a standby that nothing blocks: who is ahead decides."""
    view = ClusterView(Leader(leader, 7) if leader else None, others)
    status = ActiveStatus("a", position=100, timeline=1, sync_standbys={"b"})
    obs = standby(view=view, active_status=status)
    answer = explain(obs, decide(obs, cfg), cfg, NodeState.STANDBY)
    campaigns = decide(_leader_removed(obs), cfg).action is Action.CAMPAIGN
    assert answer.would_take_over is campaigns
    codes = [r.code for r in answer.reasons]
    assert bool(codes) is not campaigns and "unexplained" not in codes


@settings(max_examples=400, deadline=None)
@given(observations(), configs)
def test_no_named_reason_means_decide_campaigns(obs: Observation, cfg: DecisionConfig) -> None:
    """The reasons are complete: when none applies, decide campaigns."""
    gone = _leader_removed(obs)
    if not reasons_not_to_campaign(gone, cfg):
        assert decide(gone, cfg).action is Action.CAMPAIGN


@settings(max_examples=400, deadline=None)
@given(observations(), configs)
def test_campaign_blocker_is_the_first_of_campaign_blockers(
    obs: Observation, cfg: DecisionConfig
) -> None:
    blockers = campaign_blockers(obs, cfg)
    assert campaign_blocker(obs, cfg) == (blockers[0].text if blockers else None)


def test_a_healthy_caught_up_standby_would_take_over() -> None:
    obs = standby()
    answer = explain(obs, decide(obs, CFG), CFG, NodeState.STANDBY)
    assert answer.would_take_over is True and not answer.active
    assert answer.to_json()["last_decision"]["action"] == "none"


def test_the_active_is_not_asked() -> None:
    obs = standby(node_name="a")
    answer = explain(obs, decide(obs, CFG), CFG, NodeState.ACTIVE)
    assert answer.active and answer.would_take_over is None


def test_every_reason_is_listed_with_its_code() -> None:
    cfg = attrs.evolve(SYNC, maximum_lag_on_failover=10)
    obs = standby(
        health=HealthReport(failing={"db"}),
        active_status=ActiveStatus("a", position=500, timeline=1, sync_standbys={"c"}),
    )
    answer = explain(obs, decide(obs, cfg), cfg, NodeState.STANDBY)
    assert answer.would_take_over is False
    codes = [r.code for r in answer.reasons]
    assert codes == ["failing_checks", "not_synchronous_standby", "lag_too_high"]
    assert "400 bytes behind the last active (limit 10)" in answer.reasons[2].text


def test_a_member_further_ahead_campaigns_first() -> None:
    view = world(member("a", role=NodeRole.ACTIVE), member("b"), member("c", position=200))
    obs = standby(view=view)
    answer = explain(obs, decide(obs, CFG), CFG, NodeState.STANDBY)
    assert [r.code for r in answer.reasons] == ["member_ahead"]


def test_store_unreachable_and_stopped_database() -> None:
    obs = standby(view=None, store_error="timed out", db=attrs.evolve(STANDBY_DB, running=False))
    answer = explain(obs, decide(obs, CFG), CFG, NodeState.STANDBY)
    assert [r.code for r in answer.reasons] == ["store_unreachable", "database_not_running"]


@given(st.floats(NOW - 5, NOW + 5))
def test_a_veto_reason_while_it_lasts(veto: float) -> None:
    obs = standby(veto_until=veto)
    answer = explain(obs, decide(obs, CFG), CFG, NodeState.STANDBY)
    assert ("promotion_vetoed" in [r.code for r in answer.reasons]) is (veto > NOW)


# -- the history entry a promotion writes (hacore/agent/succession.py) ----------------------------


def test_history_entries_of_older_agents_still_read() -> None:
    old = b'{"node": "n1", "token": 41, "timeline": 1, "position": 5, "promoted_at": 1.5}'
    entry = HistoryEntry.decode(old)
    assert (entry.node, entry.token, entry.reason, entry.previous) == ("n1", 41, None, None)
    assert entry.to_json()["reason_text"] == "unknown (older entry)"
    new = succession(standby(active_status=ActiveStatus("a", 90, 1)), "b", 8)
    assert HistoryEntry.decode(new.encode()) == new


def test_succession_tells_why_the_active_changed() -> None:
    gone = world(member("b"), member("c"), leader="b", token=8)
    status = ActiveStatus("a", position=90, timeline=1)
    crashed = succession(standby(view=gone, active_status=status), "b", 8)
    assert (crashed.reason, crashed.previous) == ("lease_expired", "a")
    assert crashed.previous_position == 90
    fenced = world(member("a", role=NodeRole.FENCED), member("b"), leader="b", token=8)
    assert succession(standby(view=fenced, active_status=status), "b", 8).reason == "stepped_down"
    req = SwitchoverRequest("a", "b", NOW)
    planned = succession(standby(view=fenced, active_status=status, switchover=req), "b", 8)
    assert (planned.reason, planned.switchover_to) == ("switchover", "b")
    assert succession(standby(active_status=None), "b", 8).reason == "first_start"
    own = succession(standby(active_status=ActiveStatus("b", 90, 1)), "b", 8)
    assert own.reason == "restarted"
    # its own earlier lease, lost and won again by the same agent: no restart happened
    again = succession(standby(active_status=ActiveStatus("b", 90, 1)), "b", 9, held_before=True)
    assert (again.reason, again.previous) == ("lease_lost", "b")
    assert "lost its own lease" in again.to_json()["reason_text"]
