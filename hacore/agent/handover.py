"""The active's planned step-down: giving the database up while the lease is still held, to a
named target when there is one, and the lease helpers the promotion shares with it.

The order, and why (the module docstring of hacore/agent/execute.py gives it among the other
transitions): a checkpoint while the database still serves, so the fence's own shutdown work
is short (the write gap grew with the database's size without it); the writers stop before
the database, so their last writes reach the target; the target has every file and has
replayed what was written when the wait began before the database is fenced; the database is
fenced before the lease goes, so two writers never overlap; the final position is published,
so the target campaigns only once it holds every acknowledged write.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

import attrs

from hacore.agent.catch_up import replayed_mark, target_lag
from hacore.agent.companions import Companions
from hacore.agent.counters import Event, EventCounters
from hacore.agent.hooks import HookCaller, NodeLog
from hacore.agent.lease import LeaseState
from hacore.agent.observe import StoreReading
from hacore.agent.outcome import Outcome
from hacore.agent.syncrep import StoreCall
from hacore.agent.vocabulary import Decision, DecisionConfig, NodeState, Observation
from hacore.backends.records import ClusterView, Lease, Member, NodeRole
from hacore.backends.replication import UNKNOWN_STATUS
from hacore.errors import HacoreError
from hacore.plugins.factory import Backends

#: The checkpoint before a handover gets at most this part of ``ttl``: the file wait that
#: follows counts from the decision, and keeps at least half of its ``ttl / 2``.
CHECKPOINT_TTLS = 0.25


class MemberRecords(Protocol):
    """Where the executor gets this node's member record (hacore/agent/member_record.py)."""

    def record(self, role: NodeRole, obs: Observation) -> Member: ...


class Handover:
    """The step-down family of :class:`~hacore.agent.execute.Executor`, which supplies the
    attributes below and :meth:`_stay_active`; kept apart so each module stays small."""

    dcfg: DecisionConfig
    b: Backends
    extras: Companions
    hooks: HookCaller
    lease: LeaseState
    store_call: StoreCall
    counters: EventCounters
    clock: Callable[[], float]
    log: NodeLog
    _records: MemberRecords

    def _stay_active(self, decision: Decision, obs: Observation, reading: StoreReading) -> Outcome:
        raise NotImplementedError

    def _step_down(self, decision: Decision, obs: Observation, reading: StoreReading) -> Outcome:
        lease = self.lease.lease
        view = obs.view or ClusterView(leader=None)
        reason, target = decision.reason, decision.target
        if target is not None:
            gap = self.extras.files_gap(target)
            if gap is not None:
                # Nothing changed yet: keep serving while the target catches up; the request
                # expires after switchover_timeout if it never does.
                outcome = self._stay_active(decision, obs, reading)
                return attrs.evolve(
                    outcome, error=f"switchover to {target} waits for its files: {gap}"
                )
            self._checkpoint_first(obs)
        self.hooks.call("hacore_before_demote", view=view, reason=reason)
        self.extras.stop_active()
        if target is not None:
            # The writers stopped: renew, so the waits below get a full budget. Without a
            # renewal the database goes first: the step-down goes on without the file wait.
            if lease is not None and self._renew(lease, "while stepping down"):
                self.extras.scan_files()
                missing = self._wait_files(lease, target, until=obs.now + self.dcfg.ttl / 2)
                if missing is not None:
                    return self._call_off(decision, obs, reading, missing)
            self._wait_caught_up(target)
            self.extras.files_from(target, within=self._time_left(2 * self.dcfg.retry_timeout))
        final = obs.db
        if obs.db.known:
            try:
                final = self.b.replication.status()
            except HacoreError as err:
                self.log.warning("stepping down with the database's state unknown: %s", err)
        # A hung database (the usual reason to step down with an unknown state) is not asked
        # again, which would cost a connect timeout: it is fenced all the same, at once.
        self.b.replication.fence()
        self.lease.may_write = False
        self.counters.add(Event.DEMOTION)
        member = self._records.record(NodeRole.FENCED, attrs.evolve(obs, db=final))
        try:
            self.store_call(lambda: self.b.consensus.publish_member(member))
        except HacoreError as err:
            self.log.warning("could not publish the final position: %s", err)
        if lease is not None:
            self._resign(lease)
        if target is None:
            self.extras.release_files()
        self.hooks.call("hacore_after_demote", view=view, reason=reason)
        self.log.info("stepped down at position %s: %s", final.position, reason)
        return Outcome(decision.next_state, observe_again=True)

    def _checkpoint_first(self, obs: Observation) -> None:
        """Let the database write its changes out while it still serves, so that the fence
        has little left to do while nobody can write (the write gap grew with the database's
        size and load without it). Only a database known healthy is asked: a slow one is
        not made to delay the step-down further. The lease is renewed on both sides; a
        failed or cut-short checkpoint is logged and the step-down goes on."""
        lease = self.lease.lease
        if lease is None or not obs.db.writable or not obs.health.ok:
            return
        if not self._renew(lease, "before the checkpoint of the handover"):
            return
        budget = min(CHECKPOINT_TTLS * self.dcfg.ttl, self._time_left(2 * self.dcfg.retry_timeout))
        started = self.clock()
        try:
            self.b.replication.prepare_handover(timeout=budget)
        except HacoreError as err:
            self.log.warning("handing over without a checkpoint first: %s", err)
        else:
            self.log.info("checkpoint before the handover: %.2fs", self.clock() - started)
        self._renew(lease, "after the checkpoint of the handover")

    def _call_off(
        self, decision: Decision, obs: Observation, reading: StoreReading, why: str
    ) -> Outcome:
        """Undo a step-down that could not finish in time, before the database is fenced.

        The wait used the budget up to the deadline, so renew first; then the services again,
        and ``after_promote`` for the ``before_demote`` already sent. Without the renewal the
        next loop decides (it fences if the lease is gone).
        """
        self.log.warning("switchover called off, staying active: %s", why)
        error = f"switchover called off: {why}"
        lease = self.lease.lease
        if lease is None or not self._renew(lease, "to call the switchover off"):
            return Outcome(NodeState.ACTIVE, observe_again=True, error=error)
        self.extras.start_active()
        self.hooks.call("hacore_after_promote", view=obs.view or ClusterView(leader=None))
        outcome = self._stay_active(decision, obs, reading)
        return attrs.evolve(outcome, error=error)

    def _wait_files(self, lease: Lease, target: str, *, until: float) -> str | None:
        """Until ``until`` for ``target`` to hold every file the stopped services wrote, the
        lease renewed between waits; None once it does, else what it still lacks.

        The loop is blocked meanwhile: its own health check (``loop``) fails once an
        iteration takes ``ttl``, so the caller stops well before.
        """
        started = self.clock()
        while True:
            step = min(self._time_left(2 * self.dcfg.retry_timeout), until - self.clock())
            missing = self.extras.wait_files(target, math.floor(max(0.0, step) * 10) / 10)
            if missing is None:
                return None
            waited = self.clock() - started
            if self.clock() >= until or not self._renew(lease, "while waiting for files"):
                return f"{target} still lacks files after {waited:.1f}s ({missing})"

    def _wait_caught_up(self, target: str) -> None:
        """Up to ``retry_timeout`` (and never past the deadline) for ``target`` to replay what
        was written when the wait began (:mod:`hacore.agent.catch_up`)."""
        limit = self.clock() + self.dcfg.retry_timeout
        deadline = self.lease.deadline(self.dcfg)
        if deadline is not None:
            limit = min(limit, deadline - self.dcfg.retry_timeout)
        mark: int | None = None
        while True:
            try:
                status = self.b.replication.status()
            except HacoreError:
                status = UNKNOWN_STATUS
            if mark is None:
                mark = status.position
            if replayed_mark(status, target, mark):
                return
            lag = target_lag(status, target)
            if self.clock() >= limit:
                self.log.warning("handing over to %s while it is %s bytes behind", target, lag)
                return
            time.sleep(0.05)

    # -- the lease in the middle of a transition (the promotion uses them too) -------------

    def _renew(self, lease: Lease, when: str) -> bool:
        """Renew in the middle of a transition; False (logged) when the lease is not known to
        be held any more."""
        sent = self.clock()
        try:
            held = self.store_call(lambda: self.b.consensus.renew(lease))
        except HacoreError as err:
            self.log.warning("could not renew the lease %s: %s", when, err)
            return False
        if not held:
            self.log.warning("the lease was lost %s", when)
            return False
        self.lease.renewed(sent)
        return True

    def _time_left(self, keep: float) -> float:
        """Seconds from now until ``keep`` seconds before the self-fencing deadline."""
        deadline = self.lease.deadline(self.dcfg)
        if deadline is None:
            return self.dcfg.retry_timeout
        return max(0.0, deadline - keep - self.clock())

    def _resign(self, lease: Lease) -> None:
        self.lease.may_write = False
        try:
            self.store_call(lambda: self.b.consensus.resign(lease))
        except HacoreError as err:
            self.log.warning("could not resign (the lease expires by itself): %s", err)
        self.lease.drop()
