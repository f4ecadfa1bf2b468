"""The agent's side of the fence keeper: what it feeds the keeper's record, and when.

The keeper (:mod:`hacore.agent.keeper`, docs/fencing.md) is a separate process that fences
the database once the deadline in its record passes. The agent feeds it the deadline after
every renewal and before the database may write, releases the record once the database is
seen not to be a primary, and at a clean stop either stops the keeper or leaves it to fence.
Without a keeper (an agent inside a test process) every call here does nothing.
"""

from __future__ import annotations

import os
import threading

from hacore.agent.deadline import Deadline
from hacore.agent.hooks import NodeLog
from hacore.agent.keeper import DeadlineFeed, KeeperProcess
from hacore.agent.lease import LeaseState
from hacore.agent.observe import DbReading, read_database
from hacore.agent.pause_control import PauseControl
from hacore.backends.replication import ReplicationBackend
from hacore.errors import HacoreError


class KeeperLink:
    """Feeds this agent's keeper from the lease, the deadline and the pause."""

    def __init__(
        self,
        keeper: KeeperProcess | None,
        lease: LeaseState,
        deadline: Deadline,
        pause: PauseControl,
        log: NodeLog,
    ) -> None:
        self.keeper = keeper
        self.feed = (
            DeadlineFeed(keeper.record_path, os.getpid(), log) if keeper is not None else None
        )
        self.lease = lease
        self.deadline = deadline
        self.pause = pause
        self.log = log
        #: the loop and the renewal thread both feed the record: one write at a time, each
        #: from the deadline as it stands when it is written
        self._lock = threading.Lock()

    def start(self) -> None:
        """Adopt the record first: a keeper still running for a killed predecessor sees
        this pid. Then make sure the keeper runs."""
        if self.keeper is not None and self.feed is not None:
            self.feed.adopt()
            self.keeper.ensure(self.log)

    def lease_changed(self) -> None:
        """A renewal, a won campaign, or writes allowed: the keeper's deadline moves first."""
        if self.feed is not None and self.lease.may_write:
            with self._lock:
                deadline = self.deadline()
                paused = self.pause.paused
                self.feed.update(may_write=True, deadline=deadline, db_role=None, paused=paused)

    def guard(self, db: DbReading) -> None:
        """Release the keeper's record once the database is seen not to be a primary, and
        keep the keeper running."""
        if self.keeper is None or self.feed is None:
            return
        with self._lock:
            self.feed.update(
                may_write=self.lease.may_write,
                deadline=self.deadline(),
                db_role=db.status.role if db.status_known else None,
                paused=self.pause.paused,
            )
        self.keeper.ensure(self.log)

    def leave_paused(self) -> None:
        """A stop while paused: the keeper is told the cluster is paused, and stopped."""
        if self.feed is not None and self.keeper is not None:
            self.feed.update(may_write=False, deadline=None, db_role=None, paused=True)
            try:
                self.keeper.stop()
            except HacoreError as err:
                self.log.warning("could not stop the fence keeper: %s", err)

    def retire(self, replication: ReplicationBackend) -> None:
        """After a clean stop: a database seen fenced needs no keeper; otherwise it stays
        and enforces the last deadline."""
        if self.keeper is None or self.feed is None:
            return
        db = read_database(replication)
        role = db.status.role if db.status_known else None
        self.feed.update(may_write=False, deadline=None, db_role=role)
        record = self.feed.current
        if record is not None and not record.holds:
            try:
                self.keeper.stop()
            except HacoreError as err:
                self.log.warning("could not stop the fence keeper: %s", err)
        else:
            self.log.warning("the database may still write: the fence keeper stays to fence it")
