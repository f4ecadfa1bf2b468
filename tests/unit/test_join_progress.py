"""The progress of a start or join: each step's timing, the clone's rate and time left, and
the lines and ``--json`` events the CLI makes of it."""

from __future__ import annotations

from typing import Any

import pytest

from hacore.client import follow
from hacore.cluster import progress as progress_module
from hacore.cluster.progress import Progress, clone_rate, eta

MiB = 1024 * 1024


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(progress_module.time, "monotonic", fake)
    return fake


def test_rate_and_eta_of_samples() -> None:
    assert clone_rate([]) is None
    assert clone_rate([(0.0, 0)]) is None
    assert clone_rate([(1.0, 0), (1.0, 100)]) is None  # no time passed
    assert clone_rate([(0.0, 0), (2.0, 200 * MiB)]) == 100 * MiB
    assert eta(50, 100, None) is None
    assert eta(50, 100, 0.0) is None
    assert eta(50, 150, 25.0) == 4.0
    assert eta(200, 150, 25.0) == 0.0  # the estimated total grew past: never negative


def test_steps_carry_when_they_began_and_ended(clock: Clock) -> None:
    progress = Progress("join", [("ticket", "join ticket"), ("clone", "database copied")])
    clock.now += 0.5
    progress.finish("ticket", "granted")
    clock.now += 0.25
    progress.begin("clone", "waiting")
    clock.now += 1.0
    progress.begin("clone", "copying")  # a new detail keeps the first beginning
    steps = {s["name"]: s for s in progress.to_json()["steps"]}
    assert steps["ticket"]["began"] == steps["ticket"]["ended"] == 0.5
    assert steps["clone"]["began"] == 0.75 and steps["clone"]["ended"] is None
    clock.now += 2.0
    progress.complete("done")
    steps = {s["name"]: s for s in progress.to_json()["steps"]}
    assert steps["clone"]["ended"] == 3.75 and steps["ticket"]["ended"] == 0.5


def test_clone_rate_follows_the_last_seconds_and_is_the_whole_copy_once_done(
    clock: Clock,
) -> None:
    progress = Progress("join", [("clone", "database copied")])
    progress.clone(0, 0)  # the copy begins (before the tool's first report)
    clone = progress.to_json()["clone"]
    assert clone["rate"] is None and clone["eta"] is None and clone["done"] == 0
    # 100 MiB/s for 10 s, then 20 MiB/s: the rate follows within the window
    total = 2000 * MiB
    for second in range(1, 11):
        clock.now += 1.0
        progress.clone(second * 100 * MiB, total)
    clone = progress.to_json()["clone"]
    assert clone["rate"] == 100 * MiB
    assert clone["eta"] == pytest.approx(10.0, abs=0.1)
    assert clone["elapsed"] == pytest.approx(10.0)
    for second in range(1, 11):
        clock.now += 1.0
        progress.clone(1000 * MiB + second * 20 * MiB, total)
    clone = progress.to_json()["clone"]
    assert clone["rate"] == 20 * MiB
    assert clone["eta"] == pytest.approx(40.0, abs=0.1)
    clock.now += 1.0
    progress.clone(total, total)
    clock.now += 5.0  # time after the copy does not lower its rate
    clone = progress.to_json()["clone"]
    assert clone["rate"] == round(total / 21.0)
    assert clone["eta"] == 0.0 and clone["elapsed"] == pytest.approx(21.0)


def op(at: float, report: dict[str, Any] | None, **states: str) -> dict[str, Any]:
    steps = [
        {"name": n, "title": n, "state": s, "detail": "", "began": 0.0, "ended": None}
        for n, s in states.items()
    ]
    return {"elapsed": at, "steps": steps, "clone": report}


def test_the_cli_prints_bytes_rate_and_eta_once_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [0.0]
    monkeypatch.setattr(follow.time, "monotonic", lambda: now[0])
    lines: list[str] = []
    printer = follow._Printer(lines.append)
    clone = {"done": 300 * MiB, "total": 1024 * MiB, "rate": 100 * MiB, "eta": 7.2}
    # polled every tenth of a second: the same report shows once a second, not every poll
    for tick in range(25):
        now[0] = 100 + tick / 10
        printer.show(op(now[0], clone, ticket="done", clone="running"))
    copied = [line for line in lines if "copied" in line]
    assert len(copied) == 3, lines
    assert copied[0].strip() == "copied 300.0 MiB of 1.0 GiB (29%), 100.0 MiB/s, about 7 s left"


def test_json_events_give_every_step_change_and_clone_report(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [0.0]
    monkeypatch.setattr(follow.time, "monotonic", lambda: now[0])
    events: list[dict[str, Any]] = []
    printer = follow._Printer(None, events.append)
    printer.show(op(0.1, None, ticket="done", clone="running"))
    first = {"done": 10 * MiB, "total": 40 * MiB, "rate": 10 * MiB, "eta": 3.0}
    printer.show(op(1.1, first, ticket="done", clone="running"))
    now[0] = 0.2  # a new report shows at once, whatever the time since the last one
    second = {"done": 20 * MiB, "total": 40 * MiB, "rate": 10 * MiB, "eta": 2.0}
    printer.show(op(2.1, second, ticket="done", clone="running"))
    steps = [(e["name"], e["state"]) for e in events if e["event"] == "step"]
    assert steps == [("ticket", "done"), ("clone", "running")]
    clones = [e for e in events if e["event"] == "clone"]
    assert [(c["done"], c["eta"], c["at"]) for c in clones] == [
        (10 * MiB, 3.0, 1.1),
        (20 * MiB, 2.0, 2.1),
    ]


def test_the_cli_polls_slower_while_the_copy_has_seconds_left(clock: Clock) -> None:
    """Each poll costs the agent and its store CPU a copy needs: twice a second while the
    copy runs with seconds left, quickly while a step may end any moment."""
    progress = Progress("join", [("store", "store"), ("clone", "database copied")])
    progress.begin("store")
    assert follow.pause(progress.to_json()) == follow.POLL
    progress.finish("store")
    progress.begin("clone", "waiting to copy")
    progress.clone(0, 0)  # the copy began, no report yet: its end is unknown
    assert follow.pause(progress.to_json()) == follow.POLL
    total = 2000 * MiB
    for second in range(1, 4):
        clock.now += 1.0
        progress.clone(second * 100 * MiB, total)
    assert progress.to_json()["clone"]["eta"] == pytest.approx(17.0)
    assert follow.pause(progress.to_json()) == follow.COPY_POLL == 0.5
    for second in range(4, 20):
        clock.now += 1.0
        progress.clone(second * 100 * MiB, total)
    assert progress.to_json()["clone"]["eta"] == pytest.approx(1.0)
    assert follow.pause(progress.to_json()) == pytest.approx(0.5)
    clock.now += 0.6
    progress.clone(1960 * MiB, total)  # 0.4 s left: looks again in 0.2 s
    assert progress.to_json()["clone"]["eta"] == pytest.approx(0.4, abs=0.05)
    assert follow.pause(progress.to_json()) == pytest.approx(0.2, abs=0.03)
    clock.now += 0.4
    progress.clone(total, total)  # copied; the standby starts: its end may come any moment
    assert follow.pause(progress.to_json()) == follow.POLL
    assert follow.pause(None) == follow.POLL
