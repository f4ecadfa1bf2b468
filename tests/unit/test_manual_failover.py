"""Rule M1 of decide: a manual failover (``cluster failover --to N``) promotes N when no node
qualifies automatically, and nothing else.

Node b is past ``maximum_lag_on_failover`` (or not a synchronous standby) with the active a
dead: without the request it never campaigns; with it, it does, while c keeps out of the way.
"""

from __future__ import annotations

from typing import Any

import attrs

from hacore.agent import (
    Action,
    ActiveStatus,
    DecisionConfig,
    HealthReport,
    LeaseStatus,
    NodeState,
    Observation,
    SwitchoverRequest,
    SyncMode,
    campaign_blocker,
    decide,
)
from hacore.agent.decide import campaign_blockers
from hacore.agent.succession import succession
from hacore.backends.records import ClusterView, Leader, Lease, Member, NodeRole
from hacore.backends.replication import ReplicationRole, ReplicationStatus

NOW = 1000.0
#: b is 1000 bytes behind a's last position; the limit is 100
CFG = DecisionConfig(
    ttl=10, loop_wait=1, retry_timeout=2, safety_margin=2, maximum_lag_on_failover=100
)
SYNC = attrs.evolve(CFG, synchronous_mode=SyncMode.ON, maximum_lag_on_failover=None)
LAST = ActiveStatus("a", position=2000, timeline=1)
B_DB = ReplicationStatus(
    running=True, role=ReplicationRole.STANDBY, position=1000, timeline=1, following=None
)


def member(name: str, position: int = 1000, **kw: Any) -> Member:
    kw.setdefault("role", NodeRole.STANDBY)
    kw.setdefault("healthy", True)
    return Member(name=name, position=position, timeline=1, **kw)


def leaderless(*members: Member) -> ClusterView:
    return ClusterView(leader=None, members=members or (member("b"), member("c", position=900)))


def manual(to: str = "b", seen_at: float = NOW - 1) -> SwitchoverRequest:
    return SwitchoverRequest("a", to, seen_at, manual=True)


def obs(**kw: Any) -> Observation:
    base: dict[str, Any] = dict(
        now=NOW,
        node_name="b",
        view=leaderless(),
        db=B_DB,
        initialized=True,
        db_token=7,
        active_status=LAST,
        previous=NodeState.STANDBY,
    )
    return Observation(**(base | kw))


def test_past_the_lag_limit_nobody_campaigns_without_a_request() -> None:
    decision = decide(obs(), CFG)
    assert decision.action is Action.NONE
    assert "1000 bytes behind" in decision.reason
    assert [b.code for b in campaign_blockers(obs(), CFG)] == ["lag_too_high"]


def test_a_manual_failover_promotes_the_named_node_past_the_lag_limit() -> None:
    decision = decide(obs(switchover=manual()), CFG)
    assert decision.action is Action.CAMPAIGN
    assert campaign_blocker(obs(switchover=manual()), CFG) is None


def test_a_manual_failover_overrides_synchronous_mode() -> None:
    assert decide(obs(), SYNC).action is Action.NONE
    assert decide(obs(switchover=manual()), SYNC).action is Action.CAMPAIGN


def test_the_named_node_does_not_wait_for_a_member_ahead_of_it() -> None:
    view = leaderless(member("b"), member("c", position=1900))
    assert decide(obs(view=view, active_status=attrs.evolve(LAST, position=1000)), CFG).action is (
        Action.NONE
    )
    assert decide(obs(view=view, switchover=manual()), CFG).action is Action.CAMPAIGN


def test_the_others_keep_out_of_the_way() -> None:
    """c would qualify by itself (within the limit of a's last position), but the request
    names b: c does not race it."""
    view = leaderless(member("b"), member("c", position=1950))
    c = obs(node_name="c", view=view, db=attrs.evolve(B_DB, position=1950))
    assert decide(c, CFG).action is Action.CAMPAIGN
    held = decide(attrs.evolve(c, switchover=manual("b")), CFG)
    assert held.action is Action.NONE
    assert "switchover to b is pending" in held.reason


def test_failing_checks_still_hold_the_named_node_back() -> None:
    sick = obs(switchover=manual(), health=HealthReport(failing={"database_queries"}))
    decision = decide(sick, CFG)
    assert decision.action is Action.NONE
    assert "failing checks" in decision.reason


def test_a_stopped_database_is_never_promoted_by_a_request() -> None:
    stopped = ReplicationStatus(running=False, role=ReplicationRole.STOPPED)
    decision = decide(obs(switchover=manual(), db=stopped), CFG)
    assert decision.action is not Action.CAMPAIGN


def test_an_expired_request_promotes_nothing() -> None:
    old = manual(seen_at=NOW - CFG.switchover_timeout - 1)
    assert decide(obs(switchover=old), CFG).action is Action.NONE


def test_a_failsafe_promise_outranks_the_request() -> None:
    promised = obs(switchover=manual(), promised_until=NOW + 5)
    assert decide(promised, CFG).action is Action.NONE


def test_an_active_holding_the_lease_clears_a_manual_request_and_stays() -> None:
    """A request that raced a new lease names the active as the node to move away from: the
    active does not step down for it (only a switchover hands over a live active)."""
    lease = Lease(holder="a", token=7, ttl=10, acquired_at=NOW - 100)
    view = ClusterView(
        leader=Leader("a", 7), members=(member("a", role=NodeRole.ACTIVE), member("b"))
    )
    active = Observation(
        now=NOW,
        node_name="a",
        view=view,
        db=ReplicationStatus(
            running=True, role=ReplicationRole.PRIMARY, writable=True, position=2000, timeline=1
        ),
        initialized=True,
        lease_status=LeaseStatus.HELD,
        lease=lease,
        last_renewal=NOW - 1,
        db_token=7,
        previous=NodeState.ACTIVE,
        switchover=SwitchoverRequest("a", "b", NOW - 1, manual=True),
    )
    decision = decide(active, CFG)
    assert decision.action is Action.STAY_ACTIVE
    assert decision.clear_switchover


def test_the_history_names_a_manual_failover() -> None:
    entry = succession(obs(switchover=manual()), "b", 8)
    assert entry.reason == "manual_failover"
    assert (entry.previous, entry.previous_position) == ("a", 2000)
    assert succession(obs(), "b", 8).reason == "lease_expired"
