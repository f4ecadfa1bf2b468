"""The supervisor of the servers an agent runs: back-off schedule, restarts off the loop,
what it reports, and its check that never makes a node step down."""

from __future__ import annotations

import logging
import threading

import pytest

from hacore.agent.checks import CheckRunner
from hacore.agent.hooks import NodeLog
from hacore.agent.supervise import (
    RESET_AFTER,
    RestartLog,
    ServerRunning,
    Supervisor,
    ordinal,
    restart_delay,
)


def test_back_off_starts_at_once_then_doubles_from_one_second_up_to_thirty() -> None:
    assert [restart_delay(n) for n in range(8)] == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert restart_delay(100) == 30.0
    assert restart_delay(3, base=0.5, cap=1.5) == 1.5


def test_ordinals() -> None:
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22, 111)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "111th",
    ]  # fmt: skip


def test_restart_log_counts_recent_restarts_in_its_window() -> None:
    restarts = RestartLog(window=60.0)
    for t in (0.0, 10.0, 50.0):
        restarts.record(t)
    assert restarts.total == 3
    assert restarts.recent(55.0) == 3
    assert restarts.recent(65.0) == 2
    assert restarts.recent(200.0) == 0


class FakeServer:
    """A server whose liveness the test sets; ``start`` may be made to fail or to block."""

    kind = "store"
    name = "etcd"

    def __init__(self) -> None:
        self.up: bool | None = True
        self.fail = ""
        self.starts = 0
        self.gate = threading.Event()
        self.gate.set()

    def running(self) -> bool | None:
        return self.up

    def start(self) -> None:
        self.gate.wait(30)
        self.starts += 1
        if self.fail:
            raise RuntimeError(self.fail)
        self.up = True


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def parts() -> tuple[FakeServer, Clock, Supervisor]:
    server, clock = FakeServer(), Clock()
    sup = Supervisor([server], NodeLog(logging.getLogger("test"), "n1"), clock=clock)
    return server, clock, sup


def test_a_dead_server_is_restarted_off_the_loop_and_reported_meanwhile(
    parts: tuple[FakeServer, Clock, Supervisor],
) -> None:
    server, _clock, sup = parts
    sup.tick()
    assert sup.status()[0].up is True
    server.up = False
    server.gate.clear()  # the start blocks: tick() must return at once all the same
    sup.tick()
    (status,) = sup.status()
    assert status.up is False and status.restarting
    assert status.detail == "etcd server down, restarting (1st try)"
    server.gate.set()
    sup.join(10)
    (status,) = sup.status()
    assert status.up is True and status.restarts == 1 and server.starts == 1
    assert "restarted 1 time(s)" in status.detail


def test_failed_restarts_back_off_and_the_count_resets_after_staying_up(
    parts: tuple[FakeServer, Clock, Supervisor],
) -> None:
    server, clock, sup = parts
    sup.tick()
    server.up, server.fail = False, "port 2379 taken"
    sup.tick()
    sup.join(10)
    assert server.starts == 1
    (status,) = sup.status()
    assert status.up is False and not status.restarting
    assert "next restart in 1s (2nd try)" in status.detail
    assert "last try failed: port 2379 taken" in status.detail
    clock.now += 0.5
    sup.tick()
    sup.join(10)
    assert server.starts == 1  # within the back-off: not tried again
    for wait in (1.0, 2.0, 4.0):
        clock.now += wait
        sup.tick()
        sup.join(10)
    assert server.starts == 4
    clock.now += 7.9  # the next delay is 8 s
    sup.tick()
    sup.join(10)
    assert server.starts == 4
    server.fail = ""
    clock.now += 0.2
    sup.tick()
    sup.join(10)
    assert server.starts == 5 and sup.status()[0].up is True
    assert sup.status()[0].attempt == 5
    clock.now += RESET_AFTER + 1
    sup.tick()
    assert sup.status()[0].attempt == 0


def test_a_removed_node_does_not_restart_its_member_but_reports_it(
    parts: tuple[FakeServer, Clock, Supervisor],
) -> None:
    server, _clock, sup = parts
    sup.tick()
    server.up = False
    sup.tick(enabled=False)
    sup.join(10)
    assert server.starts == 0
    assert sup.status()[0].up is False


def test_a_server_not_set_up_here_is_not_supervised(
    parts: tuple[FakeServer, Clock, Supervisor],
) -> None:
    server, _clock, sup = parts
    server.up = None
    sup.tick()
    assert server.starts == 0
    assert sup.status()[0].up is None
    assert ServerRunning(sup, "store", "etcd", 5.0).run().ok


def test_the_check_reports_a_dead_member_but_never_fails_the_node(
    parts: tuple[FakeServer, Clock, Supervisor],
) -> None:
    server, _clock, sup = parts
    server.up, server.fail = False, "no etcd data"
    runner = CheckRunner(sup.checks(5.0), multiplier=1, timeout=5)
    try:
        sup.tick()
        sup.join(10)
        report, results = runner.run(active=True, now=0.0)
        assert not results["store_server"].ok
        assert "etcd server down" in results["store_server"].detail
        report, results = runner.run(active=True, now=100.0)  # long past its TTL
        assert not results["store_server"].ok
        assert report.ok, "a reported-only check must not make the active step down"
    finally:
        runner.close()
