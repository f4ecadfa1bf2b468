"""A cluster of real agents in one test process: real PostgreSQL servers, a shared store.

Each node has its own data directory (under a root the ``postgres`` user may enter) and its own
PostgreSQL port on 127.0.0.1. "Killing" an agent stops its loop without resigning (and, on the
memory store, makes its session unusable; on ZooKeeper, drops its connection without closing
the session) so its lease expires as after a SIGKILL; "killing" a database SIGKILLs the
postmaster and every child by pid.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import psycopg
from kazoo.client import KazooClient

from hacore.agent import keys
from hacore.agent.credentials import ReplicationCredentials
from hacore.agent.runtime import Agent
from hacore.agent.vocabulary import ActiveStatus, NodeState
from hacore.backends.records import ClusterView, Member, NodeRole
from hacore.config.node import NodeConfig, load_config
from hacore.plugins.factory import build_backends
from hacore.plugins.hookspecs import hookimpl
from hacore.plugins.registry import HacorePlugins, load_plugins
from hacore.testing.procs import free_port, kill_with_children, pid_alive, wait_for
from hacore_plugins.postgresql.backend import PostgresReplication
from hacore_plugins.zookeeper.backend import ZooKeeperConsensus

PASSWORD = f"repl-{secrets.token_hex(8)}"
CREDENTIALS = ReplicationCredentials("replicator", PASSWORD)
PG_PARAMETERS = {"shared_buffers": "16MB", "max_connections": 30, "fsync": "off"}
TIMING = {"ttl": 6.0, "loop_wait": 1.0, "retry_timeout": 1.0, "safety_margin": 1.5}
WAIT = 90.0

logging.getLogger("hacore").setLevel(logging.INFO)


class AgentKilled(BaseException):
    """Ends an agent's loop where it stands, as a SIGKILL would: nothing after it runs."""


class FaultyPostgres(PostgresReplication):
    """The real backend, plus one fault: the agent dies right after the database promote."""

    kill_after_promote = False

    def promote(self, *, timeout: float) -> None:
        super().promote(timeout=timeout)
        if self.kill_after_promote:
            raise AgentKilled(f"{self.node_name} killed right after its database promote")


class Recorder:
    """Every lifecycle hook call on one node, in order, and an optional veto."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        #: "raise" or "return": how the next before_promote vetoes (None: it allows).
        self.veto: str | None = None
        self.vetoes = 0
        self.fail_after_promote = False
        self._lock = threading.Lock()

    def _note(self, hook: str, detail: Any = None) -> None:
        with self._lock:
            self.calls.append((hook, detail))

    def names(self) -> list[str]:
        with self._lock:
            return [hook for hook, _ in self.calls]

    @hookimpl
    def hacore_before_promote(self, view: ClusterView) -> str | None:
        self._note("before_promote")
        if self.veto is None:
            return None
        self.vetoes += 1
        if self.veto == "raise":
            raise RuntimeError("fencing script failed")
        return "test veto"

    @hookimpl
    def hacore_after_promote(self) -> None:
        self._note("after_promote")
        if self.fail_after_promote:
            raise RuntimeError("cannot resume workflows")

    @hookimpl
    def hacore_before_demote(self, reason: str) -> None:
        self._note("before_demote", reason)

    @hookimpl
    def hacore_after_demote(self, reason: str) -> None:
        self._note("after_demote", reason)

    @hookimpl
    def hacore_role_changed(self, old: NodeRole, new: NodeRole) -> None:
        self._note("role_changed", (old, new))

    @hookimpl
    def hacore_membership_changed(
        self, added: tuple[Member, ...], removed: tuple[Member, ...]
    ) -> None:
        self._note("membership_changed", ({m.name for m in added}, {m.name for m in removed}))


@attrs.define
class Node:
    name: str
    config: NodeConfig
    plugins: HacorePlugins
    recorder: Recorder
    agent: Agent
    #: Agents replaced by a restart; their backends are closed at teardown.
    old_agents: list[Agent] = attrs.field(factory=list)
    #: Its agent was killed and not restarted yet.
    down: bool = False

    @property
    def pg(self) -> FaultyPostgres:
        backend = self.agent.replication
        assert isinstance(backend, FaultyPostgres)
        return backend

    def snapshot(self) -> Any:
        return self.agent.snapshot()


def make_root() -> Path:
    # pytest's own temp dirs are 0700 root: the postgres user could not enter them.
    root = Path(tempfile.mkdtemp(prefix="hacore-agt-"))
    root.chmod(0o755)
    return root


class AgentCluster:
    """Three (or more) nodes sharing one store; every server is stopped by pid at the end."""

    def __init__(
        self, root: Path, store: dict[str, Any], *, backend: str, sync: str = "on"
    ) -> None:
        self.root = root
        self.store = store
        self.backend = backend
        self.sync = sync
        self.namespace = f"agents-{secrets.token_hex(4)}"
        self.nodes: dict[str, Node] = {}

    # -- making and restarting nodes ---------------------------------------------------------

    def config(self, name: str, port: int) -> NodeConfig:
        raw = {
            "cluster": {"name": "agenttest", "namespace": self.namespace},
            "node": {"name": name, "host": "127.0.0.1", "data_dir": str(self.root / name)},
            "timing": TIMING,
            "checks": {"check_fail_fast": False},
            "failover": {
                "synchronous_mode": self.sync,
                "promote_backoff": 3,
                "switchover_timeout": 20,
            },
            "consensus": {"backend": self.backend, **self.store},
            "replication": {
                "backend": "postgresql",
                "port": port,
                "parameters": PG_PARAMETERS,
                "synchronous": self.sync,
            },
        }
        return load_config(raw)

    def _agent(self, config: NodeConfig, plugins: HacorePlugins) -> Agent:
        backends = build_backends(config, plugins)
        faulty = FaultyPostgres(
            config.replication.settings if config.replication else {},
            node_name=config.node.name,
            host=config.node.host,
            data_dir=backends.replication.data_dir,
        )
        backends = attrs.evolve(backends, replication=faulty)
        return Agent(config, plugins, backends=backends, credentials=CREDENTIALS)

    def add(self, name: str) -> Node:
        config = self.config(name, free_port())
        recorder = Recorder()
        plugins = load_plugins([recorder])
        node = Node(name, config, plugins, recorder, self._agent(config, plugins))
        self.nodes[name] = node
        return node

    def bootstrap(self, node: Node) -> None:
        """What ``cluster start`` does before the agent runs: a primary, and the status key
        naming it as the last active (so it may campaign in synchronous mode)."""
        node.pg.bootstrap(replication_password=PASSWORD, allowed_hosts=[])
        with connect(node, options="-c synchronous_commit=local") as conn:
            conn.execute("CREATE TABLE items (id serial PRIMARY KEY, note text)")
        node.agent.record_bootstrap()

    def restart(self, node: Node) -> None:
        """A new agent process for the node: fresh backends and session, same data."""
        node.old_agents.append(node.agent)
        node.agent = self._agent(node.config, node.plugins)
        node.down = False
        node.agent.start()

    def kill_agent(self, node: Node) -> None:
        """The agent dies without a word: its session is left to expire."""
        node.down = True
        node.agent.stop(resign=False)
        consensus = node.agent.consensus
        crash = getattr(consensus, "crash", None)
        if crash is not None:
            crash()
        elif isinstance(consensus, ZooKeeperConsensus):
            drop_zookeeper_connection(consensus)

    def kill_database(self, node: Node) -> None:
        pid = node.pg.postmaster_pid()
        assert pid is not None, f"{node.name}'s database is not running"
        kill_server(pid)

    def stop(self) -> None:
        for node in self.nodes.values():
            node.agent.stop(resign=False, timeout=30)
        for node in self.nodes.values():
            for agent in [*node.old_agents, node.agent]:
                with contextlib.suppress(Exception):
                    agent.consensus.close()
            pid = node.pg.postmaster_pid()
            if pid is not None:
                stop_server(pid)

    # -- looking at the cluster ---------------------------------------------------------------

    def actives(self) -> list[Node]:
        return [n for n in self.up() if n.snapshot().is_active]

    def up(self) -> list[Node]:
        return [n for n in self.nodes.values() if not n.down and n.agent.died is None]

    def active(self) -> Node:
        actives = self.actives()
        assert len(actives) == 1, f"actives: {[n.name for n in actives]}"
        return actives[0]

    def converged(self) -> Node | None:
        """The active when exactly one node is active and every other one streams from it."""
        actives = self.actives()
        if len(actives) != 1:
            return None
        leader = actives[0]
        for node in self.up():
            snap = node.snapshot()
            if node is leader:
                continue
            if not (snap.standby_streaming and snap.leader == leader.name):
                return None
            if snap.replication is None or snap.replication.following != leader.name:
                return None
        return leader

    def wait_converged(self, timeout: float = WAIT) -> Node:
        leader = wait_for(self.converged, timeout, interval=0.2, what=self.describe)
        assert isinstance(leader, Node)
        return leader

    def describe(self) -> str:
        parts = []
        for node in self.nodes.values():
            snap = node.snapshot()
            repl = snap.replication
            parts.append(
                f"{node.name}: {snap.state.value} active={snap.is_active} "
                f"following={repl.following if repl else None} ({snap.reason})"
            )
        return "convergence: " + "; ".join(parts)

    def status_key(self, node: Node) -> ActiveStatus | None:
        kv = node.agent.consensus.get(keys.STATUS_KEY)
        return keys.decode_status(kv.value) if kv else None

    def sync_standby(self, timeout: float = WAIT) -> str:
        """Wait until the status key names a synchronous standby of the active; its name."""

        def named() -> str | None:
            active = self.active()
            status = self.status_key(active)
            if status is None or status.name != active.name or not status.sync_standbys:
                return None
            return next(iter(status.sync_standbys))

        found = wait_for(named, timeout, interval=0.2, what="a synchronous standby")
        assert isinstance(found, str)
        return found


# -- databases --------------------------------------------------------------------------------


def connect(node: Node, **kwargs: Any) -> psycopg.Connection[Any]:
    pg = node.pg
    return psycopg.connect(
        host=str(pg.layout.run_dir),
        port=pg.config.port,
        user="postgres",
        dbname="postgres",
        autocommit=True,
        connect_timeout=10,
        **kwargs,
    )


def insert(node: Node, note: str) -> None:
    with connect(node) as conn:
        conn.execute("INSERT INTO items (note) VALUES (%s)", (note,))


def notes(node: Node) -> set[str]:
    with connect(node) as conn:
        return {row[0] for row in conn.execute("SELECT note FROM items")}


def wait_note(node: Node, note: str, timeout: float = WAIT) -> None:
    wait_for(lambda: note in notes(node), timeout, interval=0.2, what=f"{note!r} on {node.name}")


class Writer:
    """Inserts rows on one node until it fails or is stopped; remembers the acknowledged ones."""

    def __init__(self, node: Node, prefix: str) -> None:
        self.node = node
        self.prefix = prefix
        self.acked: list[str] = []
        self.error: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Writer:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            with connect(self.node) as conn:
                for i in range(1_000_000):
                    if self._stop.is_set():
                        return
                    note = f"{self.prefix}-{i}"
                    conn.execute("INSERT INTO items (note) VALUES (%s)", (note,))
                    self.acked.append(note)
                    time.sleep(0.01)
        except psycopg.Error as err:
            self.error = err

    def wait_acked(self, count: int) -> None:
        wait_for(lambda: len(self.acked) >= count, WAIT, what=f"{count} acknowledged writes")

    def lost_server(self) -> list[str]:
        """Wait for the writer to fail (its server died); the writes acknowledged before."""
        self._thread.join(30)
        assert self.error is not None, "the writer did not lose its server"
        return list(self.acked)

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(30)
        return list(self.acked)


# -- processes --------------------------------------------------------------------------------


def drop_zookeeper_connection(consensus: ZooKeeperConsensus) -> None:
    """What a SIGKILL does to a ZooKeeper client: the connection drops without a "close
    session" request, so the servers expire the session (and its leader key) after its
    timeout. kazoo pings on its own thread, so a stopped agent loop alone would keep it."""
    client = consensus._client
    assert isinstance(client, KazooClient), "the ZooKeeper backend is already closed"
    client._stopped.set()  # the connection thread must not reconnect
    sock = client._connection._socket
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def kill_server(pid: int) -> None:
    """SIGKILL the postmaster and its children, as a host death would."""
    kill_with_children(pid)


def stop_server(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
    try:
        wait_for(lambda: not pid_alive(pid), 30, what=f"postmaster {pid} to stop")
    except TimeoutError:
        kill_server(pid)


def running_cluster(
    root: Path, store: dict[str, Any], *, backend: str, names: tuple[str, ...] = ("n1", "n2", "n3")
) -> Iterator[AgentCluster]:
    """Body of a fixture: the first node bootstrapped, the others cloned by their agents."""
    cluster = AgentCluster(root, store, backend=backend)
    try:
        first, *others = [cluster.add(name) for name in names]
        cluster.bootstrap(first)
        for node in (first, *others):
            node.agent.start()
        cluster.wait_converged()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def until(predicate: Callable[[], object], what: str, timeout: float = WAIT) -> Any:
    return wait_for(predicate, timeout, interval=0.1, what=what)


def is_state(node: Node, state: NodeState) -> bool:
    return bool(node.snapshot().state is state)
