"""The main demo: a local 3-node cluster that fails over in front of the user.

Everything a user would type is run as a real ``hacore`` command in a subprocess and shown
with a ``$`` prompt, so the demo is also a walk-through of the CLI. Each node is its own
agent service, managed store member and PostgreSQL server on loopback ports in one work
directory; the crash is a host death (SIGKILL of the node's agent, database and store server).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import attrs
import httpx
import yaml
from rich.console import Console

from hacore.errors import HacoreError

HOST = "127.0.0.1"
NAMES = ("node1", "node2", "node3")
ROWS = 100


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _pid_in(path: Path) -> int | None:
    try:
        first = path.read_text().split("\n", 1)[0].strip()
    except OSError:
        return None
    if not first.isdigit():
        return None
    try:
        os.kill(int(first), 0)
    except (ProcessLookupError, PermissionError):
        return None
    return int(first)


def _kill_with_children(pid: int) -> None:
    """A host death: PostgreSQL's backends leave the postmaster's group, so find them by ppid."""
    victims = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                victims.append(int(entry.name))
    for victim in victims:
        with suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)


@attrs.define
class DemoNode:
    name: str
    root: Path
    backend: str
    api_port: int = attrs.field(factory=_free_port)
    pg_port: int = attrs.field(factory=_free_port)
    store: dict[str, int] = attrs.field(factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / self.name

    @property
    def config_path(self) -> Path:
        return self.root / f"{self.name}.yaml"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.api_port}"

    def write_config(self) -> None:
        self.store = {"client_port": _free_port(), "peer_port": _free_port()}
        if self.backend == "zookeeper":
            self.store["election_port"] = _free_port()
        raw = {
            "cluster": {"name": "demo", "namespace": "demo"},
            "node": {
                "name": self.name,
                "host": HOST,
                "api_port": self.api_port,
                "data_dir": str(self.data_dir),
            },
            "consensus": {"backend": self.backend, "managed": True, **self.store},
            "replication": {
                "backend": "postgresql",
                "port": self.pg_port,
                "parameters": {"shared_buffers": "16MB", "max_connections": 30},
            },
        }
        self.config_path.write_text(yaml.safe_dump(raw))

    def start_service(self, env: dict[str, str]) -> None:
        log = open(self.root / f"{self.name}.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                [*_hacore(), "agent", "run", "-c", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        finally:
            log.close()
        _wait(lambda: self.status() is not None, 60, f"{self.name}'s agent service to answer")

    def status(self, probe: str = "/status") -> int | None:
        try:
            return httpx.get(f"http://{self.address}{probe}", timeout=2.0).status_code
        except httpx.HTTPError:
            return None

    def postmaster(self) -> int | None:
        return _pid_in(self.data_dir / "replication" / "pgdata" / "postmaster.pid")

    def store_server(self) -> int | None:
        for name in ("etcd.pid", "zookeeper.pid"):
            pid = _pid_in(self.data_dir / "store" / name)
            if pid is not None:
                return pid
        return None

    def crash(self) -> None:
        """SIGKILL everything this node runs, as if its host died."""
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        for pid in (self.postmaster(), self.store_server()):
            if pid is not None:
                _kill_with_children(pid)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for pid in (self.postmaster(), self.store_server()):
            if pid is not None:
                _kill_with_children(pid)

    def sql(self, script: str) -> str:
        """Run SQL through psql, each statement its own transaction (acknowledged one by one).

        psql rather than a driver: the core imports no database client.
        """
        result = subprocess.run(
            [
                shutil.which("psql") or "psql",
                "-h",
                str(self.data_dir / "replication" / "run"),
                "-p",
                str(self.pg_port),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
            ],
            input=script,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode != 0:
            raise HacoreError(f"psql on {self.name} failed: {result.stderr.strip()}")
        return result.stdout.strip()


def _hacore() -> list[str]:
    return [sys.executable, "-m", "hacore.cli"]


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    raise HacoreError(f"the demo gave up waiting for {what} after {timeout:.0f}s")


@contextmanager
def _workdir(path: str | None) -> Iterator[Path]:
    if path:
        root = Path(path).resolve()
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o755)
        yield root
        return
    root = Path(tempfile.mkdtemp(prefix="hacore-demo-"))
    # The database runs as the postgres user when hacore runs as root: it must get in.
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


class _Demo:
    def __init__(self, root: Path, backend: str, console: Console) -> None:
        self.root = root
        self.console = console
        self.nodes = [DemoNode(name, root, backend) for name in NAMES]
        self.env = {
            **os.environ,
            "HACORE_PROFILE": str(root / "profile.json"),
            "COLUMNS": str(console.width),
        }

    def run(self, *args: str, check: bool = True) -> str:
        self.console.print(f"[bold cyan]$ hacore {' '.join(args)}[/bold cyan]")
        result = subprocess.run(
            [*_hacore(), *args], capture_output=True, text=True, env=self.env, timeout=600
        )
        output = (result.stdout + result.stderr).rstrip()
        if output:
            self.console.print(output, markup=False, highlight=False)
        if check and result.returncode != 0:
            raise HacoreError(f"`hacore {' '.join(args)}` failed (exit {result.returncode})")
        return result.stdout

    def active(self, among: list[DemoNode]) -> DemoNode | None:
        return next((node for node in among if node.status() == 200), None)

    def count_rows(self, node: DemoNode) -> int:
        return int(node.sql("SELECT count(*) FROM demo_orders;"))

    def standby_streams(self, node: DemoNode, active: DemoNode) -> bool:
        """The standby's own agent says so (/standby), and the active sees it stream."""
        if node.status("/standby") != 200:
            return False
        rows = active.sql(
            "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming';"
        ).splitlines()
        return any(node.name in row for row in rows)

    def listed_as_standby(self, node: DemoNode) -> bool:
        """The cluster view (what `nodes list` shows) has caught up with the node's state."""
        result = subprocess.run(
            [*_hacore(), "cluster", "nodes", "list", "--json"],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
        )
        if result.returncode != 0:
            return False
        rows = json.loads(result.stdout)
        rows = rows.get("nodes", rows) if isinstance(rows, dict) else rows
        return any(
            row.get("name") == node.name and row.get("state") == "standby" and row.get("healthy")
            for row in rows
        )

    def form(self) -> None:
        rule = self.console.rule
        rule("[bold]1. three nodes, each with its agent service")
        for node in self.nodes:
            node.write_config()
            node.start_service(self.env)
            self.console.print(
                f"{node.name}: agent API {node.address}, PostgreSQL port {node.pg_port}, "
                f"config {node.config_path}"
            )
        first, *others = self.nodes
        rule("[bold]2. found the cluster on node1")
        self.run("cluster", "start", "-c", str(first.config_path))
        rule("[bold]3. node2 and node3 join (store member, clone of the database)")
        for node in others:
            self.run(
                "cluster",
                "join",
                first.address,
                "-c",
                str(node.config_path),
                "--node-name",
                node.name,
            )
        self.run("cluster", "nodes", "list")

    def failover(self) -> None:
        rule = self.console.rule
        active = _wait(lambda: self.active(self.nodes), 60, "an active node")
        rule(f"[bold]4. write {ROWS} rows on the active, {active.name}")
        active.sql(
            "CREATE TABLE demo_orders (id serial PRIMARY KEY, item text);\n"
            + "".join(
                f"INSERT INTO demo_orders (item) VALUES ('order {i}');\n" for i in range(ROWS)
            )
        )
        self.console.print(f"{self.count_rows(active)} rows on {active.name}")

        rule(f"[bold]5. crash {active.name}: SIGKILL its agent, PostgreSQL and store server")
        survivors = [node for node in self.nodes if node is not active]
        crashed_at = time.monotonic()
        active.crash()
        successor = _wait(lambda: self.active(survivors), 120, "a standby to take over")
        took = time.monotonic() - crashed_at
        self.console.print(
            f"[bold green]{successor.name} is active[/bold green]: its /status answered 200 "
            f"{took:.1f}s after the crash (the lease TTL is 5s; when the crashed node's store "
            "server led the store, the store elects a new leader first)"
        )
        self.run("cluster", "nodes", "list")
        rows = self.count_rows(successor)
        self.console.print(f"{rows} of {ROWS} rows on {successor.name}: nothing lost")
        if rows != ROWS:
            raise HacoreError(f"{ROWS - rows} acknowledged rows are missing after the failover")
        successor.sql("INSERT INTO demo_orders (item) VALUES ('written after the failover');")

        rule(f"[bold]6. {active.name} comes back and rejoins as a standby")
        active.start_service(self.env)
        _wait(lambda: self.standby_streams(active, successor), 180, f"{active.name} to stream")
        _wait(lambda: self.listed_as_standby(active), 60, f"{active.name}'s record to say so")
        self.console.print(f"{active.name} streams from {successor.name} again")
        self.run("cluster", "nodes", "list")

    def cleanup(self) -> None:
        self.console.rule("[bold]7. clean up")
        for node in self.nodes:
            node.cleanup()
        self.console.print(f"stopped every agent, database and store server in {self.root}")


def run_cluster_demo(*, backend: str, workdir: str | None, console: Console) -> None:
    with _workdir(workdir) as root:
        console.rule(f"[bold]hacore demo[/bold] — 3 nodes, {backend} store, in {root}")
        demo = _Demo(root, backend, console)
        try:
            demo.form()
            demo.failover()
        except BaseException:
            console.print(f"[red]the demo failed; node logs are in {root}/*.log[/red]")
            if workdir is None:
                for log in sorted(root.glob("*.log")):
                    tail = log.read_text(errors="replace").splitlines()[-15:]
                    console.print(f"--- {log.name}", markup=False)
                    console.print("\n".join(tail), markup=False, highlight=False)
            raise
        finally:
            demo.cleanup()
