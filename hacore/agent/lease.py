"""This node's leadership as the loop and the executor share it: the lease, its last renewal,
whether the database may write under it, and the self-fencing deadline that follows."""

from __future__ import annotations

from collections.abc import Callable

import attrs

from hacore.agent.vocabulary import DecisionConfig
from hacore.backends.records import Lease


@attrs.define
class LeaseState:
    """This node's leadership, shared by the loop and the executor."""

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

    def won(self, lease: Lease, sent: float) -> None:
        self.lease, self.last_renewal, self.may_write = lease, sent, True
        self._changed()

    def renewed(self, sent: float) -> None:
        self.last_renewal = sent
        self._changed()

    def allow_writes(self) -> None:
        self.may_write = True
        self._changed()

    def _changed(self) -> None:
        if self.listener is not None:
            self.listener()

    def deadline(self, cfg: DecisionConfig) -> float | None:
        if self.lease is None or self.last_renewal is None:
            return None
        ttl = min(self.lease.ttl, cfg.ttl) if self.lease.ttl > 0 else cfg.ttl
        return self.last_renewal + ttl - cfg.safety_margin

    def drop(self) -> None:
        self.lease = self.last_renewal = None
        self.may_write = False
