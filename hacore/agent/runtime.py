"""The agent: one loop per node that observes, decides and acts.

Each iteration (docs/agent.md): renew the lease (or keep the session alive), read the view and
the agent's keys, read the local database, run the health checks, build the Observation, call
:func:`~hacore.agent.decide.decide`, carry the decision out, publish the member record, update
the cached snapshot, then wait for the leader key to change, ``loop_wait``, or the
self-fencing deadline, whichever comes first.

Nothing here keeps state that matters across a crash: everything is read again from the store
and the database, which is why a killed agent restarted at any point converges.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs

from hacore import __version__, pki
from hacore.agent import keys, operations, paused, tls_paths
from hacore.agent.checks import CheckRunner, FilesInSync, LoopFacts, builtin_checks
from hacore.agent.counters import Event, EventCounters
from hacore.agent.decide import campaign_blocker, decide
from hacore.agent.errors import (
    InvalidRequestError,
    NotAuthenticatedError,
    NotNowError,
    StateConflictError,
)
from hacore.agent.execute import (
    Backends,
    Executor,
    LeaseState,
    Outcome,
    ReplicationCredentials,
)
from hacore.agent.failsafe import (
    PROMISE_FILE,
    Answer,
    Ask,
    BadQuestion,
    Confirmations,
    Peer,
    Promises,
    sign,
    signed,
    signing_key,
)
from hacore.agent.hooks import HookCaller, NodeLog
from hacore.agent.jobs import Jobs
from hacore.agent.keeper import DeadlineFeed, KeeperProcess, KeeperRunning
from hacore.agent.minority import MinorityEdge
from hacore.agent.observe import (
    DatabaseReader,
    DbReading,
    StoreReading,
    SwitchoverClock,
    observation,
    read_database,
    read_store,
)
from hacore.agent.revocation_sync import RevocationSync
from hacore.agent.snapshot import NodeSnapshot
from hacore.agent.supervise import Supervisor, supervised_servers
from hacore.agent.support import (
    LeaderWatch,
    Membership,
    build_backends,
    cluster_json,
    decision_config,
    known_members,
    member_record,
    plugin_checks,
)
from hacore.agent.syncrep import SyncStandbys
from hacore.agent.vocabulary import (
    Action,
    Decision,
    LeaseStatus,
    NodeState,
    Observation,
    Pause,
)
from hacore.backends.consensus import ConsensusBackend
from hacore.backends.health import CheckResult
from hacore.backends.records import ClusterView, Member, NodeRole
from hacore.backends.replication import ReplicationBackend
from hacore.config.node import NodeConfig
from hacore.errors import HacoreError, StoreUnavailableError
from hacore.plugins.registry import HacorePlugins

log = logging.getLogger("hacore.agent")

_EMPTY_VIEW = ClusterView(leader=None)
#: Seconds between loops while a decision waits for something that takes milliseconds.
_SOON = 0.2
#: A last renewal is started this long before it would no longer fit before the deadline
#: (the loop may wake late on a busy machine).
_LAST_CALL_SLACK = 0.25
__all__ = ["Agent", "Backends", "ReplicationCredentials"]
#: States in which ``nodes restart`` and ``reinit`` are refused (see :meth:`Agent.repair`).
_NOT_REPAIRABLE = frozenset(
    {NodeState.ACTIVE, NodeState.PROMOTING, NodeState.REMOVED, NodeState.EMPTY, NodeState.INIT}
)
#: ... and ``nodes restart`` too: the agent is making the node a standby again by itself.
_REJOINING = frozenset({NodeState.FENCED, NodeState.REJOINING, NodeState.CLONING})


class Agent:
    """One node's agent. Thread-safe for the API: ``snapshot()`` and ``cluster()`` only read
    what the loop last published; the operations talk to the store directly."""

    def __init__(
        self,
        config: NodeConfig,
        plugins: HacorePlugins,
        *,
        backends: Backends | None = None,
        credentials: ReplicationCredentials | None = None,
        api_url: str | None = None,
        keeper: KeeperProcess | None = None,
    ) -> None:
        self.config = config
        self.plugins = plugins
        self.name = config.node.name
        config.node.data_dir.mkdir(parents=True, exist_ok=True)
        self.dcfg = attrs.evolve(
            decision_config(config),
            failsafe_mode=config.failover.failsafe_mode == "on",
            minority_mode=config.failover.minority_mode == "on",
        )
        self.backends = backends or build_backends(config, plugins)
        self.api_url = api_url or f"http://{config.node.host}:{config.node.api_port}"
        self._credentials = credentials
        self.hooks = HookCaller(plugins, config)
        self.log = NodeLog(log, self.name)
        #: The fence keeper (docs/fencing.md); None where no process may be started (an
        #: agent inside a test process): the loop's own self-fencing is then all there is.
        self.keeper = keeper
        self._feed = (
            DeadlineFeed(keeper.record_path, os.getpid(), self.log) if keeper is not None else None
        )
        self.lease = LeaseState(listener=self._lease_changed)
        self.jobs = Jobs(self.name, on_done=self.wake)
        self.state = NodeState.INIT
        self._address = self.backends.replication.address()
        self._facts = LoopFacts(self.name)
        checks = builtin_checks(
            self._facts,
            ttl=self.dcfg.ttl,
            address=self._address,
            services=self.backends.services,
            active_only_services=config.services.active_only if config.services else (),
            filesync=self.backends.filesync,
        )
        self._files_check = next((c for c in checks if isinstance(c, FilesInSync)), None)
        if keeper is not None and self._feed is not None:
            checks.append(KeeperRunning(keeper, self._feed, self.dcfg.ttl))
        #: the servers this agent runs, restarted when they die (hacore/agent/supervise.py)
        self.supervisor = Supervisor(
            supervised_servers(self.backends.managed_store, config.consensus.backend),
            self.log,
            on_change=self.wake,
        )
        checks += self.supervisor.checks(self.dcfg.ttl)
        self._checks = CheckRunner(
            checks + plugin_checks(self.hooks),
            multiplier=config.checks.check_ttl_multiplier,
            timeout=config.timing.retry_timeout,
            active_grace=config.checks.active_grace,
        )
        self._results: dict[str, CheckResult] = {}
        self.counters = EventCounters(checks=self._checks.names)
        self.executor = Executor(
            config,
            self.dcfg,
            self.backends,
            hooks=self.hooks,
            jobs=self.jobs,
            lease=self.lease,
            sync=SyncStandbys(self.backends.replication, self.dcfg.synchronous_mode),
            store_call=self._store_call,
            credentials=lambda: self._credentials,
            member=self._member,
            counters=self.counters,
        )
        self._switch_clock = SwitchoverClock()
        #: a database that does not answer within retry_timeout is unknown (DESIGN rule 7)
        self._db_reader = DatabaseReader(self.backends.replication, timeout=self.dcfg.retry_timeout)
        self._membership = Membership(
            self.name,
            self.backends,
            self.hooks,
            RevocationSync(
                self.name,
                self.backends.consensus,
                self.backends.replication,
                tls_paths.tls_files(config),
                self.set_credentials,
                lambda: self.state is NodeState.ACTIVE,
            ),
        )
        self._known: dict[str, Member] = {}
        self._last_decision: tuple[object, ...] | None = None
        self._last_error = ""
        self._reading: StoreReading | None = None
        #: maintenance mode as last read with a view (kept while the store does not answer);
        #: ``_pause_turn`` counts resumes, so a reading that began before one is not applied
        self._pause: Pause | None = None
        self._pause_turn = 0
        self._pause_lock = threading.Lock()
        self._store_ok_at: float | None = None
        self._snapshot = NodeSnapshot(
            self.name,
            __version__,
            NodeState.INIT,
            loop_wait=self.dcfg.loop_wait,
            ttl=self.dcfg.ttl,
            events=self.counters.counts(),
        )
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._resign_on_stop = True
        self._thread: threading.Thread | None = None
        self._watch = LeaderWatch(self.backends.consensus, self.wake)
        #: failsafe mode (hacore/agent/failsafe.py): the promises this node gives as a member,
        #: and the confirmations it collects as the active
        self.promises = Promises(
            self.name,
            self.dcfg.ttl,
            enabled=self.dcfg.failsafe_mode,
            path=config.node.data_dir / PROMISE_FILE,
        )
        self.confirmations = Confirmations(
            self.name, self.dcfg.ttl, key=self._failsafe_key, verify=self._failsafe_verify
        )
        self._failsafe_holding = False
        self._failsafe_said = ""
        #: minority mode (hacore/agent/minority.py): the salvage slot, the sync release
        self.minority = MinorityEdge(
            self.name, self.dcfg, self.backends.replication, config.node.data_dir, self.log
        )
        #: Set when the loop died of an unexpected error (the agent must be restarted).
        self.died: BaseException | None = None

    # -- public API -------------------------------------------------------------------------

    @property
    def consensus(self) -> ConsensusBackend:
        return self.backends.consensus

    @property
    def replication(self) -> ReplicationBackend:
        return self.backends.replication

    def set_credentials(self, credentials: ReplicationCredentials) -> None:
        self._credentials = credentials

    def start(self) -> Agent:
        """Run the loop in a background thread. An agent runs once: its session ends when it
        stops, so a restart is a new :class:`Agent`."""
        if self._thread is not None:
            if self._thread.is_alive():
                return self
            raise HacoreError(f"the agent of {self.name} already ran; make a new one to restart")
        self._thread = threading.Thread(
            target=self._thread_main, name=f"hacore-agent-{self.name}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, resign: bool = True, timeout: float = 120.0) -> None:
        """Stop the loop. ``resign``: demote cleanly and release the lease so another node
        takes over at once; False leaves everything as a crash would (the lease expires)."""
        self._resign_on_stop = resign
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if resign:
            self.jobs.join(timeout)

    def run_forever(self) -> None:
        """Run the loop in this thread until :meth:`stop`."""
        self._startup()
        try:
            while not self._stop.is_set():
                self._wake.clear()
                wait = self._iterate()
                if wait > 0:
                    self._wake.wait(wait)
        finally:
            self._watch.stop()
            if self._membership.revocations is not None:
                self._membership.revocations.stop(timeout=2.0)
            if self._stop.is_set() and self._resign_on_stop and self._pause is not None:
                self._leave_paused()
            elif self._stop.is_set() and self._resign_on_stop:
                self._shutdown()
                self._retire_keeper()
            self._checks.close()
            self.confirmations.close()

    def wake(self) -> None:
        self._wake.set()

    def snapshot(self) -> NodeSnapshot:
        """The loop's last snapshot; never "active" past the self-fencing deadline, even when
        the loop is stuck."""
        snap = self._snapshot
        if snap.is_active and self._pause is None:
            deadline = self._deadline()
            if deadline is None or time.monotonic() >= deadline:
                return attrs.evolve(snap, is_active=False)
        return snap

    def cluster(self) -> dict[str, Any]:
        return cluster_json(self.config, self._snapshot, self._reading)

    def request_switchover(self, to: str | None = None) -> keys.StoredSwitchover:
        """Ask the active to hand over (to ``to``, or the best standby); raises the API's
        errors when it cannot work."""
        request = operations.request_switchover(
            self.backends.consensus, to, timeout=self.dcfg.switchover_timeout
        )
        self.log.info("switchover requested: %s -> %s", request.from_node, to or "the best standby")
        self.wake()
        return request

    def record_bootstrap(self) -> None:
        """For ``cluster start``, after bootstrapping the database and before :meth:`start`:
        name this node as the last active in the status key. In synchronous mode nobody may
        campaign without it."""
        operations.record_bootstrap(self.backends.consensus, self.backends.replication)

    def mark_removed(self, name: str) -> None:
        """Write ``removed/<name>``: that node steps down and never campaigns again."""
        operations.mark_removed(self.backends.consensus, name, by=self.name)
        self.log.info("node %s marked removed", name)
        self.wake()  # what the API reports (``nodes list``) is the loop's reading: renew it now

    def clear_removed(self, name: str) -> None:
        """Let a removed node (re)join: delete ``removed/<name>``."""
        self.backends.consensus.delete(keys.removed_key(name))

    def request_failover(self, to: str, *, dry_run: bool = False) -> dict[str, Any]:
        """``cluster failover --to``: what promoting ``to`` may lose, and unless ``dry_run``
        the request that lets it campaign (:func:`operations.request_failover`)."""
        answer = operations.request_failover(self.backends.consensus, to, dry_run=dry_run)
        if answer["requested"]:
            self.log.warning(
                "manual failover to %s requested; it may lose %s bytes acknowledged by %s",
                to,
                answer["may_lose_bytes"],
                answer["last_active"],
            )
            self.wake()
        return answer

    def repair(
        self,
        action: Action,
        *,
        database: bool = True,
        services: bool = False,
        in_place: bool = False,
    ) -> str:
        """``nodes restart`` (:attr:`Action.RESTART`) or ``nodes reinit`` (:attr:`Action.CLONE`)
        of this node, a standby, as a job: the loop decides nothing while it runs (``decide``
        starts no other job and does not campaign), and its failure is logged like a clone's.
        Refused on a node that holds or is taking the lease: the active is restarted after a
        switchover, and never re-cloned. ``in_place``: the active restarts without a
        switchover, only while the cluster is paused."""
        if in_place:
            return self._restart_in_place(action, database=database, services=services)
        refused = _NOT_REPAIRABLE | (_REJOINING if action is Action.RESTART else frozenset())
        if self.lease.lease is not None or self.state in refused:
            raise StateConflictError(
                f"{self.name} is {self.state.value}: only a standby can be "
                f"{'re-cloned' if action is Action.CLONE else 'restarted'} this way"
                + (
                    " (switch over first: hacore cluster switchover)"
                    if self.state in (NodeState.ACTIVE, NodeState.PROMOTING)
                    else ""
                )
            )
        reading = self._reading
        view = reading.view if reading is not None else None
        leader = view.leader.name if view is not None and view.leader is not None else None
        if leader == self.name:
            raise StateConflictError(f"{self.name} holds the leader key: it is not a standby")
        replication = self.backends.replication
        if action is Action.CLONE:
            if leader is None:
                raise NotNowError("there is no active node to copy the database from")
            origin = self.executor.source(view, leader)
            what = f"reinit: a new copy of the database from {leader}"

            def work() -> None:
                replication.clone(origin)
                replication.start(follow=origin)

        else:
            source = self.executor.source(view, leader) if leader is not None else None
            parts = ["the database"] if database else []
            parts += ["the services"] if services else []
            what = f"restart of {' and '.join(parts) or 'nothing'}"
            work = operations.restart_work(
                replication, self.executor.extras, source, database=database, services=services
            )
        running = self.jobs.running()
        if not self.jobs.submit(action, what, work):
            job = running.value if running is not None else "another job"
            raise StateConflictError(f"{job} is running on {self.name}: try again once it is done")
        self.wake()
        return what

    def _restart_in_place(self, action: Action, *, database: bool, services: bool) -> str:
        """``nodes restart --in-place`` of the active while paused: the database stops and
        comes back the primary it was, as a job; nobody takes over meanwhile (rule P0), and
        the keeper enforces no deadline."""
        if action is not Action.RESTART:
            raise InvalidRequestError("only a restart can be done in place")
        if self._pause is None:
            raise StateConflictError(
                f"{self.name}: an in-place restart of the active needs maintenance mode: run "
                "hacore cluster pause first (without --in-place the active is restarted after "
                "a switchover)"
            )
        if self.state is not NodeState.ACTIVE:
            raise StateConflictError(
                f"{self.name} is {self.state.value}: only the active restarts in place; a "
                "standby restarts without --in-place"
            )
        parts = ["the database"] if database else []
        parts += ["the services"] if services else []
        what = f"in-place restart of {' and '.join(parts) or 'nothing'} (paused)"
        work = operations.restart_in_place_work(
            self.backends.replication, self.executor.extras, database=database, services=services
        )
        running = self.jobs.running()
        if not self.jobs.submit(action, what, work):
            job = running.value if running is not None else "another job"
            raise StateConflictError(f"{job} is running on {self.name}: try again once it is done")
        self.log.warning("%s", what)
        self.wake()
        return what

    # -- the loop ---------------------------------------------------------------------------

    def _thread_main(self) -> None:
        try:
            self.run_forever()
        except BaseException as err:
            self.died = err
            self.log.critical("the agent loop died: %s: %s", type(err).__name__, err)

    def _startup(self) -> None:
        if self.keeper is not None and self._feed is not None:
            # Adopted first: a keeper still running for a killed predecessor sees this pid.
            self._feed.adopt()
            self.keeper.ensure(self.log)
        store, extras = self.backends.managed_store, self.executor.extras
        if store is not None and store.data_dir.is_dir() and not store.is_running():
            extras.safely("starting this node's store server", store.start)
        extras.start_everywhere()
        if not self._paused_at_start():
            extras.stop_active()  # a node that is not active yet runs no active-only service
        extras.start_files()
        self._watch.start()
        self.log.info("agent started (hacore %s)", __version__)

    def _iterate(self) -> float:
        try:
            return self._iterate_once()
        except HacoreError as err:
            self._note_error(f"loop iteration failed: {err}")
        except Exception:
            self.log.exception("loop iteration failed")
        return self.dcfg.loop_wait

    def _iterate_once(self) -> float:
        clock = time.monotonic
        started = clock()
        self.minority.loop_at = started
        turn = self._pause_turn
        reading = read_store(
            self.backends.consensus,
            lease=self.lease.lease,
            last_renewal=self.lease.last_renewal,
            gate=self._gate(),
            retry_timeout=self.dcfg.retry_timeout,
        )
        if reading.store_error:
            self.counters.add(Event.STORE_ERROR)
        self._failsafe_round(reading)
        if reading.lease_status is LeaseStatus.LOST:
            self.log.warning("leadership lost: the store no longer holds this node's leader key")
            self.lease.drop()
        elif reading.lease_status is LeaseStatus.HELD and reading.last_renewal is not None:
            self.lease.renewed(reading.last_renewal)
        if reading.answered_at is not None:
            self._store_ok_at = reading.answered_at
        if reading.view is not None:
            self._reading = reading
            self._note_pause(reading.pause, turn)
        db = self._db_reader.read()
        self._guard(db)
        view = reading.view
        self._facts.update(started, db.status, db.initialized, view, self._store_ok_at)
        self._facts.active = self.state is NodeState.ACTIVE
        # A removed node's store member was stopped (or removed from the store) on purpose.
        removed = self.state is NodeState.REMOVED or self.name in reading.removed
        self.supervisor.tick(enabled=not removed and self._pause is None)
        health, self._results = self._checks.run(active=self._facts.active, now=clock())
        for name, result in self._results.items():
            if not result.ok:
                self.counters.add(Event.CHECK_FAILURE, name)
        obs = observation(
            self.name,
            clock(),
            reading,
            db,
            health=health,
            switchover=self._switch_clock.request(reading, started),
            veto_until=self.lease.veto_until,
            last_renewal=self.lease.last_renewal,
            previous=self.state,
            job=self.jobs.running(),
            failsafe_expiry=self.confirmations.expiry if self.dcfg.failsafe_mode else None,
            promised_until=self.promises.live_until(),
            pause=self._pause,
        )
        decision = decide(obs, self.dcfg)
        self._log_decision(decision)
        if view is not None:
            self._membership.update(view, reading.removed, initialized=db.initialized)
        if decision.action not in (Action.STAY_ACTIVE, Action.PROMOTE, Action.NONE):
            # Load balancers must stop sending traffic before the database is fenced.
            self._snapshot = attrs.evolve(self._snapshot, is_active=False)
        outcome = self._execute(decision, obs, reading)
        self.minority.after(decision, obs, reading.removed, self.executor.sync.reset)
        old_role, self.state = self.state.role, outcome.state
        if old_role is not self.state.role:
            self.hooks.call(
                "hacore_role_changed", view=view or _EMPTY_VIEW, old=old_role, new=self.state.role
            )
        self._publish(obs)
        leader = self._facts.leader
        if (
            leader not in (None, self.name)
            and self.state is not NodeState.PROMOTING
            and self._pause is None
        ):
            self.executor.extras.files_from(leader)
        self._snapshot = self._build_snapshot(obs, decision, outcome)
        return 0.0 if outcome.observe_again else self._wait_time(decision)

    def _execute(self, decision: Decision, obs: Observation, reading: StoreReading) -> Outcome:
        if decision.action is Action.CAMPAIGN:
            # No failsafe confirmation is given while the campaign runs, and no campaign
            # runs under one given since the observation (rule F0 at the edge).
            with self.promises.campaigning() as may:
                if not may:
                    self.log.info("not campaigning: a failsafe promise was given meanwhile")
                    return Outcome(obs.previous)
                return self._carry_out(decision, obs, reading)
        return self._carry_out(decision, obs, reading)

    def _carry_out(self, decision: Decision, obs: Observation, reading: StoreReading) -> Outcome:
        try:
            outcome = self.executor.run(decision, obs, reading)
        except Exception as err:
            what = f"{decision.action.value} failed: {err}"
            if not isinstance(err, HacoreError):
                self.log.exception("%s", what)
            self._note_error(what)
            if decision.action is Action.PROMOTE and self.lease.lease is not None:
                return Outcome(NodeState.PROMOTING)
            if decision.action is Action.STAY_ACTIVE or obs.previous is NodeState.INIT:
                return Outcome(decision.next_state)
            return Outcome(obs.previous)
        if outcome.error:
            self._note_error(f"{decision.action.value}: {outcome.error}")
        else:
            self._last_error = ""
        return outcome

    def _lease_changed(self) -> None:
        """A renewal, a won campaign, or writes allowed: the keeper's deadline moves first."""
        if self._feed is not None and self.lease.may_write:
            deadline = self._deadline()
            paused = self._pause is not None
            self._feed.update(may_write=True, deadline=deadline, db_role=None, paused=paused)

    def _guard(self, db: DbReading) -> None:
        """Release the keeper's record once the database is seen not to be a primary, and
        keep the keeper running."""
        if self.keeper is None or self._feed is None:
            return
        self._feed.update(
            may_write=self.lease.may_write,
            deadline=self._deadline(),
            db_role=db.status.role if db.status_known else None,
            paused=self._pause is not None,
        )
        self.keeper.ensure(self.log)

    def _retire_keeper(self) -> None:
        """After a clean stop: a database seen fenced needs no keeper; otherwise it stays
        and enforces the last deadline."""
        if self.keeper is None or self._feed is None:
            return
        db = read_database(self.backends.replication)
        role = db.status.role if db.status_known else None
        self._feed.update(may_write=False, deadline=None, db_role=role)
        record = self._feed.current
        if record is not None and not record.holds:
            try:
                self.keeper.stop()
            except HacoreError as err:
                self.log.warning("could not stop the fence keeper: %s", err)
        else:
            self.log.warning("the database may still write: the fence keeper stays to fence it")

    def _gate(self) -> float | None:
        """The deadline store calls must end by, while the database may write (none while
        paused: no deadline is enforced then, and a skipped renewal could never come back)."""
        return self._deadline() if self.lease.may_write and self._pause is None else None

    # -- maintenance mode -------------------------------------------------------------------

    def _note_pause(self, pause: Pause | None, turn: int) -> None:
        """The pause key as read with a view, unless a resume ran since the reading began
        (it already deleted the key and fed the keeper a deadline)."""
        with self._pause_lock:
            if turn != self._pause_turn:
                return
            if (pause is None) != (self._pause is None):
                self.log.warning(
                    "%s", f"cluster {paused.describe(pause)}" if pause else "cluster resumed"
                )
            self._pause = pause

    @property
    def paused(self) -> bool:
        """The cluster is paused, as this agent last read it."""
        return self._pause is not None

    def _paused_at_start(self) -> bool:
        """Whether the cluster is paused, before the first loop: a paused active's services
        are left running. A store that does not answer says nothing: the normal rules apply
        until it does (a writable database without a lease is fenced, rule 11), so an agent
        never keeps a database writable on a pause it could not read."""
        try:
            pause, _ = operations.read_pause(self.backends.consensus)
        except HacoreError as err:
            self.log.info("cannot tell whether the cluster is paused yet: %s", err)
            return False
        with self._pause_lock:
            self._pause = pause
        return pause is not None

    def pause(self, reason: str = "", *, by: str) -> dict[str, Any]:
        """``cluster pause``: write the pause key (idempotent); every agent honours it on its
        next loop (this one at once)."""
        answer = operations.pause(self.backends.consensus, Pause(by, time.time(), reason))
        self.wake()
        return answer

    def resume(self, *, force: bool = False) -> dict[str, Any]:
        """``cluster resume``, on the active: feed the keeper a deadline again, then delete
        the pause key, so no moment exists in which the pause is over for the others while
        this database still writes with no deadline. Refused on a node that holds no lease
        unless ``force`` (docs/fencing.md, "Maintenance mode")."""
        consensus = self.backends.consensus
        running = self.jobs.running()
        if running is not None and not force:
            raise StateConflictError(
                f"{running.value} is running on {self.name}: resume once it is done"
            )
        with self._pause_lock:
            lease = self.lease.lease
            if not force:
                operations.check_resumable(consensus, self.name, lease)
            if lease is not None and not force:
                sent = time.monotonic()
                if not consensus.renew(lease):
                    raise StateConflictError(f"{self.name} lost its lease: resume refused")
                self._pause_turn += 1
                self._pause = None
                self.lease.renewed(sent)  # the keeper gets a deadline before the key goes
            else:
                self._pause_turn += 1
                self._pause = None
            answer = operations.resume(consensus)
        if not answer["already"]:
            self.log.warning("cluster resumed%s", " (forced)" if force else "")
        self.wake()
        return answer

    def _leave_paused(self) -> None:
        """A stop while paused hands nothing over: the database keeps running as it is (no
        fence, no resign), the keeper is told the cluster is paused. The session ends, so
        the leader key goes with it; the next agent takes the lease back (rule P2)."""
        self.log.warning(
            "agent stopping while the cluster is %s: the database is left running as it is",
            paused.describe(self._pause) if self._pause else "paused",
        )
        if self._feed is not None and self.keeper is not None:
            self._feed.update(may_write=False, deadline=None, db_role=None, paused=True)
            try:
                self.keeper.stop()
            except HacoreError as err:
                self.log.warning("could not stop the fence keeper: %s", err)
        self.executor.extras.stop_files()
        try:
            self.backends.consensus.close()
        except HacoreError as err:
            self.log.warning("could not end the store session: %s", err)
        self.log.info("agent stopped")

    def _deadline(self) -> float | None:
        """The self-fencing deadline: the lease's, or later while failsafe holds (rule F1),
        the earliest confirmation expiry minus ``safety_margin``. What the keeper enforces."""
        own = self.minority.deadline(self.lease.deadline(self.dcfg))
        expiry = self.confirmations.expiry
        if own is None or expiry is None or not self._failsafe_holding:
            return own
        return max(own, expiry - self.dcfg.safety_margin)

    # -- failsafe mode ----------------------------------------------------------------------

    def _failsafe_round(self, reading: StoreReading) -> None:
        """As the active with the store silent: ask every member to confirm, once per loop."""
        if not self.dcfg.failsafe_mode:
            return
        lease = self.lease.lease
        if reading.lease_status is LeaseStatus.HELD or (
            lease is None and not self._failsafe_holding
        ):
            self.confirmations.reset()
            self._failsafe_holding = False
            self._failsafe_say("")
            return
        if lease is None or reading.view is not None or not self.lease.may_write:
            self._failsafe_holding = False
            return
        deadline = self._deadline()
        timeout = min(self.dcfg.retry_timeout, (deadline or 0.0) - time.monotonic())
        if timeout <= 0:
            self._failsafe_say("failsafe: no time left to ask the members before the deadline")
            return
        result = self.confirmations.ask(self._failsafe_peers(), lease.token, timeout)
        self._failsafe_holding = self.confirmations.expiry is not None
        if result.complete:
            self._failsafe_say(
                f"failsafe: the store does not answer; {', '.join(result.asked)} confirmed "
                "this active"
            )
        else:
            missing = "; ".join(f"{n or 'round'}: {why}" for n, why in result.missing.items())
            self._failsafe_say(f"failsafe: not every member confirmed this active ({missing})")

    def _failsafe_say(self, message: str) -> None:
        if message and message != self._failsafe_said:
            self.log.warning("%s", message)
        self._failsafe_said = message

    def _failsafe_peers(self) -> list[Peer]:
        """Every member of the last view, and every member known before whose record
        vanished: a node that is not asked could campaign once it reaches the store."""
        view = self._reading.view if self._reading is not None else None
        members = {m.name: m for m in self._known.values()}
        if view is not None:
            members.update({m.name: m for m in view.members})
        return [
            Peer(m.name, m.api_url or f"http://{m.host}:{self.config.node.api_port}")
            for name, m in sorted(members.items())
            if name != self.name
        ]

    def _failsafe_json(self) -> dict[str, Any] | None:
        if not self.dcfg.failsafe_mode:
            return None
        now = time.monotonic()
        deadline = self._deadline() if self._failsafe_holding else None
        last = self.confirmations.last
        return {
            "mode": "on",
            "holding": deadline is not None and now < deadline,
            "deadline_in": None if deadline is None else round(deadline - now, 3),
            "last_round": None
            if last is None
            else {
                "age": round(now - last.sent_at, 3),
                "asked": list(last.asked),
                "missing": dict(last.missing),
            },
            "promise": self.promises.json(now),
        }

    def _failsafe_key(self) -> bytes | None:
        auth = self.config.api.auth
        return signing_key(auth.password_hash) if auth is not None else None

    def _failsafe_verify(self) -> ssl.SSLContext | bool:
        files = tls_paths.tls_files(self.config)
        if files is None or not files.ca_file.exists():
            return False
        return pki.ssl_client_context(pki.load_ca_certificate(files.ca_file))

    def failsafe_answer(self, body: bytes, signature: str) -> tuple[bytes, str]:
        """``POST /failsafe`` on this member: the signed answer to an active's question."""
        key = self._failsafe_key()
        if key is None:
            raise NotNowError("this agent has no API credentials to check the question with")
        if not signed(key, body, signature):
            raise NotAuthenticatedError(
                "the failsafe question is not signed with the cluster's key"
            )
        try:
            ask = Ask.decode(body)
        except BadQuestion as err:
            raise InvalidRequestError(str(err)) from None
        reading = self._reading
        view = reading.view if reading is not None else None
        answer: Answer = self.promises.answer(
            ask,
            holds_lease=lambda: self.lease.lease is not None,
            leader=view.leader if view is not None else None,
            read=view is not None,
        )
        if answer.confirmed:
            self.log.info(
                "failsafe: confirmed %s (token %d); not campaigning for %gs",
                ask.asker,
                ask.token,
                answer.ttl,
            )
        else:
            self.log.info("failsafe: not confirming %s: %s", ask.asker, answer.why)
        out = answer.encode()
        return out, sign(key, out)

    def _store_call(self, call: Callable[[], object]) -> object:
        gate = self._gate()
        try:
            if gate is not None and time.monotonic() + self.dcfg.retry_timeout > gate:
                raise StoreUnavailableError("not sent: the self-fencing deadline is too close")
            return call()
        except HacoreError:
            self.counters.add(Event.STORE_ERROR)
            raise

    def _wait_time(self, decision: Decision) -> float:
        wait = self.dcfg.loop_wait
        if decision.observe_soon:
            wait = min(wait, _SOON)
        now = time.monotonic()
        gate = self._gate()
        # Also wake when a last renewal still fits before the self-fencing deadline: a loop
        # that wakes later may only fence, though the store is back (a new raft leader).
        last_call = None if gate is None else gate - self.dcfg.retry_timeout - _LAST_CALL_SLACK
        for deadline in (decision.deadline, last_call, gate):
            if deadline is not None and deadline > now:
                wait = min(wait, deadline - now)
        return wait

    def _member(self, role: NodeRole, obs: Observation) -> Member:
        member = member_record(
            self.config,
            role,
            obs,
            candidate=campaign_blocker(obs, self.dcfg) is None,
            api_url=self.api_url,
            address=self._address,
            files=self._membership.files_identity(),
            checks=self._results,
            files_state=self._files_check.last if self._files_check else None,
            servers=self.supervisor.status(),
        )
        if obs.pause is not None:
            # ``cluster pause --wait`` waits until every member says so
            member = attrs.evolve(member, extra={**member.extra, "paused": True})
        minority = self._minority_json()
        if minority is None:
            return member
        return attrs.evolve(member, extra={**member.extra, "minority": minority})

    def _minority_json(self) -> dict[str, Any] | None:
        return self.minority.json(time.monotonic(), job_error=self.jobs.last_error)

    def _publish(self, obs: Observation) -> None:
        member = self._member(self.state.role, obs)
        try:
            self._store_call(lambda: self.backends.consensus.publish_member(member))
        except HacoreError as err:
            self.log.debug("member record not published: %s", err)

    def _build_snapshot(self, obs: Observation, decision: Decision, out: Outcome) -> NodeSnapshot:
        leader = self._snapshot.leader if obs.view is None else self._facts.leader
        if obs.view is not None:
            gone = self._reading.removed if self._reading is not None else ()
            self._known = known_members(self._known, obs.view, obs.removed, self.name, gone)
        lease = self.lease.lease
        return NodeSnapshot(
            node_name=self.name,
            version=__version__,
            state=self.state,
            is_active=out.is_active and (lease is not None or obs.pause is not None),
            standby_streaming=self.state is NodeState.STANDBY
            and leader is not None
            and obs.db.following == leader,
            healthy=obs.health.ok,
            checks=self._results,
            replication=obs.db,
            lease_token=lease.token if lease else None,
            leader=leader,
            members=tuple(self._known[n] for n in sorted(self._known)),
            store_ok=obs.view is not None,
            last_loop_at=time.monotonic(),
            loop_wait=self.dcfg.loop_wait,
            ttl=self.dcfg.ttl,
            reason=self._last_error or decision.reason,
            servers=self.supervisor.status(),
            failsafe=self._failsafe_json(),
            minority=self._minority_json(),
            observation=obs,
            decision=decision,
            events=self.counters.counts(),
            store_reached_at=self._store_ok_at,
            files=self._files_check.last if self._files_check else None,
            paused=operations.pause_json(obs.pause),
        )

    def _log_decision(self, decision: Decision) -> None:
        key = (decision.action, decision.next_state, decision.target)
        if key != self._last_decision:
            self.log.info(
                "%s -> %s: %s",
                decision.action.value,
                decision.next_state.value,
                decision.reason,
            )
            self._last_decision = key
        else:
            self.log.debug("%s: %s", decision.action.value, decision.reason)

    def _note_error(self, message: str) -> None:
        """Warn once per distinct error, then only at debug level while it repeats."""
        if message != self._last_error:
            self.log.warning("%s", message)
        else:
            self.log.debug("%s", message)
        self._last_error = message

    def _shutdown(self) -> None:
        """Clean stop: an active demotes and resigns at once; every node ends its session."""
        view = self._reading.view if self._reading and self._reading.view else _EMPTY_VIEW
        self.executor.shutdown(view)
        try:
            self.backends.consensus.close()
        except HacoreError as err:
            self.log.warning("could not end the store session: %s", err)
        self.log.info("agent stopped")
