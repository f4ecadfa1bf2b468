"""Maintenance mode in ``decide`` (rules P0-P3 of docs/agent-states.md), the keeper's paused
record, and the property that matters: while paused no agent promotes, demotes, fences,
rewinds, follows, starts, clones or restarts anything.

The 3-node world and the random observations are test_decide's.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_decide import (
    CFG,
    FENCED_DB,
    NOW,
    STANDBY_DB,
    STOPPED_DB,
    active,
    configs,
    leaderless,
    led_by,
    observations,
    standby,
    switchover,
    world,
)

from hacore.agent import Action, HealthReport, LeaseStatus, NodeState, Observation, decide
from hacore.agent.decide import campaign_blockers
from hacore.agent.keeper import (
    DbRole,
    FenceRecord,
    Hold,
    KeeperAction,
    KeeperView,
    fed_record,
    keeper_decide,
)
from hacore.agent.keys import decode_pause, encode_pause
from hacore.agent.paused import ALLOWED
from hacore.agent.vocabulary import Pause
from hacore.backends.replication import UNKNOWN_STATUS, ReplicationRole

PAUSE = Pause(by="admin@10.0.0.9", paused_at=1.7e9, reason="upgrade")
#: every action that changes a database, a lease holder or a service
FORBIDDEN = frozenset(Action) - ALLOWED


def paused(obs: Observation, **kw: Any) -> Observation:
    return attrs.evolve(obs, pause=PAUSE, **kw)


# -- P1: the active holding its lease -----------------------------------------------------------


def test_the_paused_active_stays_active_with_no_deadline() -> None:
    d = decide(paused(active()), CFG)
    assert (d.action, d.next_state, d.deadline) == (Action.STAY_ACTIVE, NodeState.ACTIVE, None)
    assert "paused by admin@10.0.0.9 (upgrade)" in d.reason


def test_past_its_deadline_with_the_store_silent_the_paused_active_does_not_fence() -> None:
    # unpaused, this is rule 1: FENCE
    obs = active(lease_status=LeaseStatus.UNCERTAIN, view=None, last_renewal=NOW - 30)
    assert decide(obs, CFG).action is Action.FENCE
    d = decide(paused(obs), CFG)
    assert (d.action, d.next_state) == (Action.STAY_ACTIVE, NodeState.ACTIVE)


def test_failing_checks_do_not_make_the_paused_active_step_down() -> None:
    obs = active(health=HealthReport(failing={"db"}, expired={"db"}))
    assert decide(obs, CFG).action is Action.STEP_DOWN
    assert decide(paused(obs), CFG).action is Action.STAY_ACTIVE


def test_a_switchover_request_is_not_acted_on_while_paused() -> None:
    obs = active(switchover=switchover("b"))
    assert decide(obs, CFG).action is Action.STEP_DOWN
    d = decide(paused(obs), CFG)
    assert d.action is Action.STAY_ACTIVE and not d.clear_switchover


def test_a_lease_held_over_a_database_that_is_not_writable_is_not_promoted() -> None:
    obs = active(db=STANDBY_DB, db_token=6)
    assert decide(obs, CFG).action is Action.PROMOTE
    d = decide(paused(obs), CFG)
    assert (d.action, d.next_state) == (Action.NONE, NodeState.STANDBY)


def test_a_database_with_a_newer_token_is_left_as_it_is() -> None:
    obs = active(db_token=9)
    assert decide(obs, CFG).action is Action.STEP_DOWN
    assert decide(paused(obs), CFG).action is Action.NONE


# -- P2: a writable database without a standing lease -------------------------------------------


def test_a_restarted_active_takes_its_lease_back_once_the_key_is_gone() -> None:
    # its agent restarted: no lease, the database still the primary
    obs = active(lease_status=LeaseStatus.NONE, lease=None, last_renewal=None, view=leaderless())
    assert decide(obs, CFG).action is Action.FENCE  # rule 11, unpaused
    d = decide(paused(obs), CFG)
    assert (d.action, d.next_state) == (Action.CAMPAIGN, NodeState.ACTIVE)


def test_a_restarted_active_asks_for_its_own_earlier_key() -> None:
    obs = active(lease_status=LeaseStatus.NONE, lease=None, last_renewal=None, view=world())
    assert decide(paused(obs), CFG).action is Action.CAMPAIGN


def test_a_writable_database_under_another_leader_is_not_fenced() -> None:
    obs = active(lease_status=LeaseStatus.LOST, lease=None, last_renewal=None, view=led_by("b"))
    assert decide(obs, CFG).action is Action.FENCE_AND_REWIND
    d = decide(paused(obs), CFG)
    assert (d.action, d.next_state) == (Action.NONE, NodeState.ACTIVE)


def test_a_writable_database_with_the_store_silent_stays_writable() -> None:
    obs = active(lease_status=LeaseStatus.NONE, lease=None, last_renewal=None, view=None)
    assert decide(obs, CFG).action is Action.FENCE
    assert decide(paused(obs), CFG).action is Action.NONE


def test_a_failsafe_promise_still_blocks_the_reclaiming_campaign() -> None:
    obs = active(lease_status=LeaseStatus.NONE, lease=None, last_renewal=None, view=leaderless())
    assert decide(paused(obs, promised_until=NOW + 5), CFG).action is Action.NONE


# -- P3 and P0: everything else -----------------------------------------------------------------


def test_standbys_do_not_campaign_when_the_active_is_gone() -> None:
    obs = standby(view=leaderless())
    assert decide(obs, CFG).action is Action.CAMPAIGN
    d = decide(paused(obs), CFG)
    assert (d.action, d.next_state) == (Action.NONE, NodeState.STANDBY)
    assert [b.code for b in campaign_blockers(paused(obs), CFG)] == ["paused"]


@pytest.mark.parametrize(
    ("obs", "unpaused"),
    [
        pytest.param(standby(db=STOPPED_DB), Action.START_STANDBY, id="stopped-not-started"),
        pytest.param(standby(view=led_by("c")), Action.FOLLOW, id="new-leader-not-followed"),
        pytest.param(standby(db=FENCED_DB), Action.REWIND, id="fenced-not-rewound"),
        pytest.param(standby(initialized=False, db=STOPPED_DB), Action.CLONE, id="empty-no-clone"),
    ],
)
def test_standbys_change_nothing(obs: Observation, unpaused: Action) -> None:
    assert decide(obs, CFG).action is unpaused
    assert decide(paused(obs), CFG).action is Action.NONE


def test_a_job_started_before_the_pause_finishes_and_an_in_place_restart_stays_active() -> None:
    d = decide(paused(standby(job=Action.CLONE)), CFG)
    assert (d.action, d.next_state) == (Action.NONE, NodeState.CLONING)
    restarting = paused(active(job=Action.RESTART, db=STOPPED_DB))
    d = decide(restarting, CFG)
    assert (d.action, d.next_state) == (Action.NONE, NodeState.ACTIVE)


def test_a_database_that_does_not_answer_is_not_fenced_while_paused() -> None:
    obs = active(lease_status=LeaseStatus.NONE, lease=None, last_renewal=None, db=UNKNOWN_STATUS)
    assert decide(obs, CFG).action is Action.FENCE  # rule 12a
    assert decide(paused(obs), CFG).action is Action.NONE


def test_resume_returns_to_the_normal_rules_at_once() -> None:
    obs = standby(view=leaderless())
    assert decide(paused(obs), CFG).action is Action.NONE
    assert decide(attrs.evolve(paused(obs), pause=None), CFG).action is Action.CAMPAIGN


# -- the property -------------------------------------------------------------------------------


@settings(max_examples=600, deadline=None, database=None)
@given(observations(), configs, st.sampled_from([None, Action.RESTART]))
def test_paused_nothing_is_promoted_demoted_fenced_or_restarted(
    obs: Observation, cfg: Any, job: Action | None
) -> None:
    if job is not None:
        obs = attrs.evolve(obs, job=job)
    d = decide(paused(obs), cfg)
    assert d.action not in FORBIDDEN, d
    assert d.target is None and d.deadline is None and not d.clear_switchover
    writable = obs.db.running and obs.db.role is ReplicationRole.PRIMARY and obs.db.writable
    if d.action is Action.CAMPAIGN:
        # only a writable primary takes a lease back, never an election; never blind
        assert writable and obs.view is not None and obs.job is None
        leader = obs.view.leader
        assert leader is None or leader.name == obs.node_name
    if d.action is Action.STAY_ACTIVE:
        assert writable and obs.lease_status in (LeaseStatus.HELD, LeaseStatus.UNCERTAIN)
    if writable:
        assert d.next_state is NodeState.ACTIVE or obs.job is not None


# -- the pause key and the keeper -----------------------------------------------------------------


def test_the_pause_key_round_trips() -> None:
    assert decode_pause(encode_pause(PAUSE)) == PAUSE


def test_the_keeper_record_while_paused_has_no_deadline() -> None:
    holder = FenceRecord(Hold.HOLDER, 100.0, 42, "boot")
    record = fed_record(
        holder, pid=42, boot="boot", may_write=True, deadline=101.0, db_role=None, paused=True
    )
    assert record == FenceRecord(Hold.PAUSED, None, 42, "boot")
    released = fed_record(
        None,
        pid=42,
        boot="boot",
        may_write=False,
        deadline=None,
        db_role=ReplicationRole.STANDBY,
        paused=True,
    )
    assert released is not None and released.hold is Hold.RELEASED


def test_after_the_pause_an_unleased_primary_gets_a_deadline_already_past() -> None:
    record = FenceRecord(Hold.PAUSED, None, 42, "boot")
    fed = fed_record(record, pid=42, boot="boot", may_write=False, deadline=None, db_role=None)
    assert fed == FenceRecord(Hold.HOLDER, 0.0, 42, "boot")
    leased = fed_record(record, pid=42, boot="boot", may_write=True, deadline=500.0, db_role=None)
    assert leased == FenceRecord(Hold.HOLDER, 500.0, 42, "boot")


def test_the_keeper_never_fences_a_paused_record() -> None:
    record = FenceRecord(Hold.PAUSED, None, 42, "boot")
    for alive in (True, False):
        view = KeeperView(now=1e9, record=record, agent_alive=alive, db=DbRole.PRIMARY)
        action = keeper_decide(view).action
        assert action is (KeeperAction.WAIT if alive else KeeperAction.EXIT)
