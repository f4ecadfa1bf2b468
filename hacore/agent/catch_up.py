"""When a switchover's target has the database changes it needs before the active steps down.

The active keeps taking writes while it waits (its database is fenced only afterwards), so
"the target is 0 bytes behind" is a moving mark: under a steady write load the target is
almost never exactly at the head, and the wait would run out its whole budget, then hand over
anyway. The mark is the active's position when the wait began: once the target has replayed
that, what is written later reaches it as the fenced server's fast shutdown sends the rest
of the WAL to every connected standby.
"""

from __future__ import annotations

from hacore.backends.replication import ReplicationStatus


def target_lag(status: ReplicationStatus, target: str) -> int | None:
    """Bytes ``target`` is behind the active's head, as the active sees it; None if unknown."""
    return next((s.lag_bytes for s in status.standbys if s.name == target), None)


def replayed_mark(status: ReplicationStatus, target: str, mark: int | None) -> bool:
    """True once ``target`` has replayed up to ``mark`` (a position of the active), or is at
    the head; a target the active does not see, or a position it does not report, is not."""
    lag = target_lag(status, target)
    if lag is None:
        return False
    if lag == 0:
        return True
    if mark is None or status.position is None:
        return False
    return status.position - lag >= mark
