"""This node's leadership as the loop, the executor and the renewal thread share it: the
lease, its last renewal, whether the database may write under it, and the self-fencing
deadline that follows.

Two threads renew (the loop, and :mod:`hacore.agent.renewal` while the loop is busy), so every
change is made under one lock and ``last_renewal`` only moves forward: it is when a renewal
that the store confirmed was *sent*, a lower bound of when the store refreshed the lease, so
the later of two confirmed renewals is still one the store granted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import attrs

from hacore.agent.vocabulary import DecisionConfig
from hacore.backends.records import Lease

#: A loop iteration that has run this many ``ttl`` is taken for hung: the renewal thread
#: renews no more for it (its lease lapses, the keeper fences) and the ``loop`` check fails.
STALL_TTLS = 3.0


@attrs.define
class LeaseState:
    """This node's leadership, shared by the loop, the executor and the renewal thread."""

    lease: Lease | None = None
    #: When the last successful renew (or the winning campaign) was sent.
    last_renewal: float | None = None
    veto_until: float | None = None
    #: The database may accept writes under this lease: store calls must then end before
    #: the self-fencing deadline. False once the database is fenced.
    may_write: bool = False
    #: Told after every renewal and whenever the database may start writing, before it
    #: does: the fence keeper's record follows the deadline (docs/fencing.md).
    listener: Callable[[], None] | None = attrs.field(default=None, repr=False, eq=False)
    #: Guards the fields; never held while the listener runs.
    lock: threading.RLock = attrs.field(factory=threading.RLock, repr=False, eq=False)

    def won(self, lease: Lease, sent: float) -> None:
        with self.lock:
            self.lease, self.last_renewal, self.may_write = lease, sent, True
        self._changed()

    def renewed(self, sent: float) -> None:
        with self.lock:
            if self.last_renewal is None or sent > self.last_renewal:
                self.last_renewal = sent
        self._changed()

    def renewed_in_time(
        self, lease: Lease, sent: float, answered: float, gate: Callable[[], float | None]
    ) -> bool:
        """A renewal of ``lease`` sent at ``sent`` that the store confirmed at ``answered``,
        from outside the loop. Taken only while ``lease`` is still the one held (not dropped,
        resigned or replaced meanwhile) and only when the answer came before ``gate()``, the
        deadline in force: past it the loop may already be fencing, and a renewal must not
        move a deadline that has passed. False when it was not taken."""
        with self.lock:
            if self.lease is not lease:
                return False
            limit = gate()
            if limit is not None and answered > limit:
                return False
            if self.last_renewal is not None and sent <= self.last_renewal:
                return True  # the loop renewed meanwhile, later: nothing to move
            self.last_renewal = sent
        self._changed()
        return True

    def allow_writes(self) -> None:
        with self.lock:
            self.may_write = True
        self._changed()

    def _changed(self) -> None:
        """Outside the lock: the listener (the keeper's feed) takes its own lock, then reads
        the deadline back; the loop's feed takes them in that order too."""
        if self.listener is not None:
            self.listener()

    def deadline(self, cfg: DecisionConfig) -> float | None:
        with self.lock:
            lease, last = self.lease, self.last_renewal
        if lease is None or last is None:
            return None
        ttl = min(lease.ttl, cfg.ttl) if lease.ttl > 0 else cfg.ttl
        return last + ttl - cfg.safety_margin

    def drop(self) -> None:
        with self.lock:
            self.lease = self.last_renewal = None
            self.may_write = False
