"""Minority mode in the pure decision (rules N1 and N2 of docs/agent-states.md).

Same small world as test_decide.py: ttl 10, safety_margin 2, ``a`` is the active, ``b`` and
``c`` standbys. The default (minority mode off) must decide exactly as before: the property
at the end checks that turning the mode on changes nothing outside the two rules.
"""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from test_decide import (
    CFG,
    FENCED_DB,
    NOW,
    STANDBY_DB,
    active,
    leaderless,
    member,
    observations,
    world,
)

from hacore.agent import Action, LeaseStatus, NodeState, Observation, decide
from hacore.agent.vocabulary import HealthReport, Minority
from hacore.backends.records import NodeRole

ON = attrs.evolve(CFG, minority_mode=True)
#: the lease's own deadline passed half a second ago (renewed at NOW - 8.5: 8.5 + 2 > 10)
LATE = NOW - 8.5


def cut_off(**kw: object) -> Observation:
    """The active with the store's majority out of reach since its last renewal."""
    base: dict[str, object] = dict(lease_status=LeaseStatus.UNCERTAIN, view=None, last_renewal=LATE)
    return active(**(base | kw))


# -- rule N1: the cut-off active stays active --------------------------------------------------


def test_past_the_deadline_a_cut_off_active_stays_active_and_writable() -> None:
    d = decide(cut_off(), ON)
    assert d.action is Action.STAY_ACTIVE and d.next_state is NodeState.ACTIVE
    assert d.minority is Minority.HOLDING
    # the deadline rolls with the loop: the next decision is due within ttl - margin
    assert d.deadline == NOW + ON.ttl - ON.safety_margin


def test_minority_mode_off_fences_as_before() -> None:
    d = decide(cut_off(), CFG)
    assert d.action is Action.FENCE and d.minority is Minority.NONE


def test_before_the_deadline_nothing_changes() -> None:
    obs = cut_off(last_renewal=NOW - 1)
    assert decide(obs, ON) == decide(obs, CFG)


def test_the_failing_store_check_does_not_make_it_fence() -> None:
    store_down = HealthReport(failing={"store"}, expired={"store"})
    d = decide(cut_off(health=store_down), ON)
    assert d.action is Action.STAY_ACTIVE and d.minority is Minority.HOLDING


@pytest.mark.parametrize(
    "obs",
    [
        pytest.param(cut_off(health=HealthReport(expired={"services"})), id="failing-check"),
        pytest.param(cut_off(removed=True), id="removed"),
        pytest.param(cut_off(db_token=8), id="newer-token-in-db"),
        pytest.param(cut_off(db=FENCED_DB), id="database-not-writable"),
    ],
)
def test_other_reasons_still_fence(obs: Observation) -> None:
    d = decide(obs, ON)
    assert d.action is Action.FENCE and d.minority is Minority.NONE


def test_a_store_that_answers_decides_as_usual() -> None:
    obs = cut_off(view=world(), lease_status=LeaseStatus.UNCERTAIN)
    assert decide(obs, ON).minority is Minority.NONE


# -- who wins on reconnection ------------------------------------------------------------------


def test_the_store_elected_another_active_the_old_one_is_fenced_and_rewound() -> None:
    """The lease holder wins: the renewal is refused, the rewind (with its salvage) follows."""
    led = world(member("a"), member("b", role=NodeRole.ACTIVE), leader="b", token=8)
    obs = active(lease_status=LeaseStatus.NONE, lease=None, last_renewal=None, view=led)
    d = decide(obs, ON)
    assert d.action is Action.FENCE_AND_REWIND and d.target == "b"
    assert d == decide(obs, CFG)


def test_nobody_was_elected_the_old_active_takes_the_lease_back() -> None:
    obs = active(lease_status=LeaseStatus.LOST, lease=None, last_renewal=None, view=leaderless())
    d = decide(obs, ON)
    assert d.action is Action.CAMPAIGN and d.minority is Minority.RECLAIMING
    assert decide(obs, CFG).action is Action.FENCE


@pytest.mark.parametrize(
    "obs",
    [
        pytest.param(
            active(lease_status=LeaseStatus.NONE, lease=None, last_renewal=None, view=None),
            id="store-still-unreachable",
        ),
        pytest.param(
            active(
                lease_status=LeaseStatus.NONE,
                lease=None,
                last_renewal=None,
                view=leaderless(),
                previous=NodeState.STANDBY,
            ),
            id="was-not-active",
        ),
        pytest.param(
            active(
                lease_status=LeaseStatus.NONE,
                lease=None,
                last_renewal=None,
                view=leaderless(),
                db=FENCED_DB,
            ),
            id="not-writable",
        ),
    ],
)
def test_no_reclaim_otherwise(obs: Observation) -> None:
    assert decide(obs, ON).minority is not Minority.RECLAIMING


def test_a_standby_cut_off_never_writes() -> None:
    obs = Observation(
        now=NOW,
        node_name="c",
        view=None,
        db=STANDBY_DB,
        initialized=True,
        previous=NodeState.STANDBY,
    )
    d = decide(obs, ON)
    assert d.action is Action.NONE and d.next_state is NodeState.STANDBY


# -- the default is unchanged ------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(observations())
def test_outside_rules_n1_and_n2_the_mode_changes_nothing(obs: Observation) -> None:
    on, off = decide(obs, ON), decide(obs, CFG)
    if on.minority is Minority.NONE:
        assert on == off
    else:
        assert off.action is Action.FENCE or (
            on.minority is Minority.RECLAIMING and off.action in (Action.FENCE, Action.NONE)
        )
