"""hacore.testing.procs.wait_for: "not yet" is retried, a failed check is not."""

from __future__ import annotations

import time

import pytest

from hacore.testing.procs import wait_for


def test_a_failed_assertion_in_the_predicate_fails_at_once() -> None:
    calls = 0

    def predicate() -> bool:
        nonlocal calls
        calls += 1
        assert calls < 3, "exit code 2, never allowed"
        return False

    started = time.monotonic()
    with pytest.raises(AssertionError, match="never allowed"):
        wait_for(predicate, timeout=30, interval=0.01)
    assert calls == 3
    assert time.monotonic() - started < 20


def test_other_exceptions_mean_not_yet_and_are_chained_on_timeout() -> None:
    def refused() -> bool:
        raise ConnectionRefusedError("still starting")

    with pytest.raises(TimeoutError, match="the server") as err:
        wait_for(refused, timeout=0.2, interval=0.01, what="the server")
    assert isinstance(err.value.__cause__, ConnectionRefusedError)


def test_the_first_truthy_value_is_returned() -> None:
    values = iter([None, 0, "", "ready"])
    assert wait_for(lambda: next(values), timeout=5, interval=0.01) == "ready"
