"""Agents with their companions: real Syncthing per node, and real active-only services run by
the ``process`` backend or by a real supervisord per node.

Builds on :mod:`agent_fixtures` (real PostgreSQL, a shared store, agents in this process).
Each node's backends are the real ones, subclassed only to note every database promote and
fence, file sync flip and service start and stop into the node's recorder, next to its
lifecycle hooks, so a test reads the order in which the agent drove them.

The services are one small Python program (:data:`SERVICE`): it appends to a JSON-lines file
whether the node's own database was writable when it started and when it was told to stop.
That is the services' own view of the order, independent of the recording. When stopped it
also writes a last file ``<service>-<pid>.stopped`` into the mirrored directory.

A "host death" SIGKILLs the node's agent loop (its session left to expire), its PostgreSQL,
its Syncthing and its services (or its supervisord and the programs it runs). Every process
is stopped by pid at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
from agent_fixtures import (
    CREDENTIALS,
    WAIT,
    AgentCluster,
    FaultyPostgres,
    Node,
    Recorder,
    kill_server,
    until,
)

from hacore.agent.runtime import Agent
from hacore.backends.processes import process_table
from hacore.backends.services import ServiceBackend
from hacore.config.node import NodeConfig, load_config
from hacore.config.write_back import to_mapping
from hacore.plugins.factory import FILESYNC_DIR, build_backends
from hacore.plugins.registry import HacorePlugins, load_plugins
from hacore.testing.procs import ServerProcess, free_port
from hacore_plugins.services.process import ProcessServices
from hacore_plugins.services.supervisor import SupervisorServices
from hacore_plugins.syncthing import SyncthingFilesync

SERVICES = ("broker", "worker")
FILES_DIR = "manager-files"
SWITCHOVER_TIMEOUT = 12.0

SERVICE = r"""
import json, os, signal, sys, time

pg_file, out, name, broken, files = sys.argv[1:6]
if os.path.exists(broken):
    sys.exit(3)
import psycopg


def writable():
    where = json.loads(open(pg_file).read())
    try:
        with psycopg.connect(
            host=where["host"], port=where["port"], user="postgres", dbname="postgres",
            connect_timeout=5,
        ) as conn:
            return not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
    except Exception as err:
        return "no database: " + str(err).splitlines()[0]


def record(event):
    line = {"event": event, "service": name, "writable": writable(), "pid": os.getpid()}
    with open(out, "a") as f:
        f.write(json.dumps(line) + "\n")


def stop(signum, frame):
    # A last write into the mirrored files, as a manager's worker would make on its way out.
    if files != "-":
        try:
            with open(os.path.join(files, f"{name}-{os.getpid()}.stopped"), "w") as f:
                f.write("stopped\n")
        except OSError:
            pass
    record("stop")
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
record("start")
while True:
    time.sleep(1)
"""


class CompanionRecorder(Recorder):
    def note(self, event: str, detail: Any = None) -> None:
        self._note(event, detail)

    def since(self, start: int) -> list[tuple[str, Any]]:
        with self._lock:
            return list(self.calls[start:])

    def mark(self) -> int:
        with self._lock:
            return len(self.calls)


def _recorder(backend: Any) -> CompanionRecorder:
    recorder = backend.recorder
    assert isinstance(recorder, CompanionRecorder)
    return recorder


class RecordingPostgres(FaultyPostgres):
    recorder: CompanionRecorder | None = None

    def promote(self, *, timeout: float) -> None:
        super().promote(timeout=timeout)
        _recorder(self).note("db_promoted")

    def fence(self) -> None:
        _recorder(self).note("db_fence")
        super().fence()


class RecordingSyncthing(SyncthingFilesync):
    recorder: CompanionRecorder | None = None

    def become_source(self) -> None:
        files = sorted(p.name for d in self.directories for p in d.iterdir() if p.is_file())
        _recorder(self).note("files_source", files)
        super().become_source()

    def become_mirror(self, source: str) -> None:
        _recorder(self).note("files_mirror", source)
        super().become_mirror(source)


class _RecordingServices:
    """Mixed in before a real services backend."""

    recorder: CompanionRecorder | None = None

    def start(self, name: str) -> None:
        _recorder(self).note("service_start", name)
        super().start(name)  # type: ignore[misc]

    def stop(self, name: str) -> None:
        super().stop(name)  # type: ignore[misc]
        _recorder(self).note("service_stopped", name)


class RecordingProcessServices(_RecordingServices, ProcessServices):
    pass


class RecordingSupervisorServices(_RecordingServices, SupervisorServices):
    pass


class Supervisord:
    """One node's supervisord with the active-only programs (``autostart=false``)."""

    def __init__(self, home: Path, programs: dict[str, list[str]]) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.socket = home / "supervisor.sock"
        conf = [
            f"[unix_http_server]\nfile={self.socket}\nchmod=0700\n",
            f"[supervisord]\nnodaemon=true\nuser=root\nlogfile={home}/supervisord.log\n"
            f"pidfile={home}/supervisord.pid\nchildlogdir={home}\n",
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n",
        ]
        for name, argv in programs.items():
            conf.append(
                f"[program:{name}]\ncommand={' '.join(argv)}\nautostart=false\n"
                "autorestart=false\nstartsecs=1\nstartretries=0\nstopwaitsecs=10\n"
            )
        self.conf = home / "supervisord.conf"
        self.conf.write_text("\n".join(conf))
        self.process: ServerProcess | None = None

    def start(self) -> None:
        binary = shutil.which("supervisord")
        assert binary is not None
        self.process = ServerProcess(
            "supervisord", [binary, "-c", str(self.conf)], self.home / "supervisord.out"
        ).start()
        probe = SupervisorServices({"socket": str(self.socket)})
        until(lambda: probe.status(SERVICES[0]), "supervisord to answer", timeout=30)

    def kill(self) -> None:
        """Host death: the programs (in their own process groups) and supervisord."""
        process = self.process
        if process is not None and process.pid is not None and process.alive():
            kill_server(process.pid)
            process.kill()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=30)


class CompanionCluster(AgentCluster):
    """Agents with file sync (Syncthing, optional) and active-only services
    (``services``: ``process`` or ``supervisor``)."""

    def __init__(
        self, root: Path, store: dict[str, Any], *, backend: str, services: str, files: bool
    ) -> None:
        super().__init__(root, store, backend=backend)
        self.services_backend = services
        self.files = files
        self.supervisors: dict[str, Supervisord] = {}
        self.recorders: dict[str, CompanionRecorder] = {}
        self.script = root / "service.py"
        self.script.write_text(SERVICE)

    # -- configuration and agents ------------------------------------------------------------

    def home(self, name: str) -> Path:
        return self.root / name

    def files_dir(self, name: str) -> Path:
        return self.home(name) / "shared" / FILES_DIR

    def service_log(self, name: str) -> Path:
        return self.home(name) / "services.jsonl"

    def broken_flag(self, name: str) -> Path:
        """While this file exists, the node's services exit at once with status 3."""
        return self.home(name) / "services-broken"

    def service_argv(self, name: str, service: str) -> list[str]:
        home = self.home(name)
        return [
            sys.executable,
            str(self.script),
            str(home / "pg.json"),
            str(self.service_log(name)),
            service,
            str(self.broken_flag(name)),
            str(self.files_dir(name)) if self.files else "-",
        ]

    def config(self, name: str, port: int) -> NodeConfig:
        raw = to_mapping(super().config(name, port))
        raw["failover"]["switchover_timeout"] = SWITCHOVER_TIMEOUT
        if self.files:
            raw["filesync"] = {
                "backend": "syncthing",
                "directories": [str(self.files_dir(name))],
                "api_port": free_port(),
                "listen_port": free_port(),
                "enforce_interval": 1,
            }
        section: dict[str, Any] = {"backend": self.services_backend, "active_only": [*SERVICES]}
        if self.services_backend == "process":
            section["run_dir"] = str(self.home(name) / "services")
            section["stop_timeout"] = 10
            section["commands"] = {s: self.service_argv(name, s) for s in SERVICES}
        else:
            supervisor = Supervisord(
                self.home(name) / "supervisor", {s: self.service_argv(name, s) for s in SERVICES}
            )
            self.supervisors[name] = supervisor
            section["socket"] = str(supervisor.socket)
            section["timeout"] = 30
        raw["services"] = section
        return load_config(raw)

    def _agent(self, config: NodeConfig, plugins: HacorePlugins) -> Agent:
        node = config.node
        recorder = self.recorders[node.name]
        backends = build_backends(config, plugins)
        pg = RecordingPostgres(
            config.replication.settings if config.replication else {},
            node_name=node.name,
            host=node.host,
            data_dir=backends.replication.data_dir,
        )
        pg.recorder = recorder
        self.home(node.name).mkdir(parents=True, exist_ok=True)
        (self.home(node.name) / "pg.json").write_text(
            json.dumps({"host": str(pg.layout.run_dir), "port": pg.config.port})
        )
        files = None
        if config.filesync is not None:
            files = RecordingSyncthing(
                config.filesync.settings,
                node_name=node.name,
                host=node.host,
                data_dir=node.data_dir / FILESYNC_DIR,
                directories=config.filesync.directories,
            )
            files.recorder = recorder
        assert config.services is not None
        kind = (
            RecordingProcessServices
            if self.services_backend == "process"
            else RecordingSupervisorServices
        )
        services = kind(config.services.settings)
        services.recorder = recorder
        backends = attrs.evolve(backends, replication=pg, filesync=files, services=services)
        return Agent(config, plugins, backends=backends, credentials=CREDENTIALS)

    def add(self, name: str) -> Node:
        config = self.config(name, free_port())
        recorder = self.recorders[name] = CompanionRecorder()
        plugins = load_plugins([recorder])
        if name in self.supervisors:
            self.supervisors[name].start()
        node = Node(name, config, plugins, recorder, self._agent(config, plugins))
        self.nodes[name] = node
        return node

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            for node in self.nodes.values():
                # Only the last agent's: an older one's (stopped at its host death) would
                # remove the pid file of the Syncthing its successor started.
                files = node.agent.backends.filesync
                if files is not None:
                    with contextlib.suppress(Exception):
                        files.stop()
                if self.services_backend == "process":
                    self.fresh_services(node).stop_all(SERVICES)
            for supervisor in self.supervisors.values():
                supervisor.stop()

    # -- looking at the companions -----------------------------------------------------------

    def fresh_services(self, node: Node) -> ServiceBackend:
        """A backend of our own, not the agent's: what really runs on the node."""
        assert node.config.services is not None
        settings = node.config.services.settings
        if self.services_backend == "process":
            return ProcessServices(settings)
        return SupervisorServices(settings)

    def running_services(self, node: Node) -> list[str]:
        if node.name in self.supervisors:
            process = self.supervisors[node.name].process
            if process is None or not process.alive():
                return []
        backend = self.fresh_services(node)
        return [s for s in SERVICES if backend.status(s).running]

    def service_runners(self) -> dict[str, list[str]]:
        """Every node that runs any active-only service, with the ones it runs."""
        found = {n.name: self.running_services(n) for n in self.nodes.values()}
        return {name: running for name, running in found.items() if running}

    def wait_services_only_on(self, node: Node, timeout: float = WAIT) -> None:
        until(
            lambda: self.service_runners() == {node.name: list(SERVICES)},
            f"the active-only services to run on {node.name} only (now: see below)",
            timeout=timeout,
        )

    def last_words(self, node: Node, since: int = 0) -> list[str]:
        """The files the node's services wrote when stopped (from their ``since``-th record)."""
        return [
            f"{r['service']}-{r['pid']}.stopped"
            for r in self.service_events(node)[since:]
            if r["event"] == "stop"
        ]

    def service_events(self, node: Node) -> list[dict[str, Any]]:
        try:
            lines = self.service_log(node.name).read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    def syncthing(self, node: Node) -> RecordingSyncthing:
        files = node.agent.backends.filesync
        assert isinstance(files, RecordingSyncthing)
        return files

    # -- faults ------------------------------------------------------------------------------

    def host_death(self, node: Node) -> None:
        """Everything of the node dies at once; its session expires after the TTL."""
        self.kill_agent(node)
        self.kill_database(node)
        if self.files:
            files = self.syncthing(node)
            pid = files.process.pid()
            assert pid is not None, f"{node.name}'s Syncthing is not running"
            signal_syncthing(files, signal.SIGKILL)
            until(lambda: not session_pids(pid), f"{node.name}'s Syncthing to die")
            # The dead agent's threads die with it too (its enforcer would talk to the next
            # Syncthing, which keeps the API key).
            files.stop()
        if node.name in self.supervisors:
            self.supervisors[node.name].kill()
        else:
            for service in SERVICES:
                self.kill_service(node, service)

    def kill_service(self, node: Node, service: str) -> None:
        """SIGKILL one service of the ``process`` backend, found by its pid file."""
        backend = self.fresh_services(node)
        assert isinstance(backend, ProcessServices)
        try:
            pid = json.loads(backend.pid_path(service).read_text())["pid"]
        except FileNotFoundError:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        until(lambda: not backend.status(service).running, f"{service} on {node.name} to die")

    def revive(self, node: Node) -> None:
        """The node boots again: its service manager, then a new agent."""
        if node.name in self.supervisors:
            self.supervisors[node.name].start()
        self.restart(node)


def running_companion_cluster(
    root: Path,
    store: dict[str, Any],
    *,
    services: str,
    files: bool,
    names: tuple[str, ...],
) -> Iterator[CompanionCluster]:
    cluster = CompanionCluster(root, store, backend="memory", services=services, files=files)
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


def ordered(events: list[tuple[str, Any]], *wanted: tuple[str, Any] | str) -> list[int]:
    """The index of the first occurrence of each wanted event, each after the previous one;
    fails naming the first one missing."""
    positions: list[int] = []
    start = 0
    for want in wanted:
        for index in range(start, len(events)):
            event = events[index]
            if event == want or event[0] == want:
                positions.append(index)
                start = index + 1
                break
        else:
            raise AssertionError(f"{want!r} not found after {wanted[: len(positions)]} in {events}")
    return positions


def wait_file(path: Path, timeout: float = WAIT) -> None:
    until(lambda: path.is_file(), f"{path} to appear", timeout=timeout)


def wait_gone(path: Path, timeout: float = WAIT) -> None:
    until(lambda: not path.exists(), f"{path} to be removed", timeout=timeout)


def session_pids(sid: int) -> list[int]:
    """Every live process of session ``sid``: Syncthing's monitor starts the real Syncthing
    in a process group of its own, so signalling the monitor's group misses it."""
    return [entry.pid for entry in process_table() if entry.sid == sid and entry.alive]


def signal_syncthing(files: SyncthingFilesync, sig: int) -> None:
    """``sig`` to the node's Syncthing: its monitor and the Syncthing it runs."""
    pid = files.process.pid()
    assert pid is not None, f"{files.node_name}'s Syncthing is not running"
    pids = session_pids(pid)
    assert len(pids) >= 2, f"{files.node_name}'s Syncthing: expected a monitor and a child"
    for each in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(each, sig)
