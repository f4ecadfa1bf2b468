"""One node of the cluster demo: its configuration, its processes, and a host death.

Every node is an agent service (``hacore agent run``) that runs, on loopback ports under one
work directory, a managed store member, PostgreSQL, Syncthing for the sample manager's
resources directory and, while the node is active, the manager's API and worker as
``process`` services. The demo finds all of them by their pid files, so a crash can kill
exactly what the node runs and the cleanup can stop it by pid.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any, TypeVar

import attrs
import httpx
import yaml

from hacore.backends.processes import process_table, read_proc
from hacore.errors import HacoreError

HOST = "127.0.0.1"
#: the database the sample manager keeps its workflows in (created by ``cluster start``)
MANAGER_DB = "manager"
SERVICES = ("api", "worker")
STEP_SECONDS = 0.4

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def hacore_command() -> list[str]:
    return [sys.executable, "-m", "hacore.cli"]


def wait(predicate: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    raise HacoreError(f"the demo gave up waiting for {what} after {timeout:.0f}s")


def alive(pid: int) -> bool:
    entry = read_proc(pid)
    return entry is not None and entry.alive


def _pid_in(path: Path) -> int | None:
    """The live pid a pid file names: a first line with a number, or JSON with ``pid``."""
    try:
        text = path.read_text()
    except OSError:
        return None
    first = text.split("\n", 1)[0].strip()
    if first.isdigit():
        pid = int(first)
    else:
        try:
            pid = int(json.loads(text)["pid"])
        except (ValueError, KeyError, TypeError):
            return None
    return pid if alive(pid) else None


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and what belongs to it: its children (PostgreSQL's backends leave the
    postmaster's group), its process group and its session (Syncthing's monitor runs the real
    Syncthing in a group of its own)."""
    victims = {pid} | {e.pid for e in process_table() if pid in (e.ppid, e.pgid, e.sid)}
    for victim in victims:
        with suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


def ca_file(data_dir: Path) -> Path | None:
    """The cluster CA a TLS cluster gives every node (``cluster start``/``join`` write it)."""
    path = data_dir / "pki" / "node" / "ca.crt"
    return path if path.is_file() else None


@attrs.define
class DemoNode:
    name: str
    root: Path
    backend: str
    api_port: int = attrs.field(factory=free_port)
    pg_port: int = attrs.field(factory=free_port)
    manager_port: int = attrs.field(factory=free_port)
    sync_ports: tuple[int, int] = attrs.field(factory=lambda: (free_port(), free_port()))
    store: dict[str, int] = attrs.field(factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / self.name

    @property
    def config_path(self) -> Path:
        return self.root / f"{self.name}.yaml"

    @property
    def resources(self) -> Path:
        """The sample manager's resources directory, mirrored by Syncthing."""
        return self.data_dir / "resources"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.api_port}"

    @property
    def manager_url(self) -> str:
        return f"http://{HOST}:{self.manager_port}"

    @property
    def socket_dir(self) -> Path:
        return self.data_dir / "replication" / "run"

    def write_config(self) -> None:
        self.store = {"client_port": free_port(), "peer_port": free_port()}
        if self.backend == "zookeeper":
            self.store["election_port"] = free_port()
        dsn = f"host={self.socket_dir} port={self.pg_port} dbname={MANAGER_DB} user=postgres"
        python = [sys.executable, "-m"]
        raw = {
            "cluster": {"name": "demo", "namespace": "demo"},
            "node": {
                "name": self.name,
                "host": HOST,
                "api_port": self.api_port,
                "data_dir": str(self.data_dir),
            },
            # Only a synchronous standby may take over: no acknowledged row or step is lost.
            "failover": {"synchronous_mode": "on"},
            "consensus": {"backend": self.backend, "managed": True, **self.store},
            "replication": {
                "backend": "postgresql",
                "port": self.pg_port,
                "database": MANAGER_DB,
                "parameters": {"shared_buffers": "16MB", "max_connections": 30},
            },
            "filesync": {
                "backend": "syncthing",
                "directories": [str(self.resources)],
                "api_port": self.sync_ports[0],
                "listen_port": self.sync_ports[1],
            },
            "services": {
                "backend": "process",
                "active_only": list(SERVICES),
                "run_dir": str(self.data_dir / "services"),
                "stop_timeout": 3,
                "commands": {
                    "api": {
                        "command": [
                            *python, "sample_manager.api", "--host", HOST,
                            "--port", str(self.manager_port), "--resources", str(self.resources),
                        ],
                        "env": {"SAMPLE_MANAGER_DSN": dsn},
                    },
                    "worker": {
                        "command": [
                            *python, "sample_manager.worker", "--node", self.name,
                            "--step-seconds", str(STEP_SECONDS), "--poll-seconds", "0.2",
                            "--concurrency", "2",
                        ],
                        "env": {"SAMPLE_MANAGER_DSN": dsn},
                    },
                },
            },
            "plugins": {"settings": {"sample_manager": {"api_url": self.manager_url}}},
        }  # fmt: skip
        self.resources.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(raw, sort_keys=False))

    # -- the agent service -------------------------------------------------------------------

    def start_service(self, env: dict[str, str]) -> None:
        self.spawn_service(env)
        self.wait_service()

    def spawn_service(self, env: dict[str, str]) -> None:
        log = open(self.root / f"{self.name}.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                [*hacore_command(), "agent", "run", "-c", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        finally:
            log.close()

    def wait_service(self) -> None:
        wait(lambda: self.status() is not None, 60, f"{self.name}'s agent service to answer")

    def status(self, probe: str = "/status", trust: Path | None = None) -> int | None:
        """The HTTP status of one of the agent's probes; None when it does not answer."""
        trust = trust or ca_file(self.data_dir)
        scheme = "https" if trust else "http"
        try:
            return httpx.get(
                f"{scheme}://{self.address}{probe}",
                timeout=2.0,
                verify=_verify(trust),
                trust_env=False,
            ).status_code
        except httpx.HTTPError:
            return None

    # -- what runs on the node ---------------------------------------------------------------

    def service_pid(self, service: str) -> int | None:
        """The live pid of an active-only service (the process backend's pid file)."""
        return _pid_in(self.data_dir / "services" / f"{service}.pid")

    def postmaster(self) -> int | None:
        return _pid_in(self.data_dir / "replication" / "pgdata" / "postmaster.pid")

    def store_server(self) -> int | None:
        for name in ("etcd.pid", "zookeeper.pid"):
            pid = _pid_in(self.data_dir / "store" / name)
            if pid is not None:
                return pid
        return None

    def syncthing(self) -> int | None:
        return _pid_in(self.data_dir / "filesync" / "syncthing" / "syncthing.pid")

    def servers(self) -> dict[str, int]:
        """What the node runs besides its agent, by what it is: the live pids."""
        found = {
            "PostgreSQL": self.postmaster(),
            "fence keeper": _pid_in(self.data_dir / "keeper.pid"),
            f"{self.backend} member": self.store_server(),
            "Syncthing": self.syncthing(),
            **{service: self.service_pid(service) for service in SERVICES},
        }
        return {what: pid for what, pid in found.items() if pid is not None}

    def crash(self) -> dict[str, int]:
        """SIGKILL everything this node runs at once, as if its host died; what was killed."""
        victims = self.servers()
        if self.proc is not None:
            victims = {"agent": self.proc.pid, **victims}
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for pid in victims.values():
            kill_tree(pid)
        return victims

    def stop_service(self) -> None:
        """Ask the agent to stop (it stops what it runs); :meth:`cleanup` waits for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def cleanup(self) -> None:
        """Wait for the agent to stop, then stop whatever is left, by pid."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for pid in self.servers().values():
            kill_tree(pid)

    def sql(self, script: str, database: str = "postgres") -> str:
        """Run SQL through psql, each statement its own transaction (acknowledged one by one).

        psql rather than a driver: the core imports no database client.
        """
        result = subprocess.run(
            [
                shutil.which("psql") or "psql",
                "-h", str(self.socket_dir), "-p", str(self.pg_port), "-U", "postgres",
                "-d", database, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
            ],
            input=script,
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
        if result.returncode != 0:
            raise HacoreError(f"psql on {self.name} failed: {result.stderr.strip()}")
        return result.stdout.strip()


def _verify(trust: Path | None) -> ssl.SSLContext | bool:
    if trust is None:
        return True
    return ssl.create_default_context(cafile=str(trust))


def join_trust_arguments(first: DemoNode) -> list[str]:
    """What ``cluster join`` needs to trust the cluster it joins: the CA's fingerprint, which
    the founder's ``cluster start`` prints (computed here from the same CA certificate).
    A cluster without TLS needs nothing."""
    trust = ca_file(first.data_dir)
    if trust is None:
        return []
    from hacore.pki import fingerprint
    from hacore.pki.ca import load_ca_certificate

    return ["--ca-fingerprint", fingerprint(load_ca_certificate(trust))]


def read_json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise HacoreError(
            f"{response.request.url} answered {response.status_code} without JSON"
        ) from None
