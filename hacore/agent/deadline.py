"""The self-fencing deadline, and the gate every store call of the loop must pass.

The deadline is the lease's (``ttl - safety_margin`` after the last renewal), moved by
minority mode (rule N1) and, while failsafe holds, by the members' confirmations (rule F1).
It is what the fence keeper enforces. While the database may write, a store call that could
not end before it is not sent: a loop stuck in a slow call would fence late.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from hacore.agent.counters import Event, EventCounters
from hacore.agent.failsafe_edge import FailsafeEdge
from hacore.agent.lease import LeaseState
from hacore.agent.minority import MinorityEdge
from hacore.agent.pause_control import PauseControl
from hacore.agent.vocabulary import DecisionConfig
from hacore.errors import HacoreError, StoreUnavailableError

T = TypeVar("T")


class Deadline:
    """This node's self-fencing deadline, from the collaborators that move it."""

    def __init__(
        self,
        dcfg: DecisionConfig,
        lease: LeaseState,
        minority: MinorityEdge,
        failsafe: FailsafeEdge,
        pause: PauseControl,
    ) -> None:
        self.dcfg = dcfg
        self.lease = lease
        self.minority = minority
        self.failsafe = failsafe
        self.pause = pause

    def __call__(self) -> float | None:
        """The lease's deadline, or later while failsafe holds (rule F1), the earliest
        confirmation expiry minus ``safety_margin``. What the keeper enforces."""
        own = self.minority.deadline(self.lease.deadline(self.dcfg))
        expiry = self.failsafe.confirmations.expiry
        if own is None or expiry is None or not self.failsafe.holding:
            return own
        return max(own, expiry - self.dcfg.safety_margin)

    def gate(self) -> float | None:
        """The deadline store calls must end by, while the database may write (none while
        paused: no deadline is enforced then, and a skipped renewal could never come back)."""
        return self() if self.lease.may_write and not self.pause.paused else None


class StoreGate:
    """Sends a store call unless it could end past the gate; counts the store's errors."""

    def __init__(self, deadline: Deadline, retry_timeout: float, counters: EventCounters) -> None:
        self.deadline = deadline
        self.retry_timeout = retry_timeout
        self.counters = counters

    def __call__(self, call: Callable[[], T]) -> T:
        gate = self.deadline.gate()
        try:
            if gate is not None and time.monotonic() + self.retry_timeout > gate:
                raise StoreUnavailableError("not sent: the self-fencing deadline is too close")
            return call()
        except HacoreError:
            self.counters.add(Event.STORE_ERROR)
            raise
