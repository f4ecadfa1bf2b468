"""When the agent asks its managed store to move the leadership off the active's host."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hacore.agent.store_leadership import CHECK_EVERY, SETTLE, StoreLeadership
from hacore.testing.memory import MemoryManagedStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Leading(MemoryManagedStore):
    """A memory store that says it led until asked to move (calls are counted)."""

    moves_leadership = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0

    def move_leadership_off(self) -> str | None:
        self.calls += 1
        return "n2"


def leadership(tmp_path: Path, store_class: type[MemoryManagedStore] = Leading) -> Any:
    store = store_class({"store": "s"}, name="n1", host="127.0.0.1", data_dir=tmp_path)
    clock = Clock()
    log = logging.LoggerAdapter(logging.getLogger("test"), {})
    return store, clock, StoreLeadership(store, log, clock=clock)


def run(keeper: StoreLeadership, clock: Clock, seconds: float, **state: bool) -> None:
    end = clock.now + seconds
    while clock.now < end:
        keeper.tick(**state)
        if keeper._thread is not None:
            keeper._thread.join()
        clock.now += 1.0


def test_only_an_active_node_with_a_store_that_answers_moves_the_leadership(
    tmp_path: Path,
) -> None:
    store, clock, keeper = leadership(tmp_path)
    run(keeper, clock, 60, active=False, store_ok=True)
    run(keeper, clock, 60, active=True, store_ok=False)
    assert store.calls == 0


def test_it_waits_to_settle_then_looks_every_few_seconds(tmp_path: Path) -> None:
    store, clock, keeper = leadership(tmp_path)
    run(keeper, clock, SETTLE, active=True, store_ok=True)
    assert store.calls == 0
    run(keeper, clock, 3 * CHECK_EVERY, active=True, store_ok=True)
    assert store.calls == 3
    assert keeper.moves == 3


def test_a_store_error_starts_the_settling_again(tmp_path: Path) -> None:
    store, clock, keeper = leadership(tmp_path)
    run(keeper, clock, SETTLE + 1, active=True, store_ok=True)
    calls = store.calls
    assert calls >= 1
    run(keeper, clock, 1, active=True, store_ok=False)
    run(keeper, clock, SETTLE - 1, active=True, store_ok=True)
    assert store.calls == calls


class Undeclared(Leading):
    """Implements the call but does not declare ``moves_leadership``."""

    moves_leadership = False


def test_a_store_that_does_not_declare_the_ability_is_never_asked(tmp_path: Path) -> None:
    store, clock, keeper = leadership(tmp_path, Undeclared)
    run(keeper, clock, 60, active=True, store_ok=True)
    assert store.calls == 0
