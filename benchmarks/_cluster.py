"""What the failover benchmark needs from a cluster (3 nodes unless asked), whatever its system.

Both systems run the same PostgreSQL with the same parameters and the same client role, so
the writer and the probes treat them alike; only starting, stopping and asking for a
switchover differ.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import httpx
import psycopg
from _writer import Ack

from hacore.testing.local_cluster import HOST
from hacore.testing.procs import ServerProcess, child_pids, pid_alive

PG_BIN = Path("/usr/lib/postgresql/15/bin")
#: The same on both systems; the rest are PostgreSQL's defaults (fsync on).
PG_PARAMETERS: Mapping[str, str] = {
    "shared_buffers": "32MB",
    "max_connections": "50",
    "wal_level": "replica",
    "hot_standby": "on",
    "wal_log_hints": "on",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "wal_keep_size": "256MB",
}
#: The role the writer and the probes log in as (scram over TCP, on both systems).
CLIENT_USER = "bench"
CLIENT_PASSWORD = "bench-password"
TABLE = "bench_writes"


@attrs.frozen
class Node:
    name: str
    pg_port: int
    api_port: int
    status_url: str


@attrs.frozen
class Timings:
    """The lease timings a system runs with, as the system itself reports them."""

    ttl: float
    loop_wait: float
    retry_timeout: float
    synchronous: bool
    extra: Mapping[str, Any] = attrs.field(factory=dict)

    def describe(self) -> str:
        text = f"ttl {self.ttl:g} s, loop_wait {self.loop_wait:g} s, retry {self.retry_timeout:g} s"
        for key, value in self.extra.items():
            text += f", {key} {value}"
        return text + (", synchronous" if self.synchronous else ", asynchronous")


class BenchCluster(ABC):
    """An active and its streaming standbys (two unless asked); every process stopped by pid."""

    system: str
    #: where its nodes' files and logs are
    workdir: Path
    nodes: Sequence[Node]
    #: each node's process (the agent, or Patroni), by node name
    processes: dict[str, ServerProcess]
    #: the nodes whose host died
    dead: set[str]
    #: what ``pgbench -i`` made of the database (scale, size, times), when it ran
    database: dict[str, Any] | None = None
    #: a cleanly shut down data directory of this system the first active starts on instead of
    #: a new, empty database (:attr:`seedable` systems only); the standbys clone it as usual
    seed: Path | None = None
    #: whether :meth:`start` honours :attr:`seed`
    seedable: bool = False

    @abstractmethod
    def start(self) -> None:
        """Bring the cluster up; returns once the first active serves writes."""

    @abstractmethod
    def pgdata(self, name: str) -> Path:
        """The node's PostgreSQL data directory (where its ``postmaster.pid`` is)."""

    def stop(self) -> None:
        """Stop every process this cluster started, by pid, including frozen ones: SIGKILL
        each node's process, then stop each node's postmaster (fast shutdown); a dead host's
        postmaster, or one that is gone, leaves only its shared memory to remove."""
        for proc in self.processes.values():
            proc.kill()
        for node in self.nodes:
            pgdata = self.pgdata(node.name)
            pid = postmaster_pid(pgdata)
            if node.name in self.dead or pid is None:
                remove_shared_memory(pgdata)
                continue
            stop_postmaster(pid)

    def timeline(self, name: str) -> Path | None:
        """Where the node's agent writes its loop iterations and collections
        (benchmarks/_timeline.py); None for a system that writes none."""
        return None

    @abstractmethod
    def converged(self) -> str | None:
        """The active's name when one node is active and all others stream from it (and, in
        synchronous mode, one of them is synchronous); else None."""

    @abstractmethod
    def sync_standby(self) -> str | None:
        """The synchronous standby's name, in synchronous mode."""

    def host_death(self, name: str) -> float:
        """SIGSTOP, then SIGKILL, the node's agent and its whole PostgreSQL process group, as a
        host that hangs and then dies; returns ``time.monotonic()`` of the SIGSTOP."""
        proc = self.processes[name]
        self.dead.add(name)
        frozen_at = freeze_and_kill(postmaster_pid(self.pgdata(name)), proc.pid)
        proc.kill()  # reaps it
        return frozen_at

    def promotion_phases(self, name: str, since: float) -> dict[str, float]:
        """Seconds from ``since`` (a ``time.time()``) until the steps of ``name``'s promotion
        its own log shows; empty where the system's log does not say them."""
        return {}

    @abstractmethod
    def request_switchover(self, leader: str, candidate: str) -> None:
        """Ask for a planned switchover and return as soon as the request is accepted."""

    @abstractmethod
    def timings(self) -> Timings:
        """The timings in force, read back from the running system."""

    @abstractmethod
    def version(self) -> str: ...

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def wait_converged(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                found = self.converged()
                if found:
                    return found
            time.sleep(0.2)
        raise TimeoutError(f"{self.system}: no converged cluster after {timeout:g} s")

    def dsn(self, *, connect_timeout: int = 2) -> str:
        """Every node, in order; libpq picks the one that accepts writes."""
        return (
            f"host={','.join(HOST for _ in self.nodes)} "
            f"port={','.join(str(n.pg_port) for n in self.nodes)} "
            f"user={CLIENT_USER} password={CLIENT_PASSWORD} dbname=postgres "
            f"target_session_attrs=read-write connect_timeout={connect_timeout}"
        )

    def connect(self, name: str) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=HOST,
            port=self.node(name).pg_port,
            user=CLIENT_USER,
            password=CLIENT_PASSWORD,
            dbname="postgres",
            autocommit=True,
            connect_timeout=10,
        )

    def status_code(self, name: str, timeout: float = 1.0) -> int | None:
        try:
            return httpx.get(self.node(name).status_url, timeout=timeout).status_code
        except httpx.HTTPError:
            return None


# -- probes ---------------------------------------------------------------------------------


def wait_status(
    cluster: BenchCluster,
    names: list[str],
    timeout: float,
    failed: Callable[[], BaseException | None] = lambda: None,
) -> tuple[float, str]:
    """When one of ``names`` first answers 200 on its status endpoint, and which; ``failed``
    ends the wait early with its exception (a refused switchover request)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (exc := failed()) is not None:
            raise exc
        for name in names:
            if cluster.status_code(name, timeout=0.5) == 200:
                return time.monotonic(), name
        time.sleep(0.02)
    raise TimeoutError(f"no status 200 from {', '.join(names)} within {timeout:g} s")


def lost_writes(cluster: BenchCluster, name: str, acks: list[Ack]) -> list[int]:
    """The acknowledged writes ``name``'s database does not hold."""
    with cluster.connect(name) as conn:
        rows = conn.execute(f"SELECT id FROM {TABLE} WHERE id = ANY(%s)", ([a.id for a in acks],))
        present = {row[0] for row in rows}
    return sorted(a.id for a in acks if a.id not in present)


def name_of_port(cluster: BenchCluster, port: int) -> str:
    return next(n.name for n in cluster.nodes if n.pg_port == port)


# -- processes ---------------------------------------------------------------------------------


def postmaster_pid(data_dir: Path) -> int | None:
    try:
        first = (data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
    except OSError:
        return None
    return int(first) if first.strip().isdigit() else None


def process_group(pid: int) -> int | None:
    with contextlib.suppress(ProcessLookupError):
        return os.getpgid(pid)
    return None


def freeze_and_kill(postmaster: int | None, agent_group: int | None) -> float:
    """SIGSTOP everything the host runs, then SIGKILL it; ``time.monotonic()`` of the first
    SIGSTOP. Every PostgreSQL child calls setsid(), so the postmaster's process group holds
    only the postmaster: its children are stopped one by one, after the postmaster, which
    then can fork no more."""
    frozen_at = time.monotonic()
    stopped: list[int] = []

    def stop(group: int | None) -> None:
        if group is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGSTOP)
            stopped.append(group)

    if postmaster is not None:
        stop(process_group(postmaster))
        for child in child_pids(postmaster):
            stop(process_group(child))
    stop(agent_group)
    for group in stopped:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    return frozen_at


def stop_postmaster(pid: int, timeout: float = 30.0) -> None:
    """Fast shutdown (SIGINT), SIGKILL of its group when it does not stop in time."""
    group = process_group(pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_alive(pid) and group is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)


def remove_shared_memory(data_dir: Path) -> None:
    """A SIGKILLed postmaster leaves its System V segment behind; remove it by its id."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except OSError:
        return
    if len(lines) >= 7 and len(lines[6].split()) == 2:
        subprocess.run(["ipcrm", "-m", lines[6].split()[1]], capture_output=True, check=False)


def prepare_workdir(path: Path) -> Path:
    """A directory the postgres user may enter (tempfile makes 0700 root directories)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)
    return path


def copy_tree(source: Path, target: Path) -> None:
    """``cp -a`` (owners, modes; a reflink where the file system has them): a data directory
    copied as root stays the postgres user's."""
    subprocess.run(
        ["cp", "-a", "--reflink=auto", str(source), str(target)], check=True, capture_output=True
    )


def chown_postgres(path: Path) -> None:
    subprocess.run(["chown", "-R", "postgres:postgres", str(path)], check=True)


def fault_phase(cluster: BenchCluster) -> float:
    """Wait a random part of the system's ``loop_wait`` first, so that the death falls
    anywhere between two lease renewals, as a real one does. Without it a quiet machine
    killed the active at the same point of its renewal cycle run after run (the writer's
    warm-up starts from a loop's convergence): ZooKeeper's lease then always had its
    whole ttl left, 3.10 s in 4 runs of 5. Returns the seconds waited."""
    phase = round(random.uniform(0.0, cluster.timings().loop_wait), 3)
    time.sleep(phase)
    return phase
