"""Failsafe mode in the pure decision (rules F0, F1, F2 of docs/agent-states.md).

Same small world as test_decide.py: ttl 10, safety_margin 2, ``a`` is the active, ``b`` and
``c`` standbys. The properties at the end check the safety argument of docs/fencing.md: a
member under a live promise never campaigns, and an active never stays writable past the
earliest confirmation expiry minus the margin (or its own lease deadline).
"""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_decide import (
    CFG,
    LEASE,
    NOW,
    active,
    configs,
    leaderless,
    observations,
    standby,
    world,
)

from hacore.agent import Action, DecisionConfig, LeaseStatus, NodeState, Observation, decide
from hacore.agent.decide import campaign_blocker
from hacore.agent.vocabulary import Failsafe, HealthReport

ON = attrs.evolve(CFG, failsafe_mode=True)
#: the lease's own deadline passed half a second ago (renewed at NOW - 8.5: 8.5 + 2 > 10)
LATE = NOW - 8.5


def silent_store(**kw: object) -> Observation:
    """The active with the store silent since its last renewal."""
    base: dict[str, object] = dict(
        lease_status=LeaseStatus.UNCERTAIN, view=None, last_renewal=LATE, failsafe_expiry=NOW + 3
    )
    return active(**(base | kw))


# -- rule F1: the active holds on its members' confirmations ---------------------------------


def test_every_member_confirmed_the_active_stays_until_the_earliest_expiry_minus_margin() -> None:
    d = decide(silent_store(), ON)
    assert d.action is Action.STAY_ACTIVE and d.next_state is NodeState.ACTIVE
    assert d.failsafe is Failsafe.HOLDING
    assert d.deadline == NOW + 3 - ON.safety_margin


@pytest.mark.parametrize(
    ("obs", "cfg"),
    [
        pytest.param(silent_store(), CFG, id="failsafe-off"),
        pytest.param(silent_store(failsafe_expiry=None), ON, id="not-every-member-confirmed"),
        pytest.param(silent_store(failsafe_expiry=NOW + 2), ON, id="confirmations-expired"),
        pytest.param(silent_store(failsafe_expiry=NOW + 1), ON, id="long-expired"),
    ],
)
def test_otherwise_the_active_fences_as_before(obs: Observation, cfg: DecisionConfig) -> None:
    d = decide(obs, cfg)
    assert d.action is Action.FENCE and d.failsafe is Failsafe.NONE


def test_confirmations_never_shorten_the_lease() -> None:
    obs = silent_store(last_renewal=NOW - 1, failsafe_expiry=NOW + 1)
    d = decide(obs, ON)
    assert d.action is Action.STAY_ACTIVE and d.failsafe is Failsafe.NONE
    assert d.deadline == NOW - 1 + 10 - 2


def test_a_store_that_answers_overrides_failsafe() -> None:
    renewed = active(failsafe_expiry=NOW + 30)
    d = decide(renewed, ON)
    assert d.action is Action.STAY_ACTIVE and d.failsafe is Failsafe.NONE
    assert d.deadline == NOW - 1 + 10 - 2


def test_the_store_check_is_no_step_down_reason_only_under_failsafe() -> None:
    store_down = HealthReport(failing={"store"}, expired={"store"})
    assert decide(silent_store(health=store_down), ON).action is Action.STAY_ACTIVE
    both = HealthReport(failing={"store", "db"}, expired={"store", "db"})
    assert decide(silent_store(health=both), ON).action is Action.FENCE
    unconfirmed = silent_store(health=store_down, last_renewal=NOW - 1, failsafe_expiry=None)
    assert decide(unconfirmed, ON).action is Action.FENCE


def test_an_unknown_database_is_not_kept_writable_by_failsafe() -> None:
    from hacore.backends.replication import UNKNOWN_STATUS

    d = decide(silent_store(db=UNKNOWN_STATUS), ON)
    assert d.action is Action.NONE  # rule 2b, deadline set; the keeper enforces it
    assert d.deadline == NOW + 1


# -- rule F0: a member under a live promise never campaigns ----------------------------------


def test_a_promised_member_does_not_campaign_until_the_promise_expires() -> None:
    obs = standby(view=leaderless(), db_token=7, promised_until=NOW + 0.5)
    d = decide(obs, ON)
    assert d.action is Action.NONE and d.failsafe is Failsafe.PROMISED
    assert campaign_blocker(obs, ON) is not None
    later = attrs.evolve(obs, now=NOW + 0.5)
    assert decide(later, ON).action is Action.CAMPAIGN
    assert campaign_blocker(later, ON) is None


def test_a_promise_binds_whatever_the_configuration() -> None:
    obs = standby(view=leaderless(), promised_until=NOW + 5)
    assert decide(obs, CFG).action is Action.NONE


def test_a_promise_blocks_reclaiming_a_leftover_key_too() -> None:
    obs = standby(view=world(leader="b"), promised_until=NOW + 5)
    d = decide(obs, ON)
    assert d.action is Action.NONE and d.failsafe is Failsafe.PROMISED
    assert decide(attrs.evolve(obs, promised_until=None), ON).action is Action.CAMPAIGN


# -- rule F2: the store is back without the lease --------------------------------------------


def returned(**kw: object) -> Observation:
    """The active after the store came back and said its lease is gone (LOST, dropped)."""
    base: dict[str, object] = dict(
        lease_status=LeaseStatus.NONE,
        lease=None,
        last_renewal=None,
        view=leaderless(),
        failsafe_expiry=NOW + 3,
    )
    return active(**(base | kw))


def test_the_active_campaigns_to_take_its_lease_back_while_the_promises_last() -> None:
    d = decide(returned(), ON)
    assert d.action is Action.CAMPAIGN and d.failsafe is Failsafe.HOLDING


@pytest.mark.parametrize(
    ("obs", "cfg", "action"),
    [
        pytest.param(returned(), CFG, Action.FENCE, id="failsafe-off"),
        pytest.param(returned(failsafe_expiry=NOW + 2), ON, Action.FENCE, id="promises-ending"),
        pytest.param(returned(failsafe_expiry=None), ON, Action.FENCE, id="never-confirmed"),
        pytest.param(returned(view=None), ON, Action.FENCE, id="store-silent-again"),
        pytest.param(
            returned(view=world(leader="b", token=8)), ON, Action.FENCE, id="another-leader"
        ),
        pytest.param(
            returned(previous=NodeState.FENCED), ON, Action.FENCE, id="was-not-the-active"
        ),
    ],
)
def test_otherwise_it_fences(obs: Observation, cfg: DecisionConfig, action: Action) -> None:
    d = decide(obs, cfg)
    assert d.action in (action, Action.FENCE_AND_REWIND) and d.failsafe is Failsafe.NONE


# -- properties -------------------------------------------------------------------------------


@st.composite
def failsafe_observations(draw: st.DrawFn) -> Observation:
    obs = draw(observations())
    expiry = draw(st.one_of(st.none(), st.floats(NOW - 5, NOW + 15)))
    promised = draw(st.one_of(st.none(), st.floats(NOW - 5, NOW + 15)))
    return attrs.evolve(obs, failsafe_expiry=expiry, promised_until=promised)


failsafe_configs = configs.map(lambda c: attrs.evolve(c, failsafe_mode=True))


def _own_deadline(obs: Observation, cfg: DecisionConfig) -> float:
    assert obs.lease is not None
    ttl = min(obs.lease.ttl, cfg.ttl) if obs.lease.ttl > 0 else cfg.ttl
    return (obs.last_renewal or 0.0) + ttl - cfg.safety_margin


@settings(max_examples=200, deadline=None, database=None)
@given(failsafe_observations(), failsafe_configs)
def test_failsafe_safety_properties(obs: Observation, cfg: DecisionConfig) -> None:
    d = decide(obs, cfg)
    promised = obs.promised_until is not None and obs.now < obs.promised_until
    if promised:
        assert d.action is not Action.CAMPAIGN, "campaigned under a live failsafe promise"
        assert campaign_blocker(obs, cfg) is not None
    leasing = obs.lease_status in (LeaseStatus.HELD, LeaseStatus.UNCERTAIN)
    if leasing and d.action in (Action.STAY_ACTIVE, Action.PROMOTE):
        limit = _own_deadline(obs, cfg)
        if obs.failsafe_expiry is not None and obs.view is None:
            limit = max(limit, obs.failsafe_expiry - cfg.safety_margin)
        assert obs.now < limit, "stayed writable past every deadline"
        assert d.deadline is not None and d.deadline <= limit
    if d.failsafe is Failsafe.HOLDING:
        assert obs.failsafe_expiry is not None
        assert obs.now < obs.failsafe_expiry - cfg.safety_margin
        if d.action is Action.STAY_ACTIVE:
            assert obs.view is None and obs.lease_status is LeaseStatus.UNCERTAIN
        else:
            assert d.action is Action.CAMPAIGN and obs.view is not None
            assert obs.view.leader is None and not leasing


@settings(max_examples=100, deadline=None, database=None)
@given(failsafe_observations(), configs)
def test_with_failsafe_off_the_confirmations_change_nothing(
    obs: Observation, cfg: DecisionConfig
) -> None:
    obs = attrs.evolve(obs, promised_until=None)
    assert decide(obs, cfg) == decide(attrs.evolve(obs, failsafe_expiry=None), cfg)


@settings(max_examples=500, deadline=None, database=None)
@given(
    sent=st.floats(NOW - 20, NOW),
    transit=st.floats(0, 2),
    renewed=st.floats(NOW - 30, NOW),
    at=st.floats(NOW - 20, NOW + 20),
)
def test_never_two_actives(sent: float, transit: float, renewed: float, at: float) -> None:
    """The active ``a`` asked at ``sent`` (its clock); ``b`` got the question ``transit``
    later and promised until then + ttl (its clock; clocks run at the same rate, offsets do
    not matter as each side only compares with itself). At no instant may ``a`` keep writing
    while ``b`` campaigns, whatever the store says to ``b``."""
    renewed = min(renewed, at)
    a = silent_store(now=at, last_renewal=renewed, failsafe_expiry=sent + CFG.ttl)
    a = attrs.evolve(a, lease=attrs.evolve(LEASE, ttl=10))
    # the store, if b reaches it, names a until a's lease expires there (at the earliest
    # ttl after the renewal was sent), then no leader
    store_deadline = renewed + CFG.ttl
    view = leaderless() if at >= store_deadline else world()
    b = standby(now=at, view=view, promised_until=sent + transit + CFG.ttl)
    a_writes = decide(a, ON).action is Action.STAY_ACTIVE
    b_campaigns = decide(b, ON).action is Action.CAMPAIGN
    if a_writes and b_campaigns:
        raise AssertionError("a stays writable while b campaigns")
    if a_writes and at >= store_deadline:
        # past the lease's time only on the confirmations: b must be bound
        assert decide(b, ON).failsafe is Failsafe.PROMISED
