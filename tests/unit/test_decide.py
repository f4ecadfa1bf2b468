"""The agent's decision function, rule by rule (docs/agent-states.md), plus safety properties.

Every case is an observation built from a small 3-node world (a, b, c; ``a`` is normally the
active) and the decision it must give. Times: ttl 10, safety_margin 2, so a lease renewed at
``NOW - 8`` is exactly at its self-fencing deadline.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hacore.agent import (
    Action,
    ActiveStatus,
    Decision,
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
from hacore.backends.records import ClusterView, Leader, Lease, Member, NodeRole
from hacore.backends.replication import (
    UNKNOWN_STATUS,
    ReplicationRole,
    ReplicationStatus,
    StandbyState,
)
from hacore.errors import ConfigError

NOW = 1000.0
CFG = DecisionConfig(ttl=10, loop_wait=1, retry_timeout=2, safety_margin=2)
SYNC = attrs.evolve(CFG, synchronous_mode=SyncMode.ON)
STRICT = attrs.evolve(CFG, synchronous_mode=SyncMode.STRICT)
FAIL_FAST = attrs.evolve(CFG, check_fail_fast=True)

STANDBY_DB = ReplicationStatus(
    running=True, role=ReplicationRole.STANDBY, position=100, timeline=1, following="a"
)
PRIMARY_DB = ReplicationStatus(
    running=True, role=ReplicationRole.PRIMARY, writable=True, position=100, timeline=1
)
FENCED_DB = attrs.evolve(PRIMARY_DB, writable=False)
STOPPED_DB = ReplicationStatus(running=False, role=ReplicationRole.STOPPED)
LEASE = Lease(holder="a", token=7, ttl=10, acquired_at=NOW - 100)


def member(name: str, position: int | None = 100, **kw: Any) -> Member:
    kw.setdefault("role", NodeRole.STANDBY)
    kw.setdefault("healthy", True)
    kw.setdefault("timeline", 1)
    return Member(name=name, position=position, **kw)


def world(*members: Member, leader: str | None = "a", token: int = 7) -> ClusterView:
    members = members or (member("a", role=NodeRole.ACTIVE), member("b"), member("c"))
    return ClusterView(leader=Leader(leader, token) if leader else None, members=members)


def led_by(leader: str, token: int = 8, role: NodeRole = NodeRole.ACTIVE) -> ClusterView:
    """A world where ``leader`` holds the key and publishes ``role`` (active: promoted)."""
    members = [member(n, role=role if n == leader else NodeRole.STANDBY) for n in ("a", "b", "c")]
    return world(*members, leader=leader, token=token)


def leaderless(*members: Member) -> ClusterView:
    return world(*(members or (member("b"), member("c"))), leader=None)


def standby(**kw: Any) -> Observation:
    """Node b: a healthy standby following the active a."""
    base: dict[str, Any] = dict(
        now=NOW, node_name="b", view=world(), db=STANDBY_DB, initialized=True, db_token=7
    )
    return Observation(**(base | kw))


def active(**kw: Any) -> Observation:
    """Node a: the active, lease renewed a second ago, database promoted with its token."""
    base: dict[str, Any] = dict(
        now=NOW,
        node_name="a",
        view=world(),
        db=PRIMARY_DB,
        initialized=True,
        lease_status=LeaseStatus.HELD,
        lease=LEASE,
        last_renewal=NOW - 1,
        db_token=7,
        previous=NodeState.ACTIVE,
    )
    return Observation(**(base | kw))


def switchover(to: str | None = "b", frm: str = "a", seen_at: float = NOW - 1) -> SwitchoverRequest:
    return SwitchoverRequest(from_node=frm, to_node=to, seen_at=seen_at)


def case(
    id: str,
    obs: Observation,
    action: Action,
    target: str | None = None,
    state: NodeState | None = None,
    cfg: DecisionConfig = CFG,
) -> Any:
    return pytest.param(obs, cfg, action, target, state, id=id)


def check(
    obs: Observation,
    cfg: DecisionConfig,
    action: Action,
    target: str | None,
    state: NodeState | None,
) -> Decision:
    decision = decide(obs, cfg)
    assert (decision.action, decision.target) == (action, target), decision.reason
    if state is not None:
        assert decision.next_state is state, decision.reason
    assert decision.reason
    return decision


# -- rule 1: self-fencing deadline ---------------------------------------------------------------

DEADLINE_CASES = [
    case("held-fresh", active(), Action.STAY_ACTIVE, state=NodeState.ACTIVE),
    case("held-just-before-deadline", active(last_renewal=NOW - 7.5), Action.STAY_ACTIVE),
    case("held-at-deadline", active(last_renewal=NOW - 8), Action.FENCE, state=NodeState.FENCED),
    case("held-long-past-deadline", active(last_renewal=NOW - 30), Action.FENCE),
    case(
        "lease-ttl-shorter-than-config",
        active(lease=attrs.evolve(LEASE, ttl=6), last_renewal=NOW - 4),
        Action.FENCE,
    ),
    case(
        "uncertain-before-deadline-stays",
        active(lease_status=LeaseStatus.UNCERTAIN, view=None, last_renewal=NOW - 6),
        Action.STAY_ACTIVE,
        state=NodeState.ACTIVE,
    ),
    case(
        "uncertain-at-deadline-fences",
        active(lease_status=LeaseStatus.UNCERTAIN, view=None, last_renewal=NOW - 8),
        Action.FENCE,
        state=NodeState.FENCED,
    ),
    case(
        "uncertain-never-promotes",
        active(lease_status=LeaseStatus.UNCERTAIN, view=None, db=STANDBY_DB),
        Action.NONE,
        state=NodeState.PROMOTING,
    ),
    case(
        "lost-with-new-leader-fences-and-rewinds",
        active(lease_status=LeaseStatus.LOST, view=led_by("c")),
        Action.FENCE_AND_REWIND,
        target="c",
        state=NodeState.REJOINING,
    ),
    case(
        "lost-no-leader-yet-fences",
        active(lease_status=LeaseStatus.LOST, view=leaderless()),
        Action.FENCE,
        state=NodeState.FENCED,
    ),
    case("lost-store-gone-fences", active(lease_status=LeaseStatus.LOST, view=None), Action.FENCE),
    case(
        "lost-before-promotion-follows",
        active(lease_status=LeaseStatus.LOST, db=STANDBY_DB, view=led_by("c")),
        Action.FOLLOW,
        target="c",
        state=NodeState.STANDBY,
    ),
    case(
        "lost-already-fenced-rewinds",
        active(lease_status=LeaseStatus.LOST, db=FENCED_DB, view=led_by("c")),
        Action.REWIND,
        target="c",
    ),
]


@pytest.mark.parametrize(("obs", "cfg", "action", "target", "state"), DEADLINE_CASES)
def test_self_fencing_deadline(
    obs: Observation, cfg: DecisionConfig, action: Action, target: str | None, state: NodeState
) -> None:
    check(obs, cfg, action, target, state)


def test_deadline_is_last_renewal_plus_ttl_minus_margin() -> None:
    assert decide(active(last_renewal=NOW - 3), CFG).deadline == NOW + 5
    uncertain = active(lease_status=LeaseStatus.UNCERTAIN, view=None, last_renewal=NOW - 3)
    assert decide(uncertain, CFG).deadline == NOW + 5


# -- rule 2: one writer --------------------------------------------------------------------------

WRITER_CASES = [
    case(
        "writable-while-other-leads",
        standby(db=PRIMARY_DB, view=led_by("c")),
        Action.FENCE_AND_REWIND,
        target="c",
    ),
    case("writable-store-unreachable-no-lease", standby(db=PRIMARY_DB, view=None), Action.FENCE),
    case("writable-no-leader-no-lease", standby(db=PRIMARY_DB, view=leaderless()), Action.FENCE),
    case(
        "held-but-store-names-other-leader",
        active(view=led_by("c")),
        Action.FENCE_AND_REWIND,
        target="c",
    ),
    case("held-but-leader-key-gone", active(view=leaderless()), Action.FENCE),
    case(
        "held-but-key-has-other-token",
        active(view=world(leader="a", token=6)),
        Action.FENCE,
        state=NodeState.FENCED,
    ),
    case(
        "database-saw-newer-token",
        active(db_token=9),
        Action.STEP_DOWN,
        state=NodeState.FENCED,
    ),
    case(
        "database-saw-newer-token-store-uncertain",
        active(db_token=9, lease_status=LeaseStatus.UNCERTAIN, view=None),
        Action.FENCE,
    ),
]


@pytest.mark.parametrize(("obs", "cfg", "action", "target", "state"), WRITER_CASES)
def test_one_writer(
    obs: Observation, cfg: DecisionConfig, action: Action, target: str | None, state: NodeState
) -> None:
    check(obs, cfg, action, target, state)


# -- rule 3: most up-to-date wins ----------------------------------------------------------------

SYNC_B = ActiveStatus(name="a", position=100, timeline=1, sync_standbys={"b"})
SYNC_C = ActiveStatus(name="a", position=100, timeline=1, sync_standbys={"c"})

ELECTION_CASES = [
    case(
        "best-campaigns",
        standby(view=leaderless(member("b", 100), member("c", 90))),
        Action.CAMPAIGN,
        state=NodeState.PROMOTING,
    ),
    case(
        "other-ahead-holds-back",
        standby(view=leaderless(member("b", 100), member("c", 101))),
        Action.NONE,
        state=NodeState.STANDBY,
    ),
    case(
        "tie-smaller-name-holds-back-larger",
        standby(node_name="c", view=leaderless(member("b", 100), member("c", 100))),
        Action.NONE,
    ),
    case(
        "tie-smaller-name-campaigns",
        standby(view=leaderless(member("b", 100), member("c", 100))),
        Action.CAMPAIGN,
    ),
    case(
        "newer-timeline-beats-position",
        standby(view=leaderless(member("b", 100), member("c", 50, timeline=2))),
        Action.NONE,
    ),
    case(
        "own-stale-record-ignored",
        standby(view=leaderless(member("b", 5), member("c", 99))),
        Action.CAMPAIGN,
    ),
    case(
        "unhealthy-other-ignored",
        standby(view=leaderless(member("b"), member("c", 200, healthy=False))),
        Action.CAMPAIGN,
    ),
    case(
        "cloning-other-ignored",
        standby(view=leaderless(member("b"), member("c", 200, role=NodeRole.CLONING))),
        Action.CAMPAIGN,
    ),
    case(
        "removed-other-ignored",
        standby(view=leaderless(member("b"), member("c", 200, role=NodeRole.REMOVED))),
        Action.CAMPAIGN,
    ),
    case(
        "non-candidate-other-ignored",
        standby(view=leaderless(member("b"), member("c", 200, candidate=False))),
        Action.CAMPAIGN,
    ),
    case(
        "other-without-position-ignored",
        standby(view=leaderless(member("b"), member("c", None))),
        Action.CAMPAIGN,
    ),
    case(
        "failing-check-blocks",
        standby(view=leaderless(), health=HealthReport(failing={"db"})),
        Action.NONE,
    ),
    case(
        "expired-check-blocks",
        standby(view=leaderless(), health=HealthReport(expired={"db"})),
        Action.NONE,
    ),
    case(
        "removed-never-campaigns",
        standby(view=leaderless(), removed=True),
        Action.NONE,
        state=NodeState.REMOVED,
    ),
    case(
        "unknown-position-blocks",
        standby(view=leaderless(), db=attrs.evolve(STANDBY_DB, position=None)),
        Action.NONE,
    ),
    case("vetoed-waits", standby(view=leaderless(), veto_until=NOW + 0.5), Action.NONE),
    case("veto-over-at-boundary", standby(view=leaderless(), veto_until=NOW), Action.CAMPAIGN),
    case(
        "lag-at-limit-campaigns",
        standby(view=leaderless(), active_status=ActiveStatus("a", position=200)),
        Action.CAMPAIGN,
        cfg=attrs.evolve(CFG, maximum_lag_on_failover=100),
    ),
    case(
        "lag-over-limit-blocks",
        standby(view=leaderless(), active_status=ActiveStatus("a", position=201)),
        Action.NONE,
        cfg=attrs.evolve(CFG, maximum_lag_on_failover=100),
    ),
    case(
        "lagging-other-is-no-competitor",
        standby(
            view=leaderless(member("b", 100), member("c", 50, timeline=2)),
            active_status=ActiveStatus("a", position=120),
        ),
        Action.CAMPAIGN,
        cfg=attrs.evolve(CFG, maximum_lag_on_failover=40),
    ),
    case(
        "sync-standby-campaigns",
        standby(view=leaderless(), active_status=SYNC_B),
        Action.CAMPAIGN,
        cfg=SYNC,
    ),
    case(
        "async-standby-blocked-in-sync-mode",
        standby(view=leaderless(), active_status=SYNC_C),
        Action.NONE,
        cfg=SYNC,
    ),
    case(
        "strict-like-on",
        standby(view=leaderless(), active_status=SYNC_C),
        Action.NONE,
        cfg=STRICT,
    ),
    case(
        "sync-mode-without-record-blocks",
        standby(view=leaderless()),
        Action.NONE,
        cfg=SYNC,
    ),
    case(
        "former-active-campaigns-in-sync-mode",
        standby(view=leaderless(), active_status=ActiveStatus("b", sync_standbys={"c"})),
        Action.CAMPAIGN,
        cfg=STRICT,
    ),
    case(
        "async-other-ahead-ignored-in-sync-mode",
        standby(view=leaderless(member("b"), member("c", 500)), active_status=SYNC_B),
        Action.CAMPAIGN,
        cfg=SYNC,
    ),
    case(
        "fenced-former-primary-campaigns",
        standby(node_name="a", db=FENCED_DB, view=leaderless(), previous=NodeState.FENCED),
        Action.CAMPAIGN,
        state=NodeState.PROMOTING,
    ),
    case(
        "fenced-former-primary-behind-waits",
        standby(node_name="a", db=FENCED_DB, view=leaderless(member("b", 101))),
        Action.NONE,
        state=NodeState.FENCED,
    ),
]


@pytest.mark.parametrize(("obs", "cfg", "action", "target", "state"), ELECTION_CASES)
def test_most_up_to_date_wins(
    obs: Observation, cfg: DecisionConfig, action: Action, target: str | None, state: NodeState
) -> None:
    check(obs, cfg, action, target, state)


# -- rule 4: planned switchover ------------------------------------------------------------------

LAG = CFG.switchover_max_lag
A_ACTIVE = member("a", role=NodeRole.ACTIVE)

SWITCHOVER_CASES = [
    case(
        "target-caught-up",
        active(switchover=switchover("b")),
        Action.STEP_DOWN,
        target="b",
        state=NodeState.FENCED,
    ),
    case(
        "target-behind-by-limit",
        active(switchover=switchover("b"), view=world(A_ACTIVE, member("b", 100 - LAG))),
        Action.STEP_DOWN,
        target="b",
        cfg=attrs.evolve(CFG, switchover_max_lag=LAG),
    ),
    case(
        "target-behind-past-limit",
        active(switchover=switchover("b"), view=world(A_ACTIVE, member("b", 99 - LAG))),
        Action.STAY_ACTIVE,
    ),
    # The database's own view of a standby is fresh; its record is up to a loop old.
    case(
        "target-record-behind-but-streams-in-step",
        active(
            switchover=switchover("b"),
            view=world(A_ACTIVE, member("b", 99 - LAG)),
            db=attrs.evolve(PRIMARY_DB, standbys=(StandbyState("b", "streaming", 0),)),
        ),
        Action.STEP_DOWN,
        target="b",
        state=NodeState.FENCED,
    ),
    case(
        "target-record-current-but-far-behind-now",
        active(
            switchover=switchover("b"),
            db=attrs.evolve(PRIMARY_DB, standbys=(StandbyState("b", "streaming", LAG + 1),)),
        ),
        Action.STAY_ACTIVE,
    ),
    case(
        "target-unhealthy",
        active(switchover=switchover("b"), view=world(A_ACTIVE, member("b", healthy=False))),
        Action.STAY_ACTIVE,
    ),
    case("target-unknown", active(switchover=switchover("z")), Action.STAY_ACTIVE),
    case(
        "target-removed",
        active(
            switchover=switchover("b"), view=world(A_ACTIVE, member("b", role=NodeRole.REMOVED))
        ),
        Action.STAY_ACTIVE,
    ),
    case(
        "target-other-timeline",
        active(switchover=switchover("b"), view=world(A_ACTIVE, member("b", timeline=2))),
        Action.STAY_ACTIVE,
    ),
    case(
        "target-not-candidate",
        active(
            switchover=switchover("b"),
            view=world(A_ACTIVE, member("b", candidate=False)),
        ),
        Action.STAY_ACTIVE,
    ),
    case(
        "target-not-sync",
        active(switchover=switchover("b"), active_status=SYNC_C),
        Action.STAY_ACTIVE,
        cfg=SYNC,
    ),
    case(
        "target-sync",
        active(switchover=switchover("b"), active_status=SYNC_B),
        Action.STEP_DOWN,
        target="b",
        cfg=SYNC,
    ),
    case(
        "no-target-picks-most-advanced",
        active(switchover=switchover(None), view=world(A_ACTIVE, member("b", 90), member("c"))),
        Action.STEP_DOWN,
        target="c",
    ),
    case(
        "no-target-tie-picks-smaller-name",
        active(switchover=switchover(None), view=world(A_ACTIVE, member("c"), member("b"))),
        Action.STEP_DOWN,
        target="b",
    ),
    case(
        "no-target-nobody-fit",
        active(switchover=switchover(None), view=world(A_ACTIVE, member("b", healthy=False))),
        Action.STAY_ACTIVE,
    ),
    case(
        "just-before-expiry",
        active(switchover=switchover("b", seen_at=NOW - 29.5)),
        Action.STEP_DOWN,
        target="b",
    ),
    case(
        "promotion-unfinished-still-hands-over",
        active(switchover=switchover("b"), db_token=6),
        Action.STEP_DOWN,
        target="b",
    ),
    case(
        "store-view-missing-waits",
        active(switchover=switchover("b"), view=None),
        Action.STAY_ACTIVE,
    ),
]


@pytest.mark.parametrize(("obs", "cfg", "action", "target", "state"), SWITCHOVER_CASES)
def test_switchover_at_the_active(
    obs: Observation, cfg: DecisionConfig, action: Action, target: str | None, state: NodeState
) -> None:
    decision = check(obs, cfg, action, target, state)
    assert not decision.clear_switchover
    assert decision.deadline == NOW + 7


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(switchover("b", frm="c"), id="from-another-node"),
        pytest.param(switchover("b", seen_at=NOW - 30), id="expired-at-boundary"),
        pytest.param(switchover("a"), id="target-is-the-active"),
    ],
)
def test_switchover_request_cleared(request_: SwitchoverRequest) -> None:
    decision = decide(active(switchover=request_), CFG)
    assert decision.action is Action.STAY_ACTIVE
    assert decision.clear_switchover


FENCED_A = member("a", role=NodeRole.FENCED)

STANDBY_SWITCHOVER_CASES = [
    case(
        "non-target-holds-back",
        standby(
            node_name="c",
            view=leaderless(FENCED_A, member("b", 90), member("c")),
            switchover=switchover("b"),
        ),
        Action.NONE,
    ),
    case(
        "non-target-holds-back-while-old-active-gone",
        standby(
            node_name="c",
            view=leaderless(member("b", 90), member("c")),
            switchover=switchover("b"),
        ),
        Action.NONE,
    ),
    case(
        "non-target-after-expiry-campaigns",
        standby(
            node_name="c",
            view=leaderless(member("b", 90), member("c")),
            switchover=switchover("b", seen_at=NOW - 30),
        ),
        Action.CAMPAIGN,
    ),
    case(
        "old-active-competes-again-after-expiry",
        standby(
            node_name="c",
            view=leaderless(FENCED_A, member("b", 90), member("c")),
            switchover=switchover("b", seen_at=NOW - 30),
        ),
        Action.NONE,
    ),
    case(
        # the target's record blips unhealthy as the old active stops: it still goes first
        "non-target-holds-back-within-one-ttl-of-the-request-for-an-unhealthy-target",
        standby(
            node_name="c",
            view=leaderless(FENCED_A, member("b", healthy=False), member("c")),
            switchover=switchover("b"),
        ),
        Action.NONE,
    ),
    case(
        "non-target-when-target-unhealthy-one-ttl-after-the-request",
        standby(
            node_name="c",
            view=leaderless(FENCED_A, member("b", healthy=False), member("c")),
            switchover=switchover("b", seen_at=NOW - 10),
        ),
        Action.CAMPAIGN,
    ),
    case(
        "non-target-when-target-gone",
        standby(node_name="c", view=leaderless(FENCED_A, member("c")), switchover=switchover("b")),
        Action.CAMPAIGN,
    ),
    case(
        "target-ignores-smaller-named-peer",
        standby(
            node_name="c",
            view=leaderless(FENCED_A, member("b"), member("c")),
            switchover=switchover("c"),
        ),
        Action.CAMPAIGN,
        state=NodeState.PROMOTING,
    ),
    case(
        "target-waits-for-old-active-position",
        standby(
            node_name="c",
            db=attrs.evolve(STANDBY_DB, position=99),
            view=leaderless(FENCED_A, member("c", 99)),
            switchover=switchover("c"),
        ),
        Action.NONE,
    ),
    case(
        # The step-down cut the target's stream: it reports its last restartpoint's timeline.
        "target-takes-over-at-the-old-actives-position-whatever-timeline-it-reports",
        standby(
            node_name="c",
            db=attrs.evolve(STANDBY_DB, timeline=1, following=None),
            view=leaderless(member("a", 100, role=NodeRole.FENCED, timeline=2), member("c")),
            switchover=switchover("c"),
        ),
        Action.CAMPAIGN,
        state=NodeState.PROMOTING,
    ),
    case(
        "untargeted-standby-still-ranks-the-old-actives-timeline",
        standby(
            db=attrs.evolve(STANDBY_DB, timeline=1, following=None),
            view=leaderless(member("a", 100, role=NodeRole.FENCED, timeline=2), member("b")),
            switchover=switchover(None),
        ),
        Action.NONE,
    ),
    case(
        "old-active-never-campaigns-while-pending",
        standby(
            node_name="a",
            db=FENCED_DB,
            view=leaderless(FENCED_A, member("b", 1)),
            switchover=switchover("b"),
        ),
        Action.NONE,
        state=NodeState.FENCED,
    ),
    case(
        "untargeted-old-active-is-no-competitor",
        standby(
            view=leaderless(member("a", 100, role=NodeRole.FENCED), member("b"), member("c")),
            switchover=switchover(None),
        ),
        Action.CAMPAIGN,
    ),
    case(
        "untargeted-peer-still-ranks",
        standby(
            node_name="c",
            view=leaderless(FENCED_A, member("b"), member("c")),
            switchover=switchover(None),
        ),
        Action.NONE,
    ),
]


@pytest.mark.parametrize(("obs", "cfg", "action", "target", "state"), STANDBY_SWITCHOVER_CASES)
def test_switchover_at_the_standbys(
    obs: Observation, cfg: DecisionConfig, action: Action, target: str | None, state: NodeState
) -> None:
    check(obs, cfg, action, target, state)


def test_the_target_short_of_the_old_active_looks_again_soon() -> None:
    """The gap is WAL still streaming: a loop_wait later would only delay the switchover."""
    short = standby(
        node_name="c",
        db=attrs.evolve(STANDBY_DB, position=99),
        view=leaderless(FENCED_A, member("c", 99)),
        switchover=switchover("c"),
    )
    decision = decide(short, CFG)
    assert (decision.action, decision.observe_soon) == (Action.NONE, True), decision.reason
    caught_up = attrs.evolve(short, db=STANDBY_DB)
    assert decide(caught_up, CFG).action is Action.CAMPAIGN
    # A real rival ranking higher is waited for a loop, as ever.
    rival = standby(node_name="c", view=leaderless(member("b", 200), member("c")))
    assert not decide(rival, CFG).observe_soon


# -- rule 5: health ------------------------------------------------------------------------------

FAILING = HealthReport(failing={"services"})
EXPIRED = HealthReport(failing={"services"}, expired={"services"})

HEALTH_CASES = [
    case("fail-fast-steps-down", active(health=FAILING), Action.STEP_DOWN, cfg=FAIL_FAST),
    case("failing-within-ttl-tolerated", active(health=FAILING), Action.STAY_ACTIVE),
    case("expired-steps-down", active(health=EXPIRED), Action.STEP_DOWN, state=NodeState.FENCED),
    case(
        "fail-fast-store-uncertain-fences",
        active(health=FAILING, lease_status=LeaseStatus.UNCERTAIN, view=None),
        Action.FENCE,
        cfg=FAIL_FAST,
    ),
    case(
        "failing-promotion-steps-down",
        active(health=EXPIRED, db=STANDBY_DB),
        Action.STEP_DOWN,
    ),
]


@pytest.mark.parametrize(("obs", "cfg", "action", "target", "state"), HEALTH_CASES)
def test_health(
    obs: Observation, cfg: DecisionConfig, action: Action, target: str | None, state: NodeState
) -> None:
    check(obs, cfg, action, target, state)


# -- rule 6: followers ---------------------------------------------------------------------------

FOLLOWER_CASES = [
    case("following-leader", standby(), Action.NONE, state=NodeState.STANDBY),
    case(
        "following-nobody",
        standby(db=attrs.evolve(STANDBY_DB, following=None)),
        Action.FOLLOW,
        target="a",
    ),
    case(
        "following-old-leader",
        standby(view=led_by("c")),
        Action.FOLLOW,
        target="c",
        state=NodeState.STANDBY,
    ),
    case("diverged", standby(needs_rewind=True), Action.REWIND, target="a"),
    case(
        "fenced-primary-rejoins",
        standby(db=FENCED_DB),
        Action.REWIND,
        target="a",
        state=NodeState.REJOINING,
    ),
    case(
        "stopped-starts-as-standby",
        standby(db=STOPPED_DB, previous=NodeState.STANDBY),
        Action.START_STANDBY,
        target="a",
        state=NodeState.STANDBY,
    ),
    case(
        "stopped-former-active-rewinds",
        standby(db=STOPPED_DB, previous=NodeState.ACTIVE),
        Action.REWIND,
        target="a",
    ),
    case(
        "stopped-fenced-rewinds",
        standby(db=STOPPED_DB, previous=NodeState.FENCED),
        Action.REWIND,
        target="a",
    ),
    case(
        "stopped-diverged-rewinds",
        standby(db=STOPPED_DB, needs_rewind=True),
        Action.REWIND,
        target="a",
    ),
    case(
        "stopped-without-leader-starts-read-only",
        standby(db=STOPPED_DB, view=leaderless()),
        Action.START_STANDBY,
        state=NodeState.STANDBY,
    ),
    case(
        "stopped-store-unreachable-waits",
        standby(db=STOPPED_DB, view=None, previous=NodeState.FENCED),
        Action.NONE,
        state=NodeState.FENCED,
    ),
    case(
        "empty-clones",
        standby(db=STOPPED_DB, initialized=False),
        Action.CLONE,
        target="a",
        state=NodeState.CLONING,
    ),
    case(
        "empty-without-leader-never-bootstraps",
        standby(db=STOPPED_DB, initialized=False, view=leaderless()),
        Action.NONE,
        state=NodeState.EMPTY,
    ),
    case(
        "empty-store-unreachable",
        standby(db=STOPPED_DB, initialized=False, view=None),
        Action.NONE,
        state=NodeState.EMPTY,
    ),
    case(
        "clone-running",
        standby(db=STOPPED_DB, initialized=False, job=Action.CLONE),
        Action.NONE,
        state=NodeState.CLONING,
    ),
    case(
        "rewind-running",
        standby(db=STOPPED_DB, job=Action.REWIND),
        Action.NONE,
        state=NodeState.REJOINING,
    ),
]


@pytest.mark.parametrize(("obs", "cfg", "action", "target", "state"), FOLLOWER_CASES)
def test_followers(
    obs: Observation, cfg: DecisionConfig, action: Action, target: str | None, state: NodeState
) -> None:
    check(obs, cfg, action, target, state)


# -- a leader that has not finished its promotion is neither copied nor followed ----------------

PROMOTING_LEADER = led_by("c", role=NodeRole.STARTING)
NO_LEADER_RECORD = world(member("a"), member("b"), leader="c", token=8)

NOT_ACTIVE_YET_CASES = [
    case(
        "empty-waits-for-promoting-leader",
        standby(db=STOPPED_DB, initialized=False, view=PROMOTING_LEADER),
        Action.NONE,
        state=NodeState.EMPTY,
    ),
    case(
        "empty-waits-for-leader-record",
        standby(db=STOPPED_DB, initialized=False, view=NO_LEADER_RECORD),
        Action.NONE,
        state=NodeState.EMPTY,
    ),
    case(
        "empty-waits-for-fenced-leader",
        standby(db=STOPPED_DB, initialized=False, view=led_by("c", role=NodeRole.FENCED)),
        Action.NONE,
        state=NodeState.EMPTY,
    ),
    case(
        "empty-clones-once-leader-active",
        standby(db=STOPPED_DB, initialized=False, view=led_by("c")),
        Action.CLONE,
        target="c",
        state=NodeState.CLONING,
    ),
    case(
        "standby-keeps-old-upstream-until-leader-active",
        standby(view=PROMOTING_LEADER),
        Action.NONE,
        state=NodeState.STANDBY,
    ),
    case(
        "standby-already-following-promoting-leader",
        standby(db=attrs.evolve(STANDBY_DB, following="c"), view=PROMOTING_LEADER),
        Action.NONE,
        state=NodeState.STANDBY,
    ),
    case(
        "stopped-starts-read-only-until-leader-active",
        standby(db=STOPPED_DB, view=PROMOTING_LEADER),
        Action.START_STANDBY,
        state=NodeState.STANDBY,
    ),
    case(
        "stopped-former-active-waits-to-rewind",
        standby(db=STOPPED_DB, previous=NodeState.ACTIVE, view=PROMOTING_LEADER),
        Action.NONE,
        state=NodeState.FENCED,
    ),
    case(
        "fenced-primary-waits-to-rewind",
        standby(db=FENCED_DB, view=PROMOTING_LEADER),
        Action.NONE,
        state=NodeState.FENCED,
    ),
    case(
        "diverged-standby-waits-to-rewind",
        standby(needs_rewind=True, view=PROMOTING_LEADER),
        Action.NONE,
        state=NodeState.STANDBY,
    ),
    case(
        "writable-fences-at-once-rewinds-later",
        standby(db=PRIMARY_DB, view=PROMOTING_LEADER),
        Action.FENCE,
        state=NodeState.FENCED,
    ),
    case(
        "lost-lease-fences-at-once-rewinds-later",
        active(lease_status=LeaseStatus.LOST, view=NO_LEADER_RECORD),
        Action.FENCE,
        state=NodeState.FENCED,
    ),
]


@pytest.mark.parametrize(("obs", "cfg", "action", "target", "state"), NOT_ACTIVE_YET_CASES)
def test_leader_not_active_yet(
    obs: Observation, cfg: DecisionConfig, action: Action, target: str | None, state: NodeState
) -> None:
    decision = check(obs, cfg, action, target, state)
    if action is not Action.CLONE and obs.db.following != "c":
        assert "waits until the leader c " in decision.reason


# -- rules 7-9: removed, resumability, blind -----------------------------------------------------

MISC_CASES = [
    case("active-removed", active(removed=True), Action.STEP_DOWN, state=NodeState.REMOVED),
    case(
        "active-removed-store-uncertain",
        active(removed=True, lease_status=LeaseStatus.UNCERTAIN, view=None),
        Action.FENCE,
        state=NodeState.REMOVED,
    ),
    case("standby-removed", standby(removed=True), Action.NONE, state=NodeState.REMOVED),
    case(
        "removed-writable-fenced",
        standby(removed=True, db=PRIMARY_DB, view=leaderless()),
        Action.FENCE,
    ),
    case(
        "own-key-without-lease-asks-the-store",
        standby(node_name="a", view=world(), previous=NodeState.INIT),
        Action.CAMPAIGN,
        state=NodeState.PROMOTING,
    ),
    case(
        "own-key-writable-fences-first",
        standby(node_name="a", db=PRIMARY_DB, view=world()),
        Action.FENCE,
        state=NodeState.FENCED,
    ),
    case(
        "own-key-fenced-asks-the-store",
        standby(node_name="a", db=FENCED_DB, view=world(), previous=NodeState.FENCED),
        Action.CAMPAIGN,
        state=NodeState.PROMOTING,
    ),
    case(
        "own-key-stopped-asks-the-store",
        standby(node_name="a", db=STOPPED_DB, view=world()),
        Action.CAMPAIGN,
    ),
    case(
        # Our live session would keep the key forever: reclaim it, then step down (rule 2).
        "own-key-failing-checks-asks-the-store",
        standby(node_name="a", view=world(), health=HealthReport(expired={"services"})),
        Action.CAMPAIGN,
    ),
    case(
        "own-key-after-lost-renewal-asks-the-store",
        active(lease_status=LeaseStatus.LOST, db=FENCED_DB),
        Action.CAMPAIGN,
    ),
    case(
        "own-key-with-another-lease-asks-the-store",
        active(lease=attrs.evolve(LEASE, token=6), db=FENCED_DB),
        Action.CAMPAIGN,
    ),
    case(
        "own-key-store-unreachable-waits",
        standby(node_name="a", db=FENCED_DB, view=None),
        Action.NONE,
        state=NodeState.FENCED,
    ),
    case(
        "own-key-removed-never-campaigns",
        standby(node_name="a", view=world(), removed=True),
        Action.NONE,
        state=NodeState.REMOVED,
    ),
    case(
        "own-key-while-rewinding-waits",
        standby(node_name="a", view=world(), job=Action.REWIND),
        Action.NONE,
        state=NodeState.REJOINING,
    ),
    case("held-standby-db-promotes", active(db=STANDBY_DB), Action.PROMOTE),
    case("held-fenced-db-promotes", active(db=FENCED_DB), Action.PROMOTE),
    case("held-stopped-db-promotes", active(db=STOPPED_DB), Action.PROMOTE),
    case(
        "held-token-not-recorded-promotes",
        active(db_token=6),
        Action.PROMOTE,
        state=NodeState.ACTIVE,
    ),
    case("held-no-token-promotes", active(db_token=None), Action.PROMOTE),
    case(
        "held-without-data-steps-down",
        active(db=STOPPED_DB, initialized=False),
        Action.STEP_DOWN,
    ),
    case("held-store-view-missing", active(view=None), Action.STAY_ACTIVE),
    case("standby-store-unreachable", standby(view=None), Action.NONE, state=NodeState.STANDBY),
    case(
        "standby-store-unreachable-no-leader-known",
        standby(view=None, db=attrs.evolve(STANDBY_DB, following=None)),
        Action.NONE,
    ),
]


@pytest.mark.parametrize(("obs", "cfg", "action", "target", "state"), MISC_CASES)
def test_removed_resumable_and_blind(
    obs: Observation, cfg: DecisionConfig, action: Action, target: str | None, state: NodeState
) -> None:
    check(obs, cfg, action, target, state)


def test_a_reclaimed_key_of_this_session_is_promoted_at_once() -> None:
    """The campaign's answer was lost; the retry returns the same lease, and the next
    decision finishes the promotion (here: lifting the fence of our own old primary)."""
    lost_answer = standby(node_name="a", db=FENCED_DB, view=world(), previous=NodeState.FENCED)
    assert decide(lost_answer, CFG).action is Action.CAMPAIGN
    reclaimed = attrs.evolve(
        lost_answer, lease_status=LeaseStatus.HELD, lease=LEASE, last_renewal=NOW
    )
    decision = decide(reclaimed, CFG)
    assert (decision.action, decision.next_state) == (Action.PROMOTE, NodeState.ACTIVE)


def test_promote_and_campaign_carry_the_deadline_only_when_leasing() -> None:
    assert decide(active(db=STANDBY_DB), CFG).deadline == NOW + 7
    assert decide(standby(view=leaderless()), CFG).deadline is None


# -- records -------------------------------------------------------------------------------------


def test_campaign_blocker_is_what_members_publish() -> None:
    assert campaign_blocker(standby(view=leaderless()), CFG) is None
    assert campaign_blocker(standby(health=FAILING), CFG) == "failing checks: services"
    assert "switchover" in (campaign_blocker(standby(switchover=switchover("c")), CFG) or "")


@pytest.mark.parametrize(
    ("ttl", "loop_wait", "retry_timeout", "margin"),
    [
        pytest.param(10, 2, 3, 2, id="budget-equals-ttl"),
        pytest.param(10, 5, 3, 0, id="budget-over-ttl"),
        pytest.param(10, 0, 1, 1, id="zero-loop-wait"),
        pytest.param(10, 1, 1, -1, id="negative-margin"),
    ],
)
def test_config_rejects_unsafe_timing(
    ttl: float, loop_wait: float, retry_timeout: float, margin: float
) -> None:
    with pytest.raises(ConfigError):
        DecisionConfig(
            ttl=ttl, loop_wait=loop_wait, retry_timeout=retry_timeout, safety_margin=margin
        )


def test_config_accepts_budget_just_under_ttl() -> None:
    assert DecisionConfig(ttl=10, loop_wait=1.9, retry_timeout=3, safety_margin=2).ttl == 10


def test_decision_target_matches_action() -> None:
    with pytest.raises(ValueError, match="needs a target"):
        Decision(Action.FOLLOW, NodeState.STANDBY, "x")
    with pytest.raises(ValueError, match="takes no target"):
        Decision(Action.NONE, NodeState.STANDBY, "x", target="a")
    assert Decision(Action.START_STANDBY, NodeState.STANDBY, "x").target is None


def test_observation_rejects_inconsistent_input() -> None:
    with pytest.raises(ValueError, match="needs lease"):
        active(lease=None)
    with pytest.raises(ValueError, match="needs lease"):
        active(last_renewal=None)
    with pytest.raises(ValueError, match="off the loop"):
        standby(job=Action.FOLLOW)


def test_every_state_publishes_a_role() -> None:
    roles = {state: state.role for state in NodeState}
    assert roles[NodeState.ACTIVE] is NodeRole.ACTIVE
    assert roles[NodeState.REJOINING] is NodeRole.FENCED
    assert roles[NodeState.REMOVED] is NodeRole.REMOVED


# -- a database that does not answer (DESIGN rule 7, issue 9) -----------------------------------

UNKNOWN_DB = UNKNOWN_STATUS
SYNC_KEY = ActiveStatus("a", position=100, timeline=1, sync_standbys=frozenset({"b"}))

UNKNOWN_DB_CASES = [
    # The active's status query timed out: not "primary, not writable", so no PROMOTE (which
    # writes the status key with no synchronous standby) and no STAY_ACTIVE (which rewrites it).
    case("active-held-unknown-holds", active(db=UNKNOWN_DB), Action.NONE, state=NodeState.ACTIVE),
    case(
        "active-held-unknown-sync-holds",
        active(db=UNKNOWN_DB, active_status=SYNC_KEY),
        Action.NONE,
        state=NodeState.ACTIVE,
        cfg=SYNC,
    ),
    case(
        "active-uncertain-unknown-holds",
        active(db=UNKNOWN_DB, lease_status=LeaseStatus.UNCERTAIN),
        Action.NONE,
        state=NodeState.ACTIVE,
    ),
    case(
        "promoting-unknown-holds",
        active(db=UNKNOWN_DB, previous=NodeState.PROMOTING, db_token=None),
        Action.NONE,
        state=NodeState.PROMOTING,
    ),
    # The failing database check is what hands over: at once with check_fail_fast ...
    case(
        "active-unknown-failing-check-fail-fast",
        active(db=UNKNOWN_DB, health=HealthReport(failing={"database_queries"})),
        Action.STEP_DOWN,
        state=NodeState.FENCED,
        cfg=FAIL_FAST,
    ),
    # ... and once it expired without (the check TTL) ...
    case(
        "active-unknown-failing-not-expired",
        active(db=UNKNOWN_DB, health=HealthReport(failing={"database_queries"})),
        Action.NONE,
        state=NodeState.ACTIVE,
    ),
    case(
        "active-unknown-expired-check",
        active(db=UNKNOWN_DB, health=HealthReport(expired={"database_queries"})),
        Action.STEP_DOWN,
        state=NodeState.FENCED,
    ),
    case(
        "active-uncertain-unknown-expired-fences",
        active(
            db=UNKNOWN_DB,
            lease_status=LeaseStatus.UNCERTAIN,
            health=HealthReport(expired={"database_queries"}),
        ),
        Action.FENCE,
        state=NodeState.FENCED,
    ),
    # ... and the deadline always wins.
    case(
        "active-unknown-past-deadline",
        active(db=UNKNOWN_DB, last_renewal=NOW - 8),
        Action.FENCE,
        state=NodeState.FENCED,
    ),
    # Without a standing lease, an unknown database that was the active's may still write.
    case(
        "lost-lease-unknown-former-active-fences",
        active(db=UNKNOWN_DB, lease_status=LeaseStatus.LOST, view=led_by("b")),
        Action.FENCE,
        state=NodeState.FENCED,
    ),
    case(
        "no-store-unknown-former-active-fences",
        active(db=UNKNOWN_DB, lease_status=LeaseStatus.NONE, lease=None, view=None),
        Action.FENCE,
        state=NodeState.FENCED,
    ),
    # A standby whose database does not answer is neither stopped (START_STANDBY) nor
    # following someone else (FOLLOW), nor rewound, nor a candidate.
    case("standby-unknown-rests", standby(db=UNKNOWN_DB), Action.NONE, state=NodeState.STANDBY),
    case(
        "standby-unknown-new-leader-rests",
        standby(db=UNKNOWN_DB, view=led_by("c")),
        Action.NONE,
        state=NodeState.STANDBY,
    ),
    case(
        "standby-unknown-needs-rewind-rests",
        standby(db=UNKNOWN_DB, view=led_by("c"), needs_rewind=True),
        Action.NONE,
    ),
    case(
        "standby-unknown-no-leader-no-campaign",
        standby(db=UNKNOWN_DB, view=leaderless(), active_status=SYNC_KEY),
        Action.NONE,
        cfg=SYNC,
    ),
]


@pytest.mark.parametrize(("obs", "cfg", "action", "target", "state"), UNKNOWN_DB_CASES)
def test_an_unknown_database_is_not_a_guess(
    obs: Observation,
    cfg: DecisionConfig,
    action: Action,
    target: str | None,
    state: NodeState | None,
) -> None:
    check(obs, cfg, action, target, state)


def test_the_unknown_active_keeps_its_deadline() -> None:
    decision = decide(active(db=UNKNOWN_DB), CFG)
    assert decision.deadline == NOW - 1 + CFG.ttl - CFG.safety_margin
    assert "unknown" in decision.reason


def test_campaign_blocker_names_an_unknown_database() -> None:
    obs = standby(db=UNKNOWN_DB, view=leaderless(), active_status=SYNC_KEY)
    assert campaign_blocker(obs, SYNC) == "the local database did not answer: its state is unknown"


def test_the_synchronous_standby_takes_over_from_a_hung_active() -> None:
    """Issue 9's chain, end to end through decide: the hung active writes nothing, steps down
    once its database check fails, and the status key it left still names b, so b (and
    only b) campaigns."""
    hung = active(db=UNKNOWN_DB, active_status=SYNC_KEY)
    assert decide(hung, SYNC).action is Action.NONE  # nothing written while it holds
    failing = attrs.evolve(hung, health=HealthReport(expired={"database_queries"}))
    assert decide(failing, SYNC).action is Action.STEP_DOWN
    # after the resign: the old active published no position (its database was unknown)
    # and is unhealthy; c is not a synchronous standby
    after = leaderless(
        member("a", position=None, role=NodeRole.FENCED, healthy=False), member("b"), member("c")
    )
    b = standby(view=after, active_status=SYNC_KEY, db=attrs.evolve(STANDBY_DB, following=None))
    c = attrs.evolve(b, node_name="c")
    assert campaign_blocker(b, SYNC) is None
    assert decide(b, SYNC).action is Action.CAMPAIGN
    assert decide(c, SYNC).action is Action.NONE
    assert "neither a synchronous standby" in (campaign_blocker(c, SYNC) or "")


# -- properties over random observations ---------------------------------------------------------

NAMES = ("a", "b", "c")
positions = st.one_of(st.none(), st.integers(0, 4))
timelines = st.one_of(st.none(), st.integers(1, 2))


@st.composite
def members(draw: st.DrawFn) -> tuple[Member, ...]:
    chosen = draw(st.lists(st.sampled_from(NAMES), unique=True, max_size=3))
    return tuple(
        Member(
            name=name,
            role=draw(st.sampled_from(NodeRole)),
            healthy=draw(st.booleans()),
            position=draw(positions),
            timeline=draw(timelines),
            candidate=draw(st.booleans()),
        )
        for name in chosen
    )


@st.composite
def observations(draw: st.DrawFn) -> Observation:
    name = draw(st.sampled_from(NAMES))
    leader = draw(
        st.one_of(st.none(), st.builds(Leader, st.sampled_from(NAMES), st.integers(5, 9)))
    )
    view = draw(st.one_of(st.none(), st.builds(ClusterView, st.just(leader), members())))
    status = draw(st.sampled_from(LeaseStatus))
    lease = Lease(holder=name, token=draw(st.integers(5, 9)), ttl=10, acquired_at=0.0)
    role = draw(st.sampled_from(ReplicationRole))
    db = ReplicationStatus(
        running=role not in (ReplicationRole.STOPPED, ReplicationRole.UNKNOWN)
        and draw(st.booleans()),
        role=role,
        writable=draw(st.booleans()),
        position=draw(positions),
        timeline=draw(timelines),
        following=draw(st.one_of(st.none(), st.sampled_from(NAMES))),
    )
    checks = st.frozensets(st.sampled_from(["db", "services"]))
    return Observation(
        now=NOW,
        node_name=name,
        view=view,
        db=db,
        initialized=draw(st.booleans()),
        lease_status=status,
        lease=lease,
        last_renewal=NOW - draw(st.floats(0, 20)),
        health=HealthReport(failing=draw(checks), expired=draw(checks)),
        removed=draw(st.booleans()),
        switchover=draw(
            st.one_of(
                st.none(),
                st.builds(
                    SwitchoverRequest,
                    st.sampled_from(NAMES),
                    st.one_of(st.none(), st.sampled_from(NAMES)),
                    st.floats(NOW - 60, NOW),
                ),
            )
        ),
        db_token=draw(st.one_of(st.none(), st.integers(5, 9))),
        veto_until=draw(st.one_of(st.none(), st.floats(NOW - 5, NOW + 5))),
        previous=draw(st.sampled_from(NodeState)),
        active_status=draw(
            st.one_of(
                st.none(),
                st.builds(
                    ActiveStatus,
                    st.sampled_from(NAMES),
                    positions,
                    timelines,
                    st.frozensets(st.sampled_from(NAMES)),
                ),
            )
        ),
        needs_rewind=draw(st.booleans()),
        job=draw(st.sampled_from([None, Action.CLONE, Action.REWIND, Action.FENCE_AND_REWIND])),
    )


configs = st.builds(
    DecisionConfig,
    ttl=st.just(10.0),
    loop_wait=st.just(1.0),
    retry_timeout=st.just(2.0),
    safety_margin=st.just(2.0),
    synchronous_mode=st.sampled_from(SyncMode),
    check_fail_fast=st.booleans(),
    maximum_lag_on_failover=st.one_of(st.none(), st.integers(0, 4)),
)


def _writable(obs: Observation) -> bool:
    return obs.db.running and obs.db.role is ReplicationRole.PRIMARY and obs.db.writable


def _leasing(obs: Observation) -> bool:
    return obs.lease_status in (LeaseStatus.HELD, LeaseStatus.UNCERTAIN)


@settings(max_examples=400, deadline=None, database=None)
@given(observations(), configs)
def test_safety_properties(obs: Observation, cfg: DecisionConfig) -> None:
    d = decide(obs, cfg)
    leader = obs.view.leader if obs.view is not None else None
    past_deadline = (obs.last_renewal or 0.0) + cfg.ttl - cfg.safety_margin <= obs.now

    if d.action is Action.CAMPAIGN:
        assert obs.view is not None, "campaigned blind"
        assert not obs.removed and obs.initialized and not _writable(obs)
        if leader is not None:
            assert leader.name == obs.node_name, "campaigned against another node's key"
        else:
            assert obs.health.ok
    if d.action is Action.PROMOTE:
        assert obs.lease_status is LeaseStatus.HELD and not past_deadline
        assert obs.view is None or leader == Leader(obs.node_name, obs.lease.token)
    if d.action is Action.STAY_ACTIVE:
        assert _leasing(obs) and not past_deadline and _writable(obs)
    if _writable(obs) and leader is not None and leader.name != obs.node_name:
        assert d.action in (Action.FENCE, Action.FENCE_AND_REWIND)
    if _writable(obs):
        assert d.action in (
            Action.STAY_ACTIVE,
            Action.PROMOTE,
            Action.STEP_DOWN,
            Action.FENCE,
            Action.FENCE_AND_REWIND,
        ), "a writable database was neither kept under a lease nor fenced"
    if _leasing(obs) and past_deadline:
        assert d.action not in (Action.STAY_ACTIVE, Action.PROMOTE, Action.CAMPAIGN)
    if obs.removed:
        assert d.action not in (Action.CAMPAIGN, Action.PROMOTE, Action.STAY_ACTIVE)
    if not obs.db.known:
        # DESIGN rule 7: nothing is built on a database that did not answer; the actions
        # that write the status key (PROMOTE, STAY_ACTIVE) above all.
        assert d.action not in (
            Action.PROMOTE,
            Action.STAY_ACTIVE,
            Action.START_STANDBY,
            Action.FOLLOW,
            Action.REWIND,
        )
        if d.action is Action.CAMPAIGN:
            assert leader is not None and leader.name == obs.node_name, "campaigned blind"
        if obs.job is None and obs.previous in (NodeState.ACTIVE, NodeState.PROMOTING):
            assert d.action in (Action.NONE, Action.FENCE, Action.STEP_DOWN)
    assert d.target != obs.node_name
    assert d.next_state is not NodeState.INIT
    if d.target is not None and d.action is not Action.STEP_DOWN:
        source = obs.view.member(d.target) if obs.view is not None else None
        assert source is not None and source.role is NodeRole.ACTIVE, "copied a promoting leader"


@st.composite
def elections(draw: st.DrawFn) -> tuple[list[Observation], DecisionConfig]:
    """A consistent leaderless world: every member published exactly what it observed."""
    cfg = draw(configs)
    names = draw(st.lists(st.sampled_from("pqrstu"), min_size=1, max_size=5, unique=True))
    status = ActiveStatus(
        name=draw(st.sampled_from(names)),
        position=4,
        sync_standbys=draw(st.frozensets(st.sampled_from(names))),
    )
    first: list[Observation] = []
    for name in names:
        db = ReplicationStatus(
            running=True,
            role=draw(st.sampled_from([ReplicationRole.STANDBY, ReplicationRole.PRIMARY])),
            position=draw(st.integers(0, 4)),
            timeline=draw(st.integers(1, 2)),
        )
        health = HealthReport(failing=draw(st.sampled_from([(), ("db",)])))
        veto = draw(st.sampled_from([None, NOW + 1]))
        first.append(
            Observation(
                now=NOW,
                node_name=name,
                view=ClusterView(leader=None),
                db=db,
                initialized=True,
                health=health,
                veto_until=veto,
                active_status=status,
            )
        )
    published = tuple(
        Member(
            name=o.node_name,
            role=NodeRole.FENCED if o.db.role is ReplicationRole.PRIMARY else NodeRole.STANDBY,
            healthy=o.health.ok,
            position=o.db.position,
            timeline=o.db.timeline,
            candidate=campaign_blocker(o, cfg) is None,
        )
        for o in first
    )
    return [attrs.evolve(o, view=ClusterView(None, published)) for o in first], cfg


@settings(max_examples=300, deadline=None, database=None)
@given(elections())
def test_exactly_one_eligible_member_campaigns(
    world_: tuple[list[Observation], DecisionConfig],
) -> None:
    nodes, cfg = world_
    campaigning = [o.node_name for o in nodes if decide(o, cfg).action is Action.CAMPAIGN]
    eligible = [o for o in nodes if campaign_blocker(o, cfg) is None]
    assert len(campaigning) == (1 if eligible else 0), campaigning
    if eligible:
        best = max(
            sorted(eligible, key=lambda o: o.node_name),
            key=lambda o: (o.db.timeline, o.db.position),
        )
        assert campaigning == [best.node_name]


def test_no_campaign_on_a_lease_past_its_deadline_that_the_store_no_longer_names() -> None:
    # Found by test_safety_properties: the key vanished while our renewal is already older
    # than the self-fencing deadline; campaigning would act on a lease that may have expired.
    cfg = DecisionConfig(ttl=10.0, loop_wait=1.0, retry_timeout=2.0, safety_margin=2.0)
    obs = Observation(
        now=1000.0,
        node_name="a",
        view=ClusterView(None, ()),
        db=ReplicationStatus(
            running=True, role=ReplicationRole.PRIMARY, writable=False, position=0
        ),
        initialized=True,
        lease_status=LeaseStatus.HELD,
        lease=Lease(holder="a", token=5, ttl=10, acquired_at=0.0),
        last_renewal=992.0,
    )
    d = decide(obs, cfg)
    assert d.action is Action.NONE
    assert "deadline" in d.reason
    fresh = decide(attrs.evolve(obs, last_renewal=999.0), cfg)
    assert fresh.action is Action.CAMPAIGN


# -- rule B1: the founder's first loop ----------------------------------------------------------

FOUNDED = ActiveStatus(name="a", position=100, timeline=1)


def founder(**kw: Any) -> Observation:
    """Node a right after ``cluster start`` bootstrapped its database: writable, no token
    recorded in it, the status key naming it, nobody leading, no other member."""
    base: dict[str, Any] = dict(
        now=NOW,
        node_name="a",
        view=world(member("a", role=NodeRole.ACTIVE), leader=None),
        db=PRIMARY_DB,
        initialized=True,
        db_token=None,
        active_status=FOUNDED,
        previous=NodeState.INIT,
    )
    return Observation(**(base | kw))


FOUNDING_CASES = [
    case("founder-campaigns-writable", founder(), Action.CAMPAIGN, state=NodeState.PROMOTING),
    case("founder-not-yet-listed", founder(view=ClusterView(None, ())), Action.CAMPAIGN),
    case("founder-sync-mode", founder(), Action.CAMPAIGN, cfg=SYNC),
    # every other situation keeps rule 11: a writable database without a lease is fenced
    case("token-recorded-fences", founder(db_token=3), Action.FENCE, state=NodeState.FENCED),
    case("not-first-loop-fences", founder(previous=NodeState.ACTIVE), Action.FENCE),
    case(
        "status-names-another-fences",
        founder(active_status=attrs.evolve(FOUNDED, name="b")),
        Action.FENCE,
    ),
    case("no-status-key-fences", founder(active_status=None), Action.FENCE),
    case(
        "another-member-fences",
        founder(view=world(member("a"), member("b"), leader=None)),
        Action.FENCE,
    ),
    case("store-unreachable-fences", founder(view=None), Action.FENCE),
    case("removed-fences", founder(removed=True), Action.FENCE),
    case(
        "another-leads-fences",
        founder(view=world(member("a"), member("b", role=NodeRole.ACTIVE), leader="b")),
        Action.FENCE_AND_REWIND,
        target="b",
    ),
]


@pytest.mark.parametrize(("obs", "cfg", "action", "target", "state"), FOUNDING_CASES)
def test_the_founder_keeps_its_fresh_database_writable_while_it_campaigns(
    obs: Observation, cfg: DecisionConfig, action: Action, target: str | None, state: NodeState
) -> None:
    check(obs, cfg, action, target, state)
