"""The per-node agent service (``hacore agent run -c node.yaml``).

It always serves the REST API. A node that belongs to no cluster serves only that: its
``/status`` answers 503, and it accepts ``POST /cluster/start`` and ``POST /cluster/join``
from the local CLI, authenticated by the bootstrap token in its data directory
(:mod:`hacore.cluster.local`). Once the node belongs to a cluster it runs the
:class:`~hacore.agent.runtime.Agent` too, and the API takes the cluster's credentials.

What the node is part of is kept in ``cluster.json`` (:mod:`hacore.cluster.operation_state`); a
restarted service reads it and resumes: an unfinished start continues, an unfinished join
continues or rolls back, a member's agent starts again, a removed node stays down.

Stopping the service (SIGTERM or SIGINT) stops the node's role: an active hands over at
once (resign), then the database stops; while the cluster is paused nothing is handed over
and the database keeps running (docs/fencing.md, "Maintenance mode"). The node's managed
store server keeps running (it is a detached process, see :mod:`hacore.backends.processes`),
so restarting an agent never costs the store a member; the next agent finds it by its pid
file. ``cluster teardown`` is the exception: it stops every server of the node, then the
service exits (:mod:`hacore.cluster.teardown`).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs

from hacore import pki
from hacore.agent import keys, tls_paths
from hacore.agent.execute import ReplicationCredentials
from hacore.agent.explain import explain
from hacore.agent.keeper import KeeperProcess
from hacore.agent.runtime import Agent
from hacore.agent.snapshot import NodeSnapshot
from hacore.agent.support import build_backends
from hacore.agent.vocabulary import NodeState
from hacore.api.auth import hash_password
from hacore.api.errors import BadRequestError, ConflictError, NotFoundError, UnavailableError
from hacore.api.limits import raise_open_file_limit
from hacore.api.server import ApiServer, PlainHttp
from hacore.backends import salvage
from hacore.cluster import join as joining
from hacore.cluster import pause as maintenance
from hacore.cluster import repair
from hacore.cluster import start as starting
from hacore.cluster import tls as node_tls
from hacore.cluster.follow import human_bytes
from hacore.cluster.grant import (
    cancel_join,
    collect_stale_joins,
    create_join_token,
    grant_ticket,
)
from hacore.cluster.local import new_token, remove_token
from hacore.cluster.operation_state import ClusterState, Phase, StateFile, Step
from hacore.cluster.parts import LocalParts, local_parts
from hacore.cluster.pending import STALE_AFTER, pending_joins, pending_key
from hacore.cluster.progress import Progress
from hacore.cluster.record import ClusterRecord, reported_version
from hacore.cluster.remove import remove_node, wait_store_forgets
from hacore.cluster.requests import JoinCommand, NodeRequest
from hacore.cluster.teardown import end_here
from hacore.cluster.uninstall import mark_created
from hacore.config.check import security_warnings
from hacore.config.node import ApiAuth, ApiSettings, NodeConfig, load_config
from hacore.config.options import deep_merge
from hacore.errors import ConfigError, HacoreError
from hacore.plugins.configured import load_config_and_plugins

log = logging.getLogger("hacore.cluster")

#: seconds between two looks at the agent (operation completion, removal, stale joins)
MONITOR_INTERVAL = 0.5
STALE_CHECK_INTERVAL = 30.0


class NodeService:
    """The service of one node; also the :class:`~hacore.api.facade.AgentFacade` its API
    serves (every facade method is thread-safe)."""

    def __init__(self, config_path: str | Path, *, extra_plugins: Iterable[object] = ()) -> None:
        self.config_path = Path(config_path)
        self.base, self.plugins = load_config_and_plugins(self.config_path, extra=extra_plugins)
        self.data_dir = self.base.node.data_dir
        self.states = StateFile(self.data_dir)
        self.config: NodeConfig = self.base
        self.agent: Agent | None = None
        self.progress: Progress | None = None
        self._state: ClusterState | None = None
        self._lock = threading.RLock()
        self._servers: dict[str, ApiServer] = {}
        self._bootstrap: ApiAuth | None = None
        self._stop = threading.Event()
        self._next_stale_check = 0.0
        #: why the service stopped by itself (it then exits with an error)
        self.failure: str | None = None

    # -- life cycle --------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop the node."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop.set())
        self.open()
        try:
            while not self._stop.wait(MONITOR_INTERVAL):
                self.tick()
        finally:
            self.close()

    def stop(self) -> None:
        self._stop.set()

    def open(self) -> None:
        """Read ``cluster.json``, start the API and whatever the node's phase needs."""
        mark_created(self.data_dir)
        with self._lock:
            state = self._state = self.states.load()
            if (
                state is not None
                and state.phase is Phase.JOINING
                and not state.has(Step.STORE_JOINED)
            ):
                state = joining.recover_store_join(self, state, self._effective(state.overrides))
                self._state = state
            if state is None or state.phase in (Phase.STARTING, Phase.JOINING):
                _, self._bootstrap = new_token(self.data_dir)
            if state is not None:
                self.config = self._effective(state.overrides)
            if state is not None and state.phase is Phase.MEMBER and self.config.tls.enabled:
                node_tls.ensure_node_material(self.config, self.tls_hosts())
            self._listen()
            if state is None:
                log.info(
                    "node %s belongs to no cluster yet: waiting for cluster start or join",
                    self.config.node.name,
                )
            elif state.phase is Phase.STARTING:
                log.info("resuming the start of cluster %s", state.record.name)
                self._begin_start()
            elif state.phase is Phase.JOINING:
                log.info("resuming the join of cluster %s", state.record.name)
                self.progress = Progress("join", joining.STEPS)
                for step in ("ticket", "ca", "store"):
                    self.progress.finish(step)
                self.make_agent()
                self.start_agent()
                self.save(state.with_step(Step.AGENT))
                self.progress.finish("agent")
            elif state.phase is Phase.MEMBER:
                self.make_agent()
                self.start_agent()

    def close(self) -> None:
        """Stop the node: the agent (an active resigns), then the database."""
        with self._lock:
            agent, state = self.agent, self._state
        if agent is not None:
            agent.stop(resign=True, timeout=60.0)
        # paused (maintenance mode), the database is left running: the next agent goes on
        paused = agent is not None and agent.paused
        if state is not None and state.phase is not Phase.REMOVED and not paused:
            with contextlib.suppress(HacoreError):
                self.parts().replication.stop()
        if agent is not None:
            with contextlib.suppress(Exception):
                agent.consensus.close()
        for server in list(self._servers.values()):
            server.shutdown()
        self._servers.clear()
        log.info("agent service stopped")

    # -- state -------------------------------------------------------------------------------

    @property
    def state(self) -> ClusterState | None:
        return self._state

    def require_state(self) -> ClusterState:
        state = self._state
        if state is None:
            raise HacoreError("this node belongs to no cluster")
        return state

    def save(self, state: ClusterState) -> ClusterState:
        with self._lock:
            self.states.save(state)
            self._state = state
        return state

    def _effective(self, overrides: dict[str, Any]) -> NodeConfig:
        """node.yaml with ``overrides`` merged over it, checked against the plugins."""
        config = load_config(self.config_path, overrides=overrides, registry=self.plugins.registry)
        base = self.base.node
        for key in ("api_port", "data_dir"):
            if getattr(config.node, key) != getattr(base, key):
                raise ConfigError(
                    f"node.{key} cannot be changed by cluster start/join options: edit "
                    f"{self.config_path} and restart the agent instead"
                )
        return config

    @property
    def api_url(self) -> str:
        address = f"{self.config.node.host}:{self.base.node.api_port}"
        return joining.with_scheme(address, self.config.tls.enabled)

    # -- TLS ---------------------------------------------------------------------------------

    def parts(self) -> LocalParts:
        """The node's database and store server in the configuration in force."""
        return local_parts(self.config, self.plugins, tls_paths.tls_files(self.config))

    def tls_hosts(self) -> tuple[str, ...]:
        """What the node certificate names: the advertised address, the one node.yaml
        listens on (the local CLI uses it), loopback."""
        return node_tls.node_hosts(self.config, (self.base.node.host,))

    def secure(self) -> str:
        """Once the node has the cluster CA: its certificate covers every address it is
        reached at, and the API serves TLS. What the progress shows."""
        if not self.config.tls.enabled:
            return "none: tls.enabled is false"
        node = node_tls.ensure_node_material(self.config, self.tls_hosts())
        with self._lock:
            self._listen()
        return f"fingerprint {pki.fingerprint(pki.load_ca_certificate(node.ca_file))}"

    def cluster_ca(self) -> dict[str, Any] | None:
        """``GET /cluster/ca``: the CA certificate this node trusts (public material)."""
        pem = node_tls.ca_certificate_pem(self.data_dir) if self.config.tls.enabled else None
        if pem is None:
            return None
        cert = pki.load_ca_certificate(tls_paths.ca_cert_file(self.data_dir))
        state = self._state
        return {
            "cluster": state.record.name if state else None,
            "fingerprint": pki.fingerprint(cert),
            "ca_certificate": pem,
        }

    def _api_settings(self) -> ApiSettings:
        state = self._state
        if state is None or state.phase in (Phase.STARTING, Phase.JOINING):
            return ApiSettings(auth=self._bootstrap)
        return self.config.api

    def _listen(self) -> None:
        """The API on node.yaml's address and, if start/join changed it, the new one too
        (when it is an address of this machine: behind NAT it is only advertised).

        With TLS material the API serves HTTPS; plain HTTP on the same port serves everything
        while a start or join runs (the local CLI switches once it sees the CA file), and
        only the load-balancer probes once the node is a member (docs/security.md)."""
        settings = self._api_settings()
        state = self._state
        context = node_tls.server_context(self.data_dir) if self.config.tls.enabled else None
        bootstrap = state is None or state.phase in (Phase.STARTING, Phase.JOINING)
        plain = PlainHttp.ALL if bootstrap else PlainHttp.PROBES
        base = self.base.node.host
        for host in dict.fromkeys((base, self.config.node.host)):
            server = self._servers.get(host)
            if server is None:
                try:
                    server = ApiServer(self, settings, host=host, port=self.base.node.api_port)
                except HacoreError as err:
                    if host == base:
                        raise
                    log.warning("the API is not served on %s (%s); only on %s", host, err, base)
                    continue
                self._servers[host] = server.start()
            server.set_settings(settings)
            server.set_tls(context, plain)

    # -- the agent ---------------------------------------------------------------------------

    def make_agent(self) -> Agent:
        """The agent of the configuration in force (not started); its backends need the store
        to exist, so it is made only after the node joined or bootstrapped it."""
        from hacore.cluster.clone_progress import reporting_clones

        state = self.require_state()
        backends = build_backends(self.config, self.plugins, tls_paths.tls_files(self.config))
        backends = attrs.evolve(
            backends, replication=reporting_clones(backends.replication, self._clone_progress)
        )
        credentials = ReplicationCredentials(state.replication_user, state.replication_password)
        agent = Agent(
            self.config,
            self.plugins,
            backends=backends,
            credentials=credentials,
            api_url=self.api_url,
            keeper=KeeperProcess(self.config_path, self.data_dir),
        )
        with self._lock:
            self.agent = agent
        return agent

    def start_agent(self) -> None:
        agent = self.agent
        if agent is None:
            raise HacoreError("no agent to start")
        agent.start()

    def _clone_progress(self, done: int, total: int) -> None:
        progress = self.progress
        if progress is not None:
            progress.clone(done, total)

    def detach_agent(self) -> Agent | None:
        """Take the agent out of the service (the monitor stops looking at it), for a caller
        that stops it itself: the last node of a teardown."""
        with self._lock:
            agent, self.agent = self.agent, None
        return agent

    def reset_to_empty(self) -> None:
        """After a failed join: no agent, no store data, no ``cluster.json``."""
        with self._lock:
            agent, self.agent = self.agent, None
            if agent is not None:
                with contextlib.suppress(Exception):
                    agent.consensus.close()
            config = self.config
            self._state = None
            self.config = self.base
            self._reset_files(config)
            self._listen()

    def _reset_files(self, config: NodeConfig) -> None:
        parts = local_parts(config, self.plugins, tls_paths.tls_files(config))
        parts.wipe_store()
        node_tls.remove_material(self.data_dir)
        self.states.remove()

    # -- the monitor -------------------------------------------------------------------------

    def tick(self) -> None:
        """Finish operations, notice a removal, cancel stale joins: what the loop shows."""
        with self._lock:
            agent, state, progress = self.agent, self._state, self.progress
        if agent is None or state is None:
            return
        if agent.died is not None:
            # a loop that died cannot be trusted to resume: exit, the supervisor restarts us
            self.failure = f"the agent loop died: {type(agent.died).__name__}: {agent.died}"
            log.critical("%s; stopping the agent service", self.failure)
            if progress is not None and progress.running:
                progress.fail(self.failure)
            self._stop.set()
            return
        snap = agent.snapshot()
        if state.phase is Phase.STARTING and state.has(Step.AGENT) and snap.is_active:
            if progress is not None:
                progress.finish("active", f"fencing token {snap.lease_token}")
            self._finish(f"{snap.node_name} is the active node of cluster {state.record.name}")
        elif state.phase is Phase.JOINING and state.has(Step.AGENT):
            if progress is not None and snap.state is NodeState.CLONING:
                progress.begin("clone", f"copying the database from {snap.leader}")
            # A standby holds the manager's files too before the join is done (the "files"
            # check fails until its first complete copy).
            files = snap.checks.get("files")
            files_ok = files.ok if files is not None else agent.backends.filesync is None
            if snap.standby_streaming and not files_ok and progress is not None:
                progress.finish("streaming", f"following {snap.leader}")
                progress.begin("files", files.detail if files else "waiting for the file sync")
            if snap.standby_streaming and files_ok and self._forget_pending(agent):
                if progress is not None:
                    clone = progress.to_json().get("clone")
                    copied = f"{human_bytes(clone['total'])} from {snap.leader}" if clone else ""
                    progress.finish("clone", copied)
                    progress.finish("streaming", f"following {snap.leader}")
                    progress.finish("files", files.detail if files else "no file sync configured")
                self._finish(
                    f"{snap.node_name} is a standby of {snap.leader} in cluster "
                    f"{state.record.name}, streaming"
                )
        elif state.phase is Phase.MEMBER:
            if snap.state is NodeState.REMOVED:
                self._become_removed(agent, state)
            elif snap.is_active and time.monotonic() >= self._next_stale_check:
                self._next_stale_check = time.monotonic() + STALE_CHECK_INTERVAL
                try:
                    collect_stale_joins(agent, STALE_AFTER, time.time())
                except HacoreError as err:
                    log.debug("stale joins not checked: %s", err)

    def _forget_pending(self, agent: Agent) -> bool:
        try:
            agent.consensus.delete(pending_key(agent.name))
        except HacoreError as err:
            log.debug("pending join key not deleted yet: %s", err)
            return False
        return True

    def _finish(self, result: str) -> None:
        with self._lock:
            self.save(self.require_state().with_phase(Phase.MEMBER))
            self._listen()
            remove_token(self.data_dir)
            self._bootstrap = None
            if self.progress is not None:
                self.progress.complete(result)
        log.info("%s", result)

    def _become_removed(self, agent: Agent, state: ClusterState) -> None:
        log.warning(
            "this node was removed from cluster %s: stopping its agent, database and store server",
            state.record.name,
        )
        store = agent.backends.managed_store
        agent.stop(resign=True, timeout=60.0)
        if store is not None:
            timing = agent.config.timing
            wait_store_forgets(store, agent.name, 2 * timing.ttl + 30 * timing.loop_wait)
        with contextlib.suppress(HacoreError):
            self.parts().stop()
        with self._lock:
            self.agent = None
            self.save(state.with_phase(Phase.REMOVED))

    # -- AgentFacade -------------------------------------------------------------------------

    def snapshot(self) -> NodeSnapshot:
        agent = self.agent
        if agent is not None:
            return agent.snapshot()
        state = self._state
        if state is None:
            node_state, reason = NodeState.EMPTY, "belongs to no cluster: run cluster start or join"
        elif state.phase is Phase.REMOVED:
            node_state = NodeState.REMOVED
            reason = f"removed from cluster {state.record.name}"
        else:
            node_state, reason = NodeState.EMPTY, f"cluster {state.phase.value} in progress"
        timing = self.config.timing
        return NodeSnapshot(
            node_name=self.config.node.name,
            version=reported_version(),
            state=node_state,
            last_loop_at=time.monotonic(),
            loop_wait=timing.loop_wait,
            ttl=timing.ttl,
            reason=reason,
        )

    def cluster(self) -> dict[str, Any]:
        agent, state, progress = self.agent, self._state, self.progress
        if agent is not None:
            data = agent.cluster()
            snap = agent.snapshot()
            data["reason"] = snap.reason
            _add_streaming(data, snap)
            # two store round trips: not tried while the loop finds the store silent (a
            # frozen store would hold the answer past any client's timeout)
            data["store_members"] = _store_members(agent) if snap.store_ok else None
            data["joining"] = _joining(agent) if snap.store_ok else None
        else:
            data = {
                "cluster": state.record.name if state else None,
                "namespace": state.record.namespace if state else None,
                "leader": None,
                "store_ok": False,
                "members": [],
                "removed": [],
                "reason": self.snapshot().reason,
            }
        data["node"] = self.config.node.name
        data["phase"] = state.phase.value if state else "unconfigured"
        ca = self.cluster_ca()
        data["ca_fingerprint"] = ca["fingerprint"] if ca else None
        data["record"] = state.record.to_json() if state else None
        data["operation"] = progress.to_json() if progress else None
        return data

    def start_cluster(self, options: dict[str, Any]) -> dict[str, Any]:
        request = NodeRequest.parse(options)
        with self._lock:
            state = self._state
            if state is not None and state.phase is not Phase.STARTING:
                raise ConflictError(_belongs(state))
            if self.progress is not None and self.progress.running:
                raise ConflictError(f"a cluster {self.progress.operation} is already running here")
            resumed = state is not None
            if state is None:
                config = self._effective(request.overrides())
                parts = local_parts(config, self.plugins, tls_paths.tls_files(config))
                starting.check_startable(config, self.plugins, parts)
                # material of unknown origin (no cluster.json claims it): a new start, a new CA
                node_tls.remove_material(self.data_dir)
                state = ClusterState(
                    phase=Phase.STARTING,
                    record=ClusterRecord.new(
                        config.cluster.name, config.cluster.namespace, config.node.name
                    ),
                    overrides=request.overrides(),
                    replication_user=_replication_user(config),
                    replication_password=secrets.token_urlsafe(24),
                )
            auth = {"username": request.username, "password_hash": hash_password(request.password)}
            state = attrs.evolve(
                state, overrides=deep_merge(state.overrides, {"api": {"auth": auth}})
            )
            self.config = self._effective(state.overrides)
            self.save(state)
            self._listen()
            self._begin_start()
        log.info("cluster start of %s %s", state.record.name, "resumed" if resumed else "begun")
        return {
            "accepted": True,
            "resumed": resumed,
            "cluster": state.record.name,
            "node": self.config.node.name,
        }

    def _begin_start(self) -> None:
        progress = self.progress = Progress("start", starting.STEPS)
        self._background("start", lambda: starting.run_start(self, progress), progress)

    def _background(self, what: str, work: Callable[[], None], progress: Progress) -> None:
        def run() -> None:
            try:
                work()
            except Exception as err:
                if not isinstance(err, HacoreError):
                    log.exception("cluster %s failed", what)
                else:
                    log.error("cluster %s failed: %s", what, err)
                progress.fail(str(err) or type(err).__name__)

        threading.Thread(target=run, name=f"hacore-cluster-{what}", daemon=True).start()

    def join_ticket(self, request: dict[str, Any]) -> dict[str, Any]:
        action = request.get("action", "ticket")
        if action == "join":
            return self._join(JoinCommand.parse(request))
        if action == "ticket":
            state = self._state
            if state is None or state.phase is not Phase.MEMBER:
                raise UnavailableError(
                    f"{self.config.node.name} is not a member of a cluster: it cannot grant joins"
                )
            return grant_ticket(self.agent, state, request).to_json()
        if action == "cancel":
            return cancel_join(self.agent, request)
        if action == "token":
            return create_join_token(self.agent, request)
        raise BadRequestError(f'unknown join action "{action}" (join, ticket, cancel or token)')

    def _join(self, command: JoinCommand) -> dict[str, Any]:
        with self._lock:
            if self._state is not None:
                raise ConflictError(_belongs(self._state))
            if self.progress is not None and self.progress.running:
                raise ConflictError(f"a cluster {self.progress.operation} is already running here")
            overrides = command.node.overrides()
            config = self._effective(overrides)
            tls = config.tls.enabled
            parts = local_parts(config, self.plugins, tls_paths.tls_files(config))
            url = joining.with_scheme(f"{config.node.host}:{self.base.node.api_port}", tls)
            ca = joining.trusted_ca(command, tls)
            client = joining.find_active(
                joining.with_scheme(command.active, tls),
                (command.node.username, command.node.password),
                joining.pinned(ca),
            )
            try:
                ticket = joining.ask_ticket(client, joining.join_request(config, parts, url))
            except BaseException:
                client.close()
                raise
            try:
                joining.check_ticket_ca(ticket, ca)
                state = joining.joined_state(overrides, ticket, client.base_url)
                self.config = self._effective(state.overrides)
                self.save(state)
            except Exception as err:
                self.config = self.base
                raise HacoreError(f"{err}; {joining.rollback(self, client, config)}") from None
            progress = self.progress = Progress("join", joining.STEPS)
            progress.finish("ticket", f"granted by {ticket.active}")
            self._background(
                "join", lambda: joining.run_join(self, parts, progress, client, ticket), progress
            )
        log.info("join of cluster %s granted by %s", ticket.record.name, ticket.active)
        return {
            "accepted": True,
            "cluster": ticket.record.name,
            "active": ticket.active,
            "node": config.node.name,
            "members": [{"name": n, "api_url": u} for n, u in ticket.members],
            "ca_fingerprint": pki.fingerprint(ca) if ca is not None else None,
        }

    def remove_node(self, name: str) -> dict[str, Any]:
        state = self.require_member()
        return remove_node(self.agent, name, state.record.name)

    def teardown(self) -> dict[str, Any]:
        """``POST /cluster/teardown``: this node's last step in ``cluster teardown``."""
        return end_here(self)

    def switchover(self, to: str | None) -> dict[str, Any]:
        self.require_member()
        agent = self.agent
        if agent is None:
            raise UnavailableError("this node's agent is not running")
        request = agent.request_switchover(to)
        return {"from": request.from_node, "to": request.to_node}

    def restart_node(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /nodes/<name>/restart`` on that node; its progress is the ``operation``."""
        return self._repair(
            "restart", repair.RESTART_STEPS, lambda p: repair.restart(self.agent, name, body, p)
        )

    def reinit_node(self, name: str) -> dict[str, Any]:
        """``POST /nodes/<name>/reinit`` on that node; its progress is the ``operation``."""
        return self._repair(
            "reinit", repair.REINIT_STEPS, lambda p: repair.reinit(self.agent, name, p)
        )

    def _repair(
        self,
        what: str,
        steps: tuple[tuple[str, str], ...],
        start: Callable[[Progress], dict[str, Any]],
    ) -> dict[str, Any]:
        self.require_member()
        with self._lock:
            if self.progress is not None and self.progress.running:
                raise ConflictError(f"a {self.progress.operation} is already running here")
            progress = Progress(what, steps)
            answer = start(progress)
            self.progress = progress
        return answer

    def pause(self, body: dict[str, Any], by: str) -> dict[str, Any]:
        """``POST /pause`` on any member (hacore/cluster/pause.py)."""
        self.require_member()
        return maintenance.pause(self.agent, body, by=by)

    def resume(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /resume`` on the node holding the lease (hacore/cluster/pause.py)."""
        self.require_member()
        return maintenance.resume(self.agent, body)

    def failover(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /failover`` on any member (hacore/cluster/repair.py)."""
        self.require_member()
        return repair.failover(self.agent, body)

    def explain(self, name: str) -> dict[str, Any]:
        """``GET /nodes/<name>/explain``: each node explains itself, from its last loop."""
        own = self.config.node.name
        if name != own:
            raise NotFoundError(f"this is {own}: ask {name}'s own API for its explanation")
        agent = self.agent
        if agent is None:
            raise UnavailableError(f"{own}'s agent is not running")
        snap = agent.snapshot()
        data = explain(snap.observation, snap.decision, agent.dcfg, snap.state).to_json()
        data["node"] = own
        data["failing_checks"] = {
            check: result.detail for check, result in snap.checks.items() if not result.ok
        }
        data["maximum_lag_on_failover"] = agent.dcfg.maximum_lag_on_failover
        data["synchronous_mode"] = agent.dcfg.synchronous_mode.value
        return data

    def history(self) -> dict[str, Any]:
        """``GET /history``: every change of active, oldest first (read from the store)."""
        self.require_member()
        agent = self.agent
        if agent is None:
            raise UnavailableError("this node's agent is not running")
        entries = []
        for kv in agent.backends.consensus.get_prefix(keys.HISTORY_PREFIX):
            try:
                entries.append(keys.HistoryEntry.decode(kv.value))
            except HacoreError as err:
                log.warning("unreadable history entry %s: %s", kv.key, err)
        entries.sort(key=lambda e: e.token)
        return {"history": [e.to_json() for e in entries]}

    def salvage_list(self) -> dict[str, Any]:
        """``GET /salvage``: this node's salvage archives (hacore/backends/salvage.py), read
        from its data directory: they are there whether the agent runs or not."""
        directory = self.config.node.data_dir / salvage.DIR
        return {"node": self.config.node.name, "archives": salvage.listing(directory)}

    def salvage_show(self, ident: str) -> dict[str, Any]:
        """``GET /salvage/<id>``: one archive of this node, whole."""
        try:
            return salvage.read(self.config.node.data_dir / salvage.DIR, ident)
        except salvage.SalvageError as err:
            raise NotFoundError(str(err)) from None

    def failsafe(self, body: bytes, signature: str) -> tuple[bytes, str]:
        """``POST /failsafe``: the agent's signed answer to an active's failsafe question."""
        agent = self.agent
        if agent is None:
            raise UnavailableError("this node's agent is not running")
        return agent.failsafe_answer(body, signature)

    def require_member(self) -> ClusterState:
        state = self._state
        if state is None or state.phase is not Phase.MEMBER:
            raise UnavailableError(f"{self.config.node.name} is not a member of a cluster")
        return state


def _belongs(state: ClusterState) -> str:
    if state.phase is Phase.MEMBER:
        return f"this node already belongs to {state.record.describe()}"
    if state.phase is Phase.REMOVED:
        return (
            f"this node was removed from cluster {state.record.name}; to reuse it, stop its "
            "agent and empty its data directory"
        )
    return f"this node is already {state.phase.value} cluster {state.record.name}"


def _replication_user(config: NodeConfig) -> str:
    settings = config.replication.settings if config.replication else {}
    return str(settings.get("replication_user") or "replicator")


def _add_streaming(data: dict[str, Any], snap: NodeSnapshot) -> None:
    """On the active: which standbys stream from its database right now, and their lag."""
    repl = snap.replication
    if not snap.is_active or repl is None:
        return
    standbys = {s.name: s for s in repl.standbys}
    for member in data.get("members", []):
        found = standbys.get(member.get("name"))
        if found is not None:
            member["streaming"] = found.state == "streaming"
            member["lag_bytes"] = found.lag_bytes
            member["sync_state"] = found.sync_state
        elif member.get("name") != snap.node_name:
            member["streaming"] = False


def _store_members(agent: Agent) -> list[dict[str, Any]] | None:
    store = agent.backends.managed_store
    if store is None:
        return None
    try:
        return [attrs.asdict(m) for m in store.members()]
    except HacoreError as err:
        log.debug("store members not listed: %s", err)
        return None


def _joining(agent: Agent) -> list[str] | None:
    """Names of the joins granted and not finished (a store round trip)."""
    try:
        return sorted(pending_joins(agent.consensus))
    except HacoreError as err:
        log.debug("pending joins not listed: %s", err)
        return None


def serve(config_path: str | Path) -> None:
    """``hacore agent run``: run this node's service until SIGTERM or SIGINT."""
    log.info("open file limit: %d", raise_open_file_limit())
    service = NodeService(config_path)
    for warning in security_warnings(service.base.tls.enabled):
        log.warning("WARNING: %s", warning)
    service.run()
    if service.failure is not None:
        raise HacoreError(f"{service.failure}; restart the agent service")
