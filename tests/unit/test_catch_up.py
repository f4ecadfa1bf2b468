"""The mark a switchover waits for: the active's position when the wait began, not its head."""

from __future__ import annotations

from hacore.agent.catch_up import replayed_mark
from hacore.backends.replication import ReplicationRole, ReplicationStatus, StandbyState


def _active(position: int, **lags: int | None) -> ReplicationStatus:
    return ReplicationStatus(
        running=True,
        role=ReplicationRole.PRIMARY,
        writable=True,
        position=position,
        standbys=tuple(StandbyState(name, "streaming", lag) for name, lag in lags.items()),
    )


def test_a_target_past_the_mark_is_caught_up_while_writes_go_on() -> None:
    # The wait began at 1000; the head moved on to 5000 and the target replayed 4900: it has
    # everything the wait asked for, though it is never 0 bytes behind a head that moves.
    assert replayed_mark(_active(5000, b=100, c=4500), "b", mark=1000)


def test_a_target_short_of_the_mark_is_not() -> None:
    assert not replayed_mark(_active(5000, b=4500), "b", mark=1000)


def test_at_the_head_is_caught_up_whatever_the_mark() -> None:
    assert replayed_mark(_active(5000, b=0), "b", mark=None)


def test_unknown_lag_position_or_target_is_not_caught_up() -> None:
    assert not replayed_mark(_active(5000, b=None), "b", mark=1000)
    assert not replayed_mark(_active(5000, c=0), "b", mark=1000)
    status = ReplicationStatus(
        running=True, role=ReplicationRole.PRIMARY, standbys=(StandbyState("b", "streaming", 100),)
    )
    assert not replayed_mark(status, "b", mark=1000)
    assert not replayed_mark(_active(5000, b=100), "b", mark=None)
