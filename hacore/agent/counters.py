"""What happened on this node since its agent started, counted where it happens.

The snapshot says what *is*; a scrape every 15 s misses a promotion undone within the next
loop, or a check that failed for two seconds. Counters keep those events: the executor counts
promotions, demotions and fencings when the database step is done, the loop counts store
errors and failed check runs. ``/metrics`` shows them as Prometheus counters (``_total``),
which reset when the agent restarts, as Prometheus expects of a counter.

Thread-safe: the loop, the jobs and the API's request threads use one instance.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Iterable, Mapping
from types import MappingProxyType

import attrs


class Event(enum.Enum):
    """A countable event; the value is the metric's stem (``hacore_<value>_total``)."""

    #: this node's database became the writable active (a promotion that completed)
    PROMOTION = "promotions"
    #: a promotion that took the active role over from another node, by the reason in the
    #: history entry (``switchover``, ``stepped_down``, ``lease_expired``...)
    FAILOVER = "failovers"
    #: this node stopped being the active (planned step-down, fencing, clean shutdown)
    DEMOTION = "demotions"
    #: the database was stopped because the lease could no longer be vouched for (not a
    #: planned step-down): a fence of an active, or of a promotion given up
    FENCING = "fencings"
    #: a store call that failed or was not sent (the self-fencing deadline too close)
    STORE_ERROR = "store_errors"
    #: a health check run that failed or did not answer in time, by check name
    CHECK_FAILURE = "check_failures"


#: The reasons a failover is counted under from the start, so that ``increase()`` sees the
#: first one (a series that appears at 1 has no earlier sample to increase from).
FAILOVER_REASONS = ("switchover", "manual_failover", "stepped_down", "lease_expired")
_LABELLED = frozenset({Event.FAILOVER, Event.CHECK_FAILURE})


def _frozen(counts: Mapping[tuple[Event, str], int]) -> Mapping[tuple[Event, str], int]:
    return MappingProxyType(dict(counts))


@attrs.frozen
class EventCounts:
    """A consistent copy of the counters: ``(event, label) -> count``; ``label`` is ``""``
    for an event counted without one."""

    counts: Mapping[tuple[Event, str], int] = attrs.field(factory=dict, converter=_frozen)

    def get(self, event: Event, label: str = "") -> int:
        return self.counts.get((event, label), 0)

    def labelled(self, event: Event) -> list[tuple[str, int]]:
        """Every label counted for ``event``, sorted."""
        return sorted((label, n) for (e, label), n in self.counts.items() if e is event)


class EventCounters:
    def __init__(self, checks: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[Event, str], int] = {
            (event, ""): 0 for event in Event if event not in _LABELLED
        }
        self._counts.update({(Event.FAILOVER, reason): 0 for reason in FAILOVER_REASONS})
        self._counts.update({(Event.CHECK_FAILURE, name): 0 for name in checks})

    def add(self, event: Event, label: str = "", n: int = 1) -> None:
        with self._lock:
            self._counts[(event, label)] = self._counts.get((event, label), 0) + n

    def counts(self) -> EventCounts:
        with self._lock:
            return EventCounts(self._counts)
