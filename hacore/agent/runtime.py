"""The agent: one loop per node that observes, decides and acts.

Each iteration (docs/agent.md): renew the lease (or keep the session alive), read the view and
the agent's keys, read the local database, run the health checks, build the Observation, call
:func:`~hacore.agent.decide.decide`, carry the decision out, publish the member record, update
the cached snapshot, then wait for the leader key to change, ``loop_wait``, or the
self-fencing deadline, whichever comes first. A renewal thread (hacore/agent/renewal.py)
renews the held lease too when an iteration runs long; the loop alone decides and fences.

Nothing here keeps state that matters across a crash: everything is read again from the store
and the database, which is why a killed agent restarted at any point converges.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import attrs

from hacore import __version__
from hacore.agent import interpreter, keys, operations, paused
from hacore.agent.cluster_view import cluster_json, known_members
from hacore.agent.counters import Event
from hacore.agent.credentials import ReplicationCredentials
from hacore.agent.decide import decide
from hacore.agent.errors import StateConflictError
from hacore.agent.failsafe import Peer
from hacore.agent.keeper import KeeperProcess
from hacore.agent.loop_log import LoopLog
from hacore.agent.observe import StoreReading, SwitchoverClock, observation, read_store
from hacore.agent.outcome import Outcome
from hacore.agent.renewal import Renewal
from hacore.agent.repair_jobs import in_place_job, standby_job
from hacore.agent.snapshot import NodeSnapshot
from hacore.agent.vocabulary import Action, Decision, LeaseStatus, NodeState, Observation
from hacore.agent.wiring import retune, wire
from hacore.backends.consensus import ConsensusBackend
from hacore.backends.records import ClusterView, Member
from hacore.backends.replication import ReplicationBackend
from hacore.config.node import NodeConfig
from hacore.errors import HacoreError
from hacore.plugins.factory import Backends
from hacore.plugins.registry import HacorePlugins

_EMPTY_VIEW = ClusterView(leader=None)
#: Seconds between loops while a decision waits for something that takes milliseconds.
_SOON = 0.2
#: A last renewal is started this long before it would no longer fit before the deadline
#: (the loop may wake late on a busy machine).
_LAST_CALL_SLACK = 0.25
__all__ = ["Agent", "Backends", "ReplicationCredentials"]


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
        self.api_url = api_url or f"http://{config.node.host}:{config.node.api_port}"
        self._wake = threading.Event()
        self.state = NodeState.INIT
        #: the collaborators (hacore/agent/wiring.py); the most used ones by name below
        self.parts = parts = wire(
            config,
            plugins,
            api_url=self.api_url,
            wake=self.wake,
            is_active=lambda: self.state is NodeState.ACTIVE,
            backends=backends,
            credentials=credentials,
            keeper=keeper,
        )
        self.dcfg = parts.dcfg
        self.backends = parts.backends
        self.hooks = parts.hooks
        self.log = parts.log
        #: The fence keeper (docs/fencing.md); None where no process may be started (an
        #: agent inside a test process): the loop's own self-fencing is then all there is.
        self.keeper = keeper
        self.lease = parts.lease
        self.jobs = parts.jobs
        self.executor = parts.executor
        self.supervisor = parts.supervisor
        self.counters = parts.counters
        self.minority = parts.minority
        self.promises = parts.failsafe.promises
        self.confirmations = parts.failsafe.confirmations
        #: renews the held lease while an iteration runs long (hacore/agent/renewal.py)
        self.renewal = Renewal(
            parts.backends.consensus,
            parts.lease,
            parts.deadline,
            parts.dcfg,
            log=parts.log,
            wake=self.wake,
            counters=parts.counters,
        )
        # what the loop keeps between iterations (read again after a crash)
        self._switch_clock = SwitchoverClock()
        self._known: dict[str, Member] = {}
        self.loop_log = LoopLog(self.log)
        self._reading: StoreReading | None = None
        self._store_ok_at: float | None = None
        self._snapshot = NodeSnapshot(
            self.name,
            __version__,
            NodeState.INIT,
            loop_wait=self.dcfg.loop_wait,
            ttl=self.dcfg.ttl,
            events=self.counters.counts(),
        )
        self._stop = threading.Event()
        self._resign_on_stop = True
        self._thread: threading.Thread | None = None
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
        self.parts.credentials.set(credentials)

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
        interpreter.share_promptly()
        self._startup()
        try:
            settled = False
            while not self._stop.is_set():
                self._wake.clear()
                wait = self._iterate()
                if not settled:
                    settled = True
                    interpreter.settle()
                if wait > 0:
                    self._wake.wait(wait)
        finally:
            # before anything below resigns: a stopped (or killed) loop renews nothing more
            self.renewal.stop()
            self.parts.watch.stop()
            if self.parts.membership.revocations is not None:
                self.parts.membership.revocations.stop(timeout=2.0)
            if self._stop.is_set() and self._resign_on_stop and self.paused:
                self._leave_paused()
            elif self._stop.is_set() and self._resign_on_stop:
                self._shutdown()
                self.parts.keeper.retire(self.backends.replication)
            self.parts.checks.close()
            self.parts.failsafe.close()

    def wake(self) -> None:
        self._wake.set()

    def snapshot(self) -> NodeSnapshot:
        """The loop's last snapshot; never "active" past the self-fencing deadline, even when
        the loop is stuck."""
        snap = self._snapshot
        if snap.is_active and not self.paused:
            deadline = self.parts.deadline()
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
            what, work = in_place_job(
                action,
                name=self.name,
                state=self.state,
                paused=self.paused,
                executor=self.executor,
                replication=self.backends.replication,
                database=database,
                services=services,
            )
        else:
            reading = self._reading
            what, work = standby_job(
                action,
                name=self.name,
                state=self.state,
                holds_lease=self.lease.lease is not None,
                view=reading.view if reading is not None else None,
                executor=self.executor,
                replication=self.backends.replication,
                database=database,
                services=services,
            )
        running = self.jobs.running()
        if not self.jobs.submit(action, what, work):
            job = running.value if running is not None else "another job"
            raise StateConflictError(f"{job} is running on {self.name}: try again once it is done")
        if in_place:
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
        self.parts.keeper.start()
        store, extras = self.backends.managed_store, self.executor.extras
        if store is not None and store.data_dir.is_dir() and not store.is_running():
            extras.safely("starting this node's store server", store.start)
        extras.start_everywhere()
        if not self.parts.pause.read_at_start():
            extras.stop_active()  # a node that is not active yet runs no active-only service
        extras.start_files()
        self.parts.watch.start()
        self.renewal.start(self.name)
        self.log.info("agent started (hacore %s)", __version__)

    def _iterate(self) -> float:
        self.renewal.busy_since = time.monotonic()
        try:
            return self._iterate_once()
        except HacoreError as err:
            self.loop_log.failed(f"loop iteration failed: {err}")
        except Exception:
            self.log.exception("loop iteration failed")
        finally:
            self.renewal.busy_since = None
        return self.dcfg.loop_wait

    def _iterate_once(self) -> float:
        clock = time.monotonic
        started = clock()
        self.minority.loop_at = started
        turn = self.parts.pause.turn
        db_answer = self.parts.db_reader.start()  # it answers while the store is read
        reading = read_store(
            self.backends.consensus,
            lease=self.lease.lease,
            last_renewal=self.lease.last_renewal,
            gate=self.parts.deadline.gate(),
            retry_timeout=self.dcfg.retry_timeout,
        )
        if reading.view is not None:
            # a record its own node did not sign reaches no decision (record_trust.py)
            reading = attrs.evolve(reading, view=self.parts.trust.view(reading.view))
        if reading.store_error:
            self.counters.add(Event.STORE_ERROR)
        self.parts.failsafe.round(reading, self._failsafe_peers, self.parts.deadline)
        if reading.lease_status is LeaseStatus.LOST:
            self.log.warning("leadership lost: the store no longer holds this node's leader key")
            self.lease.drop()
        elif reading.lease_status is LeaseStatus.HELD and reading.last_renewal is not None:
            self.lease.renewed(reading.last_renewal)
        if reading.answered_at is not None:
            self._store_ok_at = reading.answered_at
        if reading.view is not None:
            self._reading = reading
            self.parts.pause.note(reading.pause, turn)
        self._follow_settings(reading)
        db = db_answer()
        self.parts.keeper.guard(db)
        view = reading.view
        facts = self.parts.facts
        facts.update(started, db.status, db.initialized, view, self._store_ok_at)
        facts.active = self.state is NodeState.ACTIVE
        # A removed node's store member was stopped (or removed from the store) on purpose.
        removed = self.state is NodeState.REMOVED or self.name in reading.removed
        self.supervisor.tick(enabled=not removed and not self.paused)
        self.parts.store_leadership.tick(
            active=facts.active and not removed and not self.paused,
            store_ok=reading.answered_at is not None,
        )
        health, results = self.parts.checks.run(active=facts.active, now=clock())
        for name, result in results.items():
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
            pause=self.parts.pause.current,
        )
        decision = decide(obs, self.dcfg)
        self.loop_log.decision(decision)
        if view is not None:
            self.parts.membership.update(view, reading.removed, initialized=db.initialized)
        if decision.action not in (Action.STAY_ACTIVE, Action.PROMOTE, Action.NONE):
            # Load balancers must stop sending traffic before the database is fenced.
            self._snapshot = attrs.evolve(self._snapshot, is_active=False)
        outcome = self._execute(decision, obs, reading)
        if decision.action not in (Action.NONE, Action.STAY_ACTIVE):
            self.parts.db_reader.forget()  # a late answer would describe the database before
        if decision.action is Action.PROMOTE and outcome.state is NodeState.ACTIVE:
            self.parts.checks.restart_windows(clock())
        self.minority.after(decision, obs, reading.removed, self.executor.sync.reset)
        old_role, self.state = self.state.role, outcome.state
        if old_role is not self.state.role:
            self.hooks.call(
                "hacore_role_changed", view=view or _EMPTY_VIEW, old=old_role, new=self.state.role
            )
        self._publish(obs)
        leader = facts.leader
        if (
            leader not in (None, self.name)
            and self.state is not NodeState.PROMOTING
            and not self.paused
        ):
            self.executor.extras.files_from(leader)
        self._snapshot = self._build_snapshot(obs, decision, outcome)
        return 0.0 if outcome.observe_again else self._wait_time(decision)

    def _follow_settings(self, reading: StoreReading) -> None:
        """Seed or apply the cluster-wide settings (hacore/agent/settings_sync.py)."""
        config = self.parts.settings.step(
            reading,
            active=self.state is NodeState.ACTIVE and self.lease.lease is not None,
            busy=self.jobs.running() is not None,
            call=self.parts.store_gate,
        )
        if config is not None:
            self.parts = retune(self.parts, config)
            self.dcfg = self.parts.dcfg

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
            self.loop_log.failed(what)
            if decision.action is Action.PROMOTE and self.lease.lease is not None:
                return Outcome(NodeState.PROMOTING)
            if decision.action is Action.STAY_ACTIVE or obs.previous is NodeState.INIT:
                return Outcome(decision.next_state)
            return Outcome(obs.previous)
        if outcome.error:
            self.loop_log.failed(f"{decision.action.value}: {outcome.error}")
        else:
            self.loop_log.succeeded()
        return outcome

    # -- maintenance mode -------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        """The cluster is paused, as this agent last read it."""
        return self.parts.pause.paused

    def pause(self, reason: str = "", *, by: str) -> dict[str, Any]:
        """``cluster pause``: write the pause key (idempotent); every agent honours it on its
        next loop (this one at once)."""
        answer = self.parts.pause.pause(reason, by=by)
        self.wake()
        return answer

    def resume(self, *, force: bool = False) -> dict[str, Any]:
        """``cluster resume``, on the active: feed the keeper a deadline again, then delete
        the pause key, so no moment exists in which the pause is over for the others while
        this database still writes with no deadline. Refused on a node that holds no lease
        unless ``force`` (docs/fencing.md, "Maintenance mode")."""
        answer = self.parts.pause.resume(force=force)
        self.wake()
        return answer

    def _leave_paused(self) -> None:
        """A stop while paused hands nothing over: the database keeps running as it is (no
        fence, no resign), the keeper is told the cluster is paused. The session ends, so
        the leader key goes with it; the next agent takes the lease back (rule P2)."""
        pause = self.parts.pause.current
        self.log.warning(
            "agent stopping while the cluster is %s: the database is left running as it is",
            paused.describe(pause) if pause else "paused",
        )
        self.parts.keeper.leave_paused()
        self.executor.extras.stop_files()
        try:
            self.backends.consensus.close()
        except HacoreError as err:
            self.log.warning("could not end the store session: %s", err)
        self.log.info("agent stopped")

    # -- failsafe mode ----------------------------------------------------------------------

    def failsafe_answer(self, body: bytes, signature: str) -> tuple[bytes, str]:
        """``POST /failsafe`` on this member: the signed answer to an active's question,
        from the cluster as the loop last read it (:mod:`hacore.agent.failsafe_edge`)."""
        reading = self._reading
        view = reading.view if reading is not None else None
        return self.parts.failsafe.answer(body, signature, view)

    def _failsafe_peers(self) -> list[Peer]:
        """Whom the active asks to confirm it: the members it last read or knew of."""
        view = self._reading.view if self._reading is not None else None
        return self.parts.failsafe.peers(view, self._known.values())

    def _wait_time(self, decision: Decision) -> float:
        wait = self.dcfg.loop_wait
        if decision.observe_soon:
            wait = min(wait, _SOON)
        now = time.monotonic()
        gate = self.parts.deadline.gate()
        # Also wake when a last renewal still fits before the self-fencing deadline: a loop
        # that wakes later may only fence, though the store is back (a new raft leader).
        last_call = None if gate is None else gate - self.dcfg.retry_timeout - _LAST_CALL_SLACK
        for deadline in (decision.deadline, last_call, gate):
            if deadline is not None and deadline > now:
                wait = min(wait, deadline - now)
        return wait

    def _publish(self, obs: Observation) -> None:
        member = self.parts.records.record(self.state.role, obs)
        try:
            self.parts.store_gate(lambda: self.backends.consensus.publish_member(member))
        except HacoreError as err:
            self.log.debug("member record not published: %s", err)

    def _build_snapshot(self, obs: Observation, decision: Decision, out: Outcome) -> NodeSnapshot:
        leader = self._snapshot.leader if obs.view is None else self.parts.facts.leader
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
            checks=self.parts.checks.results,
            replication=obs.db,
            lease_token=lease.token if lease else None,
            leader=leader,
            members=tuple(self._known[n] for n in sorted(self._known)),
            store_ok=obs.view is not None,
            last_loop_at=time.monotonic(),
            loop_wait=self.dcfg.loop_wait,
            ttl=self.dcfg.ttl,
            reason=self.loop_log.error or decision.reason,
            servers=self.supervisor.status(),
            failsafe=self.parts.failsafe.json(self.parts.deadline),
            minority=self.parts.records.minority_json(),
            observation=obs,
            decision=decision,
            events=self.counters.counts(),
            store_reached_at=self._store_ok_at,
            files=self.parts.files_check.last if self.parts.files_check else None,
            paused=operations.pause_json(obs.pause),
            settings=self.parts.settings.json(),
        )

    def _shutdown(self) -> None:
        """Clean stop: an active demotes and resigns at once; every node ends its session."""
        view = self._reading.view if self._reading and self._reading.view else _EMPTY_VIEW
        self.executor.shutdown(view)
        try:
            self.backends.consensus.close()
        except HacoreError as err:
            self.log.warning("could not end the store session: %s", err)
        self.log.info("agent stopped")
