"""The per-node agent service (``hacore agent run -c node.yaml``).

It always serves the REST API. A node that belongs to no cluster serves only that: its
``/status`` answers 503, and it accepts ``POST /cluster/start`` and ``POST /cluster/join``
from the local CLI, authenticated by the bootstrap token in its data directory
(:mod:`hacore.cluster.bootstrap_token`). Once the node belongs to a cluster it runs the
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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs

from hacore import pki
from hacore.agent import tls_paths
from hacore.agent.credentials import ReplicationCredentials
from hacore.agent.hooks import NodeLog
from hacore.agent.keeper import KeeperProcess
from hacore.agent.runtime import Agent
from hacore.agent.snapshot import NodeSnapshot
from hacore.api import admin_secret
from hacore.api.auth import hash_password
from hacore.api.errors import BadRequestError, ConflictError, UnavailableError
from hacore.api.limits import raise_open_file_limit
from hacore.api.server import PlainHttp
from hacore.cluster import admin_password, cluster_config
from hacore.cluster import join as joining
from hacore.cluster import node_views as views
from hacore.cluster import start as starting
from hacore.cluster import tls as node_tls
from hacore.cluster.grant import (
    cancel_join,
    create_join_token,
    grant_ticket,
)
from hacore.cluster.member_operations import MemberOperations
from hacore.cluster.node_api import NodeListeners
from hacore.cluster.node_credentials import NodeCredentials
from hacore.cluster.node_monitor import NodeMonitor
from hacore.cluster.operation_state import ClusterState, Phase, StateFile, Step
from hacore.cluster.parts import LocalParts, local_parts
from hacore.cluster.progress import Progress
from hacore.cluster.record import ClusterRecord
from hacore.cluster.requests import JoinCommand, NodeRequest
from hacore.cluster.teardown import end_here
from hacore.cluster.uninstall import mark_created
from hacore.config.check import security_warnings
from hacore.config.node import NodeConfig, load_config
from hacore.config.options import deep_merge
from hacore.errors import ConfigError, HacoreError
from hacore.plugins.configured import load_config_and_plugins
from hacore.plugins.factory import build_backends

log = logging.getLogger("hacore.cluster")

#: seconds between two looks at the agent (operation completion, removal, stale joins)
MONITOR_INTERVAL = 0.5
#: the same while a start, join or repair runs: its end is seen (and its CLI returns) sooner
OPERATION_INTERVAL = 0.1


class NodeService(MemberOperations):
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
        #: a fence keeper started ahead of the agent (a join), until an agent takes it over
        self._keeper: KeeperProcess | None = None
        self._state: ClusterState | None = None
        self._lock = threading.RLock()
        self._listeners = NodeListeners(self, self.base.node.api_port)
        self._credentials = NodeCredentials(self.data_dir)
        self._stop = threading.Event()
        self._monitor = NodeMonitor(self)
        #: why the service stopped by itself (it then exits with an error)
        self.failure: str | None = None

    # -- life cycle --------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop the node."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop.set())
        self.open()
        try:
            while not self._stop.wait(
                OPERATION_INTERVAL if self.progress and self.progress.running else MONITOR_INTERVAL
            ):
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
                self._credentials.issue_token()
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
        self._listeners.close()
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
        return views.cluster_ca(self.config, self.data_dir, self._state)

    def _listen(self) -> None:
        """The API on node.yaml's address and, if start/join changed it, the new one too
        (when it is an address of this machine: behind NAT it is only advertised).

        With TLS material the API serves HTTPS; plain HTTP on the same port serves everything
        while a start or join runs (the local CLI switches once it sees the CA file), and
        only the load-balancer probes once the node is a member (docs/security.md)."""
        state = self._state
        context = node_tls.server_context(self.data_dir) if self.config.tls.enabled else None
        bootstrap = state is None or state.phase in (Phase.STARTING, Phase.JOINING)
        settings = self._credentials.settings(bootstrap, self.config)
        plain = PlainHttp.ALL if bootstrap else PlainHttp.PROBES
        self._listeners.listen(
            (self.base.node.host, self.config.node.host), settings, context, plain
        )

    # -- the agent ---------------------------------------------------------------------------

    def make_agent(self) -> Agent:
        """The agent of the configuration in force (not started); its backends need the store
        to exist, so it is made only after the node joined or bootstrapped it."""
        from hacore.cluster.clone_progress import reporting_clones

        state = self.require_state()
        files = tls_paths.tls_files(self.config)
        backends = build_backends(self.config, self.plugins, files)
        config = cluster_config.effective_config(self.config, backends.consensus)
        if config != self.config:
            backends.consensus.close()
            backends = build_backends(config, self.plugins, files)
        backends = attrs.evolve(
            backends, replication=reporting_clones(backends.replication, self._clone_progress)
        )
        credentials = ReplicationCredentials(state.replication_user, state.replication_password)
        agent = Agent(
            config,
            self.plugins,
            backends=backends,
            credentials=credentials,
            api_url=self.api_url,
            keeper=self._keeper or KeeperProcess(self.config_path, self.data_dir),
        )
        self._keeper = None
        with self._lock:
            self.agent = agent
        return agent

    def start_keeper(self) -> None:
        """In a join, before the store join: the keeper's start-up (importing hacore and its
        plugins, a few tenths of a second of CPU) then overlaps a step that mostly waits, not
        the copy, which on a small machine it slowed. The next agent made takes it over."""
        keeper = self._keeper or KeeperProcess(self.config_path, self.data_dir)
        keeper.ensure(NodeLog(log, self.config.node.name))
        self._keeper = keeper

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
            # a keeper started ahead of the agent guards nothing yet, and would outlive the join
            keeper = agent.keeper if agent is not None else self._keeper
            self._keeper = None
            if keeper is not None:
                with contextlib.suppress(HacoreError):
                    keeper.stop()
                keeper.process.log_path.unlink(missing_ok=True)
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
        """One look of the monitor (:mod:`hacore.cluster.node_monitor`); the end of the
        bootstrap token's read-only grace (:mod:`hacore.cluster.node_credentials`)."""
        self._monitor.tick()
        with self._lock:
            if self._credentials.retire_due():
                self._listen()

    def watched(self) -> tuple[Agent | None, ClusterState | None, Progress | None]:
        with self._lock:
            return self.agent, self._state, self.progress

    def fail(self, failure: str) -> None:
        self.failure = failure
        self._stop.set()

    def finish(self, result: str) -> None:
        with self._lock:
            self.save(self.require_state().with_phase(Phase.MEMBER))
            agent = self.agent
            self._credentials.operation_done(
                self.config, agent.consensus if agent is not None else None
            )
            self._listen()
            if self.progress is not None:
                self.progress.complete(result)
        log.info("%s", result)

    def removed(self, state: ClusterState) -> None:
        # The phase first: the API reads the agent and the state without the lock, and a
        # reader finding no agent beside the old phase answered "empty" for a removed node.
        with self._lock:
            self.save(state.with_phase(Phase.REMOVED))
            self.agent = None

    # -- AgentFacade (the member requests: hacore/cluster/member_operations.py) --------------

    def snapshot(self) -> NodeSnapshot:
        agent = self.agent
        if agent is not None:
            return agent.snapshot()
        return views.idle_snapshot(self.config, self._state)

    def cluster(self) -> dict[str, Any]:
        agent, state, progress = self.agent, self._state, self.progress
        return views.cluster_view(self.config, agent, state, progress, self.cluster_ca())

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
            self._credentials.keep_start_password(request.password)
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

    def teardown(self) -> dict[str, Any]:
        """``POST /cluster/teardown``: this node's last step in ``cluster teardown``."""
        return end_here(self)

    def change_admin_password(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /cluster/admin-password`` on the active (hacore/cluster/admin_password.py)."""
        self.require_member()
        agent = self._running_agent()
        answer, credential = admin_password.change(
            agent, self.config.api.auth, admin_secret.current(), body
        )
        self.take_admin_credential(credential)
        return answer

    def take_admin_credential(self, credential: admin_password.AdminCredential) -> None:
        """The cluster's admin credential into ``cluster.json``, the API and the agent (which
        hands it to joiners): a change on this active, or one this member found in the store."""
        auth = {"username": credential.username, "password_hash": credential.password_hash}
        with self._lock:
            state = self._state
            if state is None or state.phase is not Phase.MEMBER:
                return
            overrides = deep_merge(state.overrides, {"api": {"auth": auth}})
            config = self._effective(overrides)
            self.save(attrs.evolve(state, overrides=overrides))
            self.config = config
            self._listen()
            agent = self.agent
            if agent is not None:
                agent.config = attrs.evolve(agent.config, api=config.api)
        log.info("took the cluster's admin credential (generation %d)", credential.generation)


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


def serve(config_path: str | Path) -> None:
    """``hacore agent run``: run this node's service until SIGTERM or SIGINT."""
    log.info("open file limit: %d", raise_open_file_limit())
    service = NodeService(config_path)
    for warning in security_warnings(service.base.tls.enabled):
        log.warning("WARNING: %s", warning)
    service.run()
    if service.failure is not None:
        raise HacoreError(f"{service.failure}; restart the agent service")
