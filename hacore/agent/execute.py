"""Carrying out a :class:`~hacore.agent.vocabulary.Decision` through the backends, in a fixed order.

The order of the steps is the safety argument, so it is spelled out here once:

- PROMOTE: start the database if stopped → ``before_promote`` (a veto or a raise: fence a
  writable database, resign, back off ``promote_backoff``) → status key naming this node with
  no synchronous standby → database promote → record the lease's fencing token → file sync
  source → renew → a history entry (retried every loop, a fence included, until written) →
  active-only services → ``after_promote``. A renewal thread (hacore/agent/renewal.py) keeps
  the lease meanwhile, so a promotion may outlast the ttl.
- STEP_DOWN (planned, lease held): to a target, only once the target holds every file (until
  then the node stays active and says what is missing) → a checkpoint while the database
  still serves, if it is known healthy (the lease renewed around it) → ``before_demote`` →
  stop active-only services → renew the lease → file scan → wait until ``ttl / 2`` after the
  decision (renewing) for the target to have every file (not in time: call it off) → wait
  for it to replay what was written when the wait began → mirror the target's files → fence
  the database → publish the final position → resign → ``after_demote``. The checkpoint
  leaves the fence little to write while nobody can write; writers stop before the database
  so their last writes reach the target; the database is fenced before the lease goes, so
  two writers never overlap. The step-down lives in hacore/agent/handover.py.
- FENCE (the lease may be gone): the database first, at once; then ``before_demote``,
  services, files, ``after_demote``.

A file sync flip gets a bounded part of the time left before the self-fencing deadline, then
goes on in the background: files never make a node fence late, nor starve the next renewal.

Every step is idempotent, so an agent killed between two steps gets the same decision again
after a restart and finishes the job. Steps that only serve the node (files, services, hooks)
are logged when they fail and never stop a transition; a database step that fails aborts the
action, and the next loop decides again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import attrs

from hacore import __version__
from hacore.agent import keys
from hacore.agent.companions import Companions
from hacore.agent.counters import Event, EventCounters
from hacore.agent.credentials import Credentials, ReplicationCredentials
from hacore.agent.handover import Handover, MemberRecords
from hacore.agent.hooks import HookCaller, NodeLog
from hacore.agent.jobs import Jobs
from hacore.agent.lease import LeaseState
from hacore.agent.observe import StoreReading
from hacore.agent.outcome import Outcome
from hacore.agent.succession import succession
from hacore.agent.syncrep import StatusWriter, StoreCall, SyncStandbys
from hacore.agent.vocabulary import (
    Action,
    ActiveStatus,
    Decision,
    DecisionConfig,
    LeaseStatus,
    NodeState,
    Observation,
)
from hacore.backends.records import ClusterView, Lease
from hacore.backends.replication import (
    UNKNOWN_STATUS,
    ReplicationBackend,
    ReplicationRole,
    ReplicationSource,
)
from hacore.config.node import NodeConfig
from hacore.errors import HacoreError
from hacore.plugins.factory import Backends

log = logging.getLogger(__name__)

Clock = Callable[[], float]
#: A database promote may take this many ``ttl`` (under the renewal thread's STALL_TTLS).
_PROMOTE_TTLS = 2.0


@attrs.frozen
class ExecutorPorts:
    """What the executor works with besides the backends: the agent's collaborators, each
    built once by :func:`hacore.agent.wiring.wire`; none of them is the agent itself."""

    hooks: HookCaller
    jobs: Jobs
    lease: LeaseState
    #: every store call of a transition goes through it: refused too close to the deadline
    store_call: StoreCall
    records: MemberRecords
    credentials: Credentials
    counters: EventCounters


class Executor(Handover):
    def __init__(
        self,
        config: NodeConfig,
        dcfg: DecisionConfig,
        backends: Backends,
        ports: ExecutorPorts,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self.config = config
        self.dcfg = dcfg
        self.b = backends
        self._stale_key_logged: int | None = None
        self.hooks = ports.hooks
        self.jobs = ports.jobs
        self.lease = ports.lease
        self.sync = SyncStandbys(backends.replication, dcfg.synchronous_mode)
        self.store_call = ports.store_call
        self._credentials = ports.credentials
        self._records = ports.records
        self.clock = clock
        self.counters = ports.counters
        #: the lease token whose promotion was counted (a retried promotion is one)
        self._counted: int | None = None
        self.name = config.node.name
        self.log = NodeLog(log, self.name)
        services = config.services
        self.extras = Companions(
            self.name,
            backends.filesync,
            backends.services,
            active_only=services.active_only if services else (),
            everywhere=services.everywhere if services else (),
            log=self.log,
        )
        #: The lease token whose promotion the ``before_promote`` hooks already allowed.
        self._approved: int | None = None
        #: What this node knew of the old active when it first tried to promote for a token
        #: (a retried promotion finds the status key already naming this node).
        self._succession: tuple[int, keys.HistoryEntry] | None = None
        #: The tokens of the last two leases this agent won: an earlier one means a lease
        #: lost and won again, not a restart (the history's reason).
        self._won: tuple[int | None, int | None] = (None, None)
        #: A promotion whose history entry could not be written yet: retried every loop,
        #: the next fence included, so a promotion never goes unrecorded.
        self._unrecorded: keys.HistoryEntry | None = None

    def run(self, decision: Decision, obs: Observation, reading: StoreReading) -> Outcome:
        action = decision.action
        if action is Action.NONE:
            return Outcome(decision.next_state)
        if action is Action.STAY_ACTIVE:
            return self._stay_active(decision, obs, reading)
        if action is Action.CAMPAIGN:
            return self._campaign(decision, obs)
        if action is Action.PROMOTE:
            return self._promote(obs, reading)
        if action is Action.STEP_DOWN:
            return self._step_down(decision, obs, reading)
        if action in (Action.FENCE, Action.FENCE_AND_REWIND):
            self._fence(decision, obs)
            if action is Action.FENCE_AND_REWIND:
                self._submit(Action.REWIND, decision, obs)
            return Outcome(decision.next_state)
        if action in (Action.REWIND, Action.CLONE):
            self._submit(action, decision, obs)
            return Outcome(decision.next_state)
        source = self._source(obs.view, decision.target) if decision.target else None
        if action is Action.FOLLOW:
            assert source is not None
            self.b.replication.follow(source)
        elif action is Action.START_STANDBY:
            self.b.replication.start(follow=source)
        return Outcome(decision.next_state)

    # -- leadership ----------------------------------------------------------------------

    def _log_lost_campaign(self) -> None:
        """Say who holds the key; an earlier session's key of this very node is said once,
        since the loop asks for it again every loop until it expires."""
        try:
            holder = self.b.consensus.leader()
        except HacoreError:
            holder = None
        if holder is None:
            self.log.info("campaign lost: another node took the leader key first")
        elif holder.name != self.config.node.name:
            self.log.info("campaign lost: %s took the leader key first", holder.name)
        elif holder.token != self._stale_key_logged:
            self._stale_key_logged = holder.token
            self.log.info(
                "the leader key (token %d) is an earlier agent session's of this node: it is "
                "left to expire (within ttl %ss), then this node campaigns",
                holder.token,
                self.config.timing.ttl,
            )

    def _campaign(self, decision: Decision, obs: Observation) -> Outcome:
        sent = self.clock()
        lease = self.b.consensus.campaign()
        if lease is None:
            self._log_lost_campaign()
            # paused, a writable database taking its lease back is what it was (rule P2)
            return Outcome(obs.previous if obs.pause is not None else NodeState.STANDBY)
        self.lease.won(lease, sent)
        if lease.token != self._won[1]:
            self._won = (self._won[1], lease.token)
        self.log.info("won the election: leader key held with fencing token %d", lease.token)
        return Outcome(decision.next_state, observe_again=True)

    def _promote(self, obs: Observation, reading: StoreReading) -> Outcome:
        lease = self.lease.lease
        if lease is None:
            raise HacoreError("PROMOTE without a lease")
        view = obs.view or ClusterView(leader=None)
        if self._succession is None or self._succession[0] != lease.token:
            earlier = self._won[0] is not None and self._won[1] == lease.token
            entry = succession(obs, self.name, lease.token, held_before=earlier)
            self._succession = (lease.token, entry)
        if not obs.db.running:
            self.b.replication.start()
        if self._approved != lease.token:
            veto = self.hooks.veto(view)
            if veto is not None:
                return self._give_up(f"promotion vetoed ({veto})", obs, lease)
            self._approved = lease.token
            deadline = self.lease.deadline(self.dcfg)
            if deadline is not None and self.clock() + 2 * self.dcfg.retry_timeout > deadline:
                self.log.info("before_promote took long: renewing the lease before promoting")
                return Outcome(NodeState.PROMOTING, observe_again=True)
        self.lease.allow_writes()
        try:
            self._promote_database(obs, reading, lease)
        except HacoreError as err:
            if _writable(self.b.replication):
                raise  # keep the lease: the next loop finishes the promotion
            return self._give_up(f"promotion failed ({err})", obs, lease)
        retry = self.dcfg.retry_timeout
        self.extras.files_from(self.name, within=min(retry, self._time_left(3 * retry)))
        # Starting the services may take seconds: renew first, so they cannot starve the lease
        # (a lost lease is the next loop's business: it fences, services included).
        self._renew(lease, "before starting the services")
        try:
            status = self.b.replication.status()
        except HacoreError as err:
            # promoted, but the database stopped answering: not active (the next loop sees
            # it unknown and its check decides), and no guess in the history entry
            self.log.warning("promoted, but the database does not answer: %s", err)
            status = UNKNOWN_STATUS
        entry = attrs.evolve(
            self._succession[1], timeline=status.timeline, position=status.position
        )
        # Recorded before the services and hooks, while the lease was just renewed: a node
        # that has to fence soon after its promotion still leaves its entry.
        self._unrecorded = entry
        entry = self._record_history() or entry
        services_ok = self.extras.start_active()
        self.hooks.call("hacore_after_promote", view=view)
        if self._counted != lease.token:
            self._counted = lease.token
            self.counters.add(Event.PROMOTION)
            if entry.previous not in (None, self.name):
                self.counters.add(Event.FAILOVER, entry.reason or "unknown")
        self.log.info(
            "promoted: active with fencing token %d (timeline %s, hacore %s)",
            lease.token,
            status.timeline,
            __version__,
        )
        return Outcome(NodeState.ACTIVE, is_active=services_ok and status.writable)

    def _record_history(self) -> keys.HistoryEntry | None:
        """Write the pending history entry; the entry written, None when it could not be
        (logged; it stays pending for the next try)."""
        entry = self._unrecorded
        if entry is None:
            return None
        try:
            if entry.reason == "restarted" and not self.store_call(
                lambda: self.b.consensus.get_prefix(keys.HISTORY_PREFIX)
            ):
                entry = attrs.evolve(entry, reason="first_start", previous=None)
            self.store_call(
                lambda: self.b.consensus.put(keys.history_key(entry.token), entry.encode())
            )
        except HacoreError as err:
            self.log.warning(
                "could not record the promotion (token %d) in the history: %s", entry.token, err
            )
            return None
        self._unrecorded = None
        return entry

    def _promote_database(self, obs: Observation, reading: StoreReading, lease: Lease) -> None:
        """Status key (no synchronous standby yet), promote, then record the fencing token."""
        self.sync.reset()
        writer = StatusWriter(self.b.consensus, self.store_call, reading.status_version)
        if not writer.write(ActiveStatus(self.name, obs.db.position, obs.db.timeline)):
            raise HacoreError("the status key changed while promoting")
        if not obs.db.writable:
            # The renewal thread keeps the lease while the database promotes (an end-of-
            # recovery checkpoint on a busy disk can outlast a short ttl), so the wait is
            # not cut at the deadline, only well before the thread gives a hung loop up.
            deadline = self.lease.deadline(self.dcfg) or self.clock() + self.dcfg.ttl
            wait = max(1.0, deadline - self.clock(), _PROMOTE_TTLS * self.dcfg.ttl)
            self.b.replication.promote(timeout=wait)
        if obs.db_token != lease.token:
            self.b.replication.record_fencing_token(lease.token)

    def _give_up(self, why: str, obs: Observation, lease: Lease) -> Outcome:
        """Resign, fence a writable database, and stay out of elections for a while."""
        backoff = self.dcfg.promote_backoff
        self.log.warning("%s: resigning, no campaign for %gs", why, backoff)
        if obs.db.role is ReplicationRole.PRIMARY or _writable(self.b.replication):
            self.b.replication.fence()
            self.counters.add(Event.FENCING)
        self.lease.veto_until = self.clock() + backoff
        self._resign(lease)
        return Outcome(
            NodeState.FENCED if obs.db.role is ReplicationRole.PRIMARY else NodeState.STANDBY
        )

    def _stay_active(self, decision: Decision, obs: Observation, reading: StoreReading) -> Outcome:
        lease = self.lease.lease
        if obs.pause is not None:
            return self._stay_paused(decision, obs, reading)
        self._record_history()
        # A flip that failed or overran at the promotion is retried here, in the background.
        self.extras.files_from(self.name, within=0.0)
        services_ok = self.extras.ensure_active()
        token_ok = lease is not None and obs.db_token == lease.token
        outcome = Outcome(NodeState.ACTIVE, is_active=obs.db.writable and token_ok and services_ok)
        return self._with_status(outcome, decision, obs, reading)

    def _stay_paused(self, decision: Decision, obs: Observation, reading: StoreReading) -> Outcome:
        """Rule P1: nothing is started or flipped (services and files stay as they are). A
        lease taken back while paused (a new session, a new token) is recorded in the
        database, which stays the primary it was: no promotion, no history entry, as the
        active did not change."""
        lease = self.lease.lease
        if lease is not None and obs.db_token != lease.token:
            self.b.replication.record_fencing_token(lease.token)
            self.lease.allow_writes()
            self.log.info(
                "paused: the lease is held again (token %d); the database stays the primary",
                lease.token,
            )
        outcome = Outcome(NodeState.ACTIVE, is_active=obs.db.writable)
        return self._with_status(outcome, decision, obs, reading)

    def _with_status(
        self, outcome: Outcome, decision: Decision, obs: Observation, reading: StoreReading
    ) -> Outcome:
        """``outcome`` once the status key is kept; with the error when it could not be."""
        if obs.lease_status is not LeaseStatus.HELD or reading.view is None:
            # A renewal that went through does not mean the read did: without the members
            # and the status key, the synchronous standby must not be chosen anew (an empty
            # read would drop it and acknowledge commits that only this node holds).
            return outcome
        try:
            self._keep_status(decision, obs, reading)
        except HacoreError as err:
            # Still the active: the next loop writes the status key again.
            return attrs.evolve(outcome, error=f"status key not updated: {err}")
        return outcome

    def _keep_status(self, decision: Decision, obs: Observation, reading: StoreReading) -> None:
        """The synchronous standby, the status key, and a finished switchover request."""
        writer = StatusWriter(self.b.consensus, self.store_call, reading.status_version)
        db, status = obs.db, obs.active_status
        key_sync = status.sync_standbys if status and status.name == self.name else frozenset()
        members = {m.name for m in obs.view.members} if obs.view else set()
        preferred = obs.switchover.to_node if obs.switchover else None

        def write_key(sync: frozenset[str]) -> bool:
            return writer.write(ActiveStatus(self.name, db.position, db.timeline, sync))

        write_key(self.sync.step(db, key_sync, members - reading.removed, preferred, write_key))
        if decision.clear_switchover:
            version = reading.switchover_version
            if self.store_call(
                lambda: self.b.consensus.delete(keys.SWITCHOVER_KEY, expect_version=version)
            ):
                self.log.info("switchover request cleared")

    # -- giving up the active role (the planned step-down: hacore/agent/handover.py) ----

    def _fence(self, decision: Decision, obs: Observation) -> None:
        # A database that did not answer may still write: it is fenced too (DESIGN rule 7).
        primary = (obs.db.running and obs.db.role is ReplicationRole.PRIMARY) or not obs.db.known
        if primary:
            self.b.replication.fence()
            self.counters.add(Event.FENCING)
        self.lease.may_write = False
        was_active = primary or obs.previous in (NodeState.ACTIVE, NodeState.PROMOTING)
        if obs.previous in (NodeState.ACTIVE, NodeState.PROMOTING):
            self.counters.add(Event.DEMOTION)
        view = obs.view or ClusterView(leader=None)
        if was_active:
            self.hooks.call("hacore_before_demote", view=view, reason=decision.reason)
        self.extras.stop_active()
        if view.leader is not None and view.leader.name != self.name:
            self.extras.files_from(view.leader.name)
        else:
            self.extras.release_files()
        self._record_history()  # fenced right after its promotion: the promotion still counts
        if was_active:
            self.hooks.call("hacore_after_demote", view=view, reason=decision.reason)
            self.log.warning("fenced: %s", decision.reason)

    def shutdown(self, view: ClusterView) -> None:
        """A clean stop: an active demotes (database fenced first) and resigns at once; the
        file sync engine stops with the agent (the next one starts it without a role)."""
        lease = self.lease.lease
        if lease is not None:
            self._shut_down_active(view, lease)
        self.extras.stop_files()

    def _shut_down_active(self, view: ClusterView, lease: Lease) -> None:
        reason = "the agent is shutting down"
        self.hooks.call("hacore_before_demote", view=view, reason=reason)
        self.extras.stop_active()
        try:
            try:
                primary = self.b.replication.status().role is ReplicationRole.PRIMARY
            except HacoreError:
                primary = True  # unknown is not "not a primary" (DESIGN rule 7)
            if primary:
                self.b.replication.fence()
        except HacoreError as err:
            self.log.error("could not fence the database at shutdown: %s", err)
        self.counters.add(Event.DEMOTION)
        self._resign(lease)
        self.hooks.call("hacore_after_demote", view=view, reason=reason)

    # -- following -------------------------------------------------------------------------

    def _submit(self, action: Action, decision: Decision, obs: Observation) -> None:
        assert decision.target is not None
        source = self._source(obs.view, decision.target)
        replication = self.b.replication

        def clone() -> None:
            replication.clone(source)
            replication.start(follow=source)

        def rewind() -> None:
            replication.rewind(source)

        work = clone if action is Action.CLONE else rewind
        self.jobs.submit(action, f"{action.value} from {source.node_name}", work)

    def credentials(self) -> ReplicationCredentials | None:
        """This node's replication login as it is now (``nodes remove`` rotates it)."""
        return self._credentials.current

    def source(self, view: ClusterView | None, name: str) -> ReplicationSource:
        """Where ``name``'s database is reached, from its member record (``nodes reinit``)."""
        return self._source(view, name)

    def _source(self, view: ClusterView | None, name: str) -> ReplicationSource:
        member = view.member(name) if view is not None else None
        if member is None:
            raise HacoreError(f"{name} has published no member record: its database is unknown")
        where = member.extra.get("replication")
        if not isinstance(where, dict) or not isinstance(where.get("port"), int):
            raise HacoreError(f"{name}'s member record does not say where its database listens")
        creds = self.credentials()
        if creds is None:
            raise HacoreError(
                "this node has no replication credentials yet (cluster join provides them)"
            )
        host = str(where.get("host") or member.host)
        return ReplicationSource(name, host, where["port"], creds.user, creds.password)


def _writable(replication: ReplicationBackend) -> bool:
    try:
        return replication.status().writable
    except HacoreError:
        return False
