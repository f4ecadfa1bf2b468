"""hacore.testing.procs.wait_for: "not yet" is retried, a failed check is not; holds_for looks
all along its window."""

from __future__ import annotations

import pytest

from hacore.testing.procs import holds_for, wait_for


def test_a_failed_assertion_in_the_predicate_fails_at_once() -> None:
    calls = 0

    def predicate() -> bool:
        nonlocal calls
        calls += 1
        assert calls < 3, "exit code 2, never allowed"
        return False

    with pytest.raises(AssertionError, match="never allowed"):
        wait_for(predicate, timeout=30, interval=0.01)
    assert calls == 3  # retried, it would have run on for 30 s and ended in TimeoutError


def test_other_exceptions_mean_not_yet_and_are_chained_on_timeout() -> None:
    def refused() -> bool:
        raise ConnectionRefusedError("still starting")

    with pytest.raises(TimeoutError, match="the server") as err:
        wait_for(refused, timeout=0.2, interval=0.01, what="the server")
    assert isinstance(err.value.__cause__, ConnectionRefusedError)


def test_the_first_truthy_value_is_returned() -> None:
    values = iter([None, 0, "", "ready"])
    assert wait_for(lambda: next(values), timeout=5, interval=0.01) == "ready"


def test_holds_for_samples_the_whole_window() -> None:
    calls = 0

    def check() -> bool:
        nonlocal calls
        calls += 1
        return True

    assert holds_for(check, 0.3, interval=0.01) == calls >= 10


def test_holds_for_fails_on_what_comes_and_goes_inside_its_window() -> None:
    """A bare sleep and one look at the end would pass here: the value is back by then."""
    values = iter([True] * 5 + [False] + [True] * 10_000)
    with pytest.raises(AssertionError, match="after 5 samples: the blip"):
        holds_for(lambda: next(values), 0.5, interval=0.01, what="the blip")
    calls = 0

    def fails_third() -> bool:
        nonlocal calls
        calls += 1
        assert calls < 3, "a check that fails inside"
        return True

    with pytest.raises(AssertionError, match="fails inside"):
        holds_for(fails_third, 30, interval=0.01)
    assert calls == 3
