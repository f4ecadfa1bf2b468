"""The check runner's grace period for active-only checks after a promotion."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

from hacore.agent import Action, DecisionConfig, LeaseStatus, NodeState, Observation, decide
from hacore.agent.checks import CheckRunner, FilesInSync, LoopFacts
from hacore.backends.filesync import SyncState
from hacore.backends.health import CheckResult, HealthCheck
from hacore.backends.records import ClusterView, Leader, Lease, Member, NodeRole
from hacore.backends.replication import ReplicationRole, ReplicationStatus
from hacore.config.node import load_config
from hacore.errors import ConfigError, FilesyncError


class Switch(HealthCheck):
    """A check whose outcome the test sets, like a service that is still starting."""

    def __init__(self, name: str, *, active_only: bool, ok: bool = False) -> None:
        self.name = name
        self.active_only = active_only
        self.ttl = 10.0
        self.ok = ok

    def run(self) -> CheckResult:
        return CheckResult(self.ok, "up" if self.ok else "not running yet")


@pytest.fixture
def services() -> Switch:
    return Switch("active_services", active_only=True)


@pytest.fixture
def runner(services: Switch) -> Iterator[CheckRunner]:
    made = CheckRunner(
        [services, Switch("database", active_only=False, ok=True)],
        multiplier=1,
        timeout=5,
        active_grace=5,
    )
    yield made
    made.close()


def test_active_only_failures_do_not_count_during_the_grace(
    runner: CheckRunner, services: Switch
) -> None:
    report, results = runner.run(active=True, now=100.0)
    assert report.ok
    assert not results["active_services"].ok
    assert "not counted for 5.0s after promotion" in results["active_services"].detail
    assert runner.run(active=True, now=104.9)[0].ok
    report, results = runner.run(active=True, now=105.1)
    assert report.failing == {"active_services"}
    assert results["active_services"] == CheckResult(False, "not running yet")


def test_a_check_that_passes_in_time_never_fails(runner: CheckRunner, services: Switch) -> None:
    assert runner.run(active=True, now=100.0)[0].ok
    services.ok = True
    assert runner.run(active=True, now=103.0)[0].ok
    assert runner.run(active=True, now=112.0)[0].ok


def test_the_grace_covers_only_active_only_checks(services: Switch) -> None:
    database = Switch("database", active_only=False)
    runner = CheckRunner([services, database], multiplier=1, timeout=5, active_grace=5)
    try:
        report, _ = runner.run(active=True, now=100.0)
        assert report.failing == {"database"}
    finally:
        runner.close()


def test_no_grace_fails_at_once(services: Switch) -> None:
    runner = CheckRunner([services], multiplier=1, timeout=5, active_grace=0)
    try:
        assert runner.run(active=True, now=100.0)[0].failing == {"active_services"}
    finally:
        runner.close()


def test_the_grace_starts_again_at_each_promotion(runner: CheckRunner, services: Switch) -> None:
    runner.run(active=True, now=100.0)
    assert not runner.run(active=True, now=106.0)[0].ok
    report, results = runner.run(active=False, now=107.0)
    assert "active_services" not in results and report.ok
    assert runner.run(active=True, now=200.0)[0].ok
    assert runner.run(active=True, now=206.0)[0].failing == {"active_services"}


def test_a_promotion_starts_every_check_window_again() -> None:
    """The promotion's iteration ran no check: a window counted from the last pass before it
    would be spent by the first late reading after it (a new active stepped down at once)."""
    database = Switch("database", active_only=False, ok=True)
    runner = CheckRunner([database], multiplier=1, timeout=5)
    try:
        assert runner.run(active=False, now=100.0)[0].ok
        database.ok = False
        runner.restart_windows(104.0)  # promoted at 104 s, the last pass at 100 s
        assert runner.run(active=True, now=111.0)[0].expired == set()
        assert runner.run(active=True, now=114.5)[0].expired == {"database"}
    finally:
        runner.close()


def _new_active(health: Any) -> Observation:
    """A node on its first loop as the active: lease renewed, database promoted with its token."""
    lease = Lease(holder="a", token=7, ttl=10, acquired_at=90.0)
    view = ClusterView(Leader("a", 7), (Member(name="a", role=NodeRole.ACTIVE),))
    db = ReplicationStatus(
        running=True, role=ReplicationRole.PRIMARY, writable=True, position=1, timeline=2
    )
    return Observation(
        now=100.0,
        node_name="a",
        view=view,
        db=db,
        initialized=True,
        lease_status=LeaseStatus.HELD,
        lease=lease,
        last_renewal=99.5,
        health=health,
        db_token=7,
        previous=NodeState.ACTIVE,
    )


def test_fail_fast_active_stays_while_its_services_start(
    runner: CheckRunner, services: Switch
) -> None:
    cfg = DecisionConfig(
        ttl=10, loop_wait=1, retry_timeout=2, safety_margin=2, check_fail_fast=True
    )
    first, _ = runner.run(active=True, now=100.0)
    assert decide(_new_active(first), cfg).action is Action.STAY_ACTIVE
    late, _ = runner.run(active=True, now=106.0)
    decision = decide(attrs.evolve(_new_active(late), now=106.0, last_renewal=105.5), cfg)
    assert decision.action is Action.STEP_DOWN
    assert "active_services" in decision.reason


def _config(**checks: Any) -> Any:
    raw = {
        "node": {"name": "n1", "host": "127.0.0.1"},
        "consensus": {"backend": "memory"},
        "checks": checks,
    }
    return load_config(raw)


def test_active_grace_setting() -> None:
    assert _config().checks.active_grace == 10.0
    assert _config(active_grace=0).checks.active_grace == 0.0
    assert _config(active_grace=2.5).checks.active_grace == 2.5
    for bad, shown in ((-1, "-1"), ("soon", '"soon"'), (True, "true")):
        with pytest.raises(ConfigError) as info:
            _config(active_grace=bad)
        assert str(info.value) == (
            f"config error: checks.active_grace must be a number of seconds >= 0 (got {shown})"
        )


class _Files:
    """Only what the files check reads of a filesync backend: its state."""

    def __init__(self) -> None:
        self.state_now = SyncState(False, 40.0, 600, None, "misses 600 bytes in 2 item(s)")
        self.error: str | None = None

    def state(self) -> SyncState:
        if self.error is not None:
            raise FilesyncError(self.error)
        return self.state_now


def test_files_check_fails_a_standby_until_its_first_complete_copy() -> None:
    facts = LoopFacts("b", leader="a")
    files = _Files()
    check = FilesInSync(facts, 10.0, files)  # type: ignore[arg-type]
    first = check.run()
    assert not first.ok and "first copy" in first.detail and "40%" in first.detail
    files.error = "Syncthing does not answer"
    assert not check.run().ok, "no copy yet: an unknown state is not a copy"
    files.error = None
    files.state_now = SyncState(True, 100.0, 0, 1.0, "in sync with a")
    assert check.run() == CheckResult(True, "in sync with a")
    assert check.last == files.state_now
    # after the first copy a lag, or an unknown state, is reported but not a failure
    files.state_now = SyncState(False, 90.0, 100, 2.0, "misses 100 bytes in 1 item(s)")
    lag = check.run()
    assert lag.ok and "catching up" in lag.detail
    files.error = "Syncthing does not answer"
    assert check.run().ok


def test_files_check_passes_on_the_active_and_without_a_leader() -> None:
    files = _Files()
    alone = FilesInSync(LoopFacts("a", leader=None), 10.0, files)  # type: ignore[arg-type]
    assert alone.run().ok
    active = FilesInSync(LoopFacts("a", leader="a", active=True), 10.0, files)  # type: ignore[arg-type]
    result = active.run()
    assert result.ok and result.detail.startswith("the source of the files")


def test_files_check_does_not_hang_on_a_file_sync_that_does_not_answer() -> None:
    gate = threading.Event()
    files = _Files()

    def frozen() -> SyncState:
        gate.wait(30)
        return SyncState(True, 100.0, 0, 3.0, "in sync with a")

    check = FilesInSync(LoopFacts("b", leader="a"), 10.0, files)  # type: ignore[arg-type]
    files.state_now = SyncState(True, 100.0, 0, 1.0, "in sync with a")
    assert check.run().ok
    files.state = frozen  # type: ignore[method-assign]
    began = time.monotonic()
    result = check.run()
    assert time.monotonic() - began < 2 * FilesInSync.answer_within + 1
    assert result.ok and "no answer" in result.detail, "a copy was made: unknown is not a failure"
    gate.set()
    # the answer that came late is taken by the next run
    deadline = time.monotonic() + 10
    while check.last is None or check.last.last_change != 3.0:
        assert time.monotonic() < deadline
        check.run()
    fresh = FilesInSync(LoopFacts("c", leader="a"), 10.0, files)  # type: ignore[arg-type]
    gate.clear()
    assert not fresh.run().ok, "no copy yet: no answer is not a copy"
    gate.set()
