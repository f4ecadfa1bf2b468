"""Maintenance mode as the agent runs it: the pause as last read, ``cluster pause`` and
``cluster resume``.

The rules a paused node follows are pure and live in :mod:`hacore.agent.paused`; this holds
what the loop read and the two operations, under one lock, so a resume and a loop reading
the store at the same time agree on whether the cluster is paused.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from hacore.agent import operations, paused
from hacore.agent.errors import StateConflictError
from hacore.agent.hooks import NodeLog
from hacore.agent.jobs import Jobs
from hacore.agent.lease import LeaseState
from hacore.agent.vocabulary import Pause
from hacore.backends.consensus import ConsensusBackend
from hacore.errors import HacoreError


class PauseControl:
    """The pause as last read with a view (kept while the store does not answer); ``turn``
    counts resumes, so a reading that began before one is not applied."""

    def __init__(
        self, name: str, consensus: ConsensusBackend, lease: LeaseState, jobs: Jobs, log: NodeLog
    ) -> None:
        self.name = name
        self.consensus = consensus
        self.lease = lease
        self.jobs = jobs
        self.log = log
        self.current: Pause | None = None
        self.turn = 0
        self._lock = threading.Lock()

    @property
    def paused(self) -> bool:
        return self.current is not None

    def note(self, pause: Pause | None, turn: int) -> None:
        """The pause key as read with a view, unless a resume ran since the reading began
        (it already deleted the key and fed the keeper a deadline)."""
        with self._lock:
            if turn != self.turn:
                return
            if (pause is None) != (self.current is None):
                self.log.warning(
                    "%s", f"cluster {paused.describe(pause)}" if pause else "cluster resumed"
                )
            self.current = pause

    def read_at_start(self) -> bool:
        """Whether the cluster is paused, before the first loop: a paused active's services
        are left running. A store that does not answer says nothing: the normal rules apply
        until it does (a writable database without a lease is fenced, rule 11), so an agent
        never keeps a database writable on a pause it could not read."""
        try:
            pause, _ = operations.read_pause(self.consensus)
        except HacoreError as err:
            self.log.info("cannot tell whether the cluster is paused yet: %s", err)
            return False
        with self._lock:
            self.current = pause
        return pause is not None

    def pause(self, reason: str, *, by: str) -> dict[str, Any]:
        """``cluster pause``: write the pause key (idempotent)."""
        return operations.pause(self.consensus, Pause(by, time.time(), reason))

    def resume(self, *, force: bool = False) -> dict[str, Any]:
        """``cluster resume``, on the active: feed the keeper a deadline again, then delete
        the pause key, so no moment exists in which the pause is over for the others while
        this database still writes with no deadline. Refused on a node that holds no lease
        unless ``force`` (docs/fencing.md, "Maintenance mode")."""
        consensus = self.consensus
        running = self.jobs.running()
        if running is not None and not force:
            raise StateConflictError(
                f"{running.value} is running on {self.name}: resume once it is done"
            )
        with self._lock:
            lease = self.lease.lease
            if not force:
                operations.check_resumable(consensus, self.name, lease)
            if lease is not None and not force:
                sent = time.monotonic()
                if not consensus.renew(lease):
                    raise StateConflictError(f"{self.name} lost its lease: resume refused")
                self.turn += 1
                self.current = None
                self.lease.renewed(sent)  # the keeper gets a deadline before the key goes
            else:
                self.turn += 1
                self.current = None
            answer = operations.resume(consensus)
        if not answer["already"]:
            self.log.warning("cluster resumed%s", " (forced)" if force else "")
        return answer
