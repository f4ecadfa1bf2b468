"""One node of a cluster run on this machine: its layout, its configuration, its processes.

The demo, the integration and fault fixtures and the failover benchmark all run clusters
whose nodes share one work directory: each node has a data directory and a ``node.yaml``
beside it, an agent process with its log, and the servers the agent starts (PostgreSQL, the
managed store member, the fence keeper, Syncthing, ``process`` services), each found by the
pid file it leaves in the data directory. :class:`LocalNode` holds what they share, so a
change of the data directory's layout or of the node configuration is made once; each user
subclasses it with what only it needs (a CLI runner, a network namespace, witnesses, timings).

Stopping is by pid, never by name: a test machine runs other clusters too.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import yaml

from hacore.backends.processes import process_table
from hacore.testing.procs import ServerProcess, free_port, pid_alive, wait_for

HOST = "127.0.0.1"
#: the pid files a managed store member may leave, one per store
STORE_PID_FILES = ("etcd.pid", "zookeeper.pid")


def pid_in(path: Path) -> int | None:
    """The live pid a pid file names: a first line with a number (PostgreSQL's
    ``postmaster.pid``, a detached server's), or JSON with ``pid``; None when the file is
    missing or names a process that is gone."""
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
    return pid if pid_alive(pid) else None


def kill_tree(pid: int, timeout: float = 30.0) -> None:
    """SIGKILL ``pid`` and what belongs to it, as a host death would, and wait for it to go.

    What belongs to it: its children (PostgreSQL's backends call setsid(), so they leave the
    postmaster's group) and the members of the process group and session it leads
    (Syncthing's monitor runs the real Syncthing in a group of its own). A group or session
    ``pid`` does not lead is left alone: it may be the caller's.
    """
    victims = {pid} | {e.pid for e in process_table() if pid in (e.ppid, e.pgid, e.sid)}
    for victim in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), timeout, what=f"pid {pid} to die")


def managed_store_ports(backend: str) -> dict[str, int]:
    """Free loopback ports for a managed store member (ZooKeeper needs an election port)."""
    ports = {"client_port": free_port(), "peer_port": free_port()}
    if backend == "zookeeper":
        ports["election_port"] = free_port()
    return ports


@attrs.define
class LocalNode:
    """A node whose data directory is ``root/name`` and whose configuration is
    ``root/name.yaml``; ``proc`` is its agent once :meth:`spawn_agent` started it."""

    name: str
    root: Path
    #: the consensus backend: its managed member is one of the node's servers
    backend: str = "etcd"
    #: the address the node's servers listen on (``node.host``)
    ip: str = attrs.field(default=HOST, kw_only=True)
    api_port: int = attrs.field(factory=free_port, kw_only=True)
    pg_port: int = attrs.field(factory=free_port, kw_only=True)
    #: the managed store member's ports (``client_port``, ``peer_port``...)
    store: dict[str, int] = attrs.field(factory=dict, kw_only=True)
    #: the ``process`` services the node runs, found by their pid files
    services: tuple[str, ...] = attrs.field(default=(), kw_only=True)
    proc: ServerProcess | None = attrs.field(default=None, kw_only=True)

    # -- layout ------------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self.root / self.name

    @property
    def config_path(self) -> Path:
        return self.root / f"{self.name}.yaml"

    @property
    def log_path(self) -> Path:
        """The agent's output."""
        return self.root / f"{self.name}.log"

    @property
    def address(self) -> str:
        """The agent API's ``host:port``."""
        return f"{self.ip}:{self.api_port}"

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "replication" / "pgdata"

    @property
    def socket_dir(self) -> Path:
        """Where PostgreSQL's Unix socket is: a client there is in no network namespace."""
        return self.data_dir / "replication" / "run"

    @property
    def services_dir(self) -> Path:
        """The ``process`` services' ``run_dir``: their pid files."""
        return self.data_dir / "services"

    # -- configuration -----------------------------------------------------------------------

    def node_config(
        self,
        *,
        cluster: str,
        namespace: str,
        consensus: Mapping[str, Any] | None = None,
        replication: Mapping[str, Any] | None = None,
        timing: Mapping[str, float] | None = None,
        checks: Mapping[str, Any] | None = None,
        failover: Mapping[str, Any] | None = None,
        filesync: Mapping[str, Any] | None = None,
        services: Mapping[str, Any] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The node's ``node.yaml`` as data; a section given as None is left out.

        ``consensus`` defaults to a managed member of :attr:`backend` on :attr:`store`'s
        ports; ``replication`` adds to PostgreSQL on :attr:`pg_port`; ``extra`` holds more
        top-level sections (``tls``, ``api``, ``plugins``...), written last.
        """
        raw: dict[str, Any] = {
            "cluster": {"name": cluster, "namespace": namespace},
            "node": {
                "name": self.name,
                "host": self.ip,
                "api_port": self.api_port,
                "data_dir": str(self.data_dir),
            },
        }
        optional = {"timing": timing, "checks": checks, "failover": failover}
        raw.update({key: dict(value) for key, value in optional.items() if value is not None})
        raw["consensus"] = (
            dict(consensus)
            if consensus is not None
            else {"backend": self.backend, "managed": True, **self.store}
        )
        raw["replication"] = {"backend": "postgresql", "port": self.pg_port, **(replication or {})}
        optional = {"filesync": filesync, "services": services}
        raw.update({key: dict(value) for key, value in optional.items() if value is not None})
        raw.update(extra or {})
        return raw

    def write_config(self, **sections: Any) -> dict[str, Any]:
        """Write :meth:`node_config` (same arguments) to :attr:`config_path`; returns it."""
        raw = self.node_config(**sections)
        self.config_path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return raw

    def join_arguments(self, founder: LocalNode) -> list[str]:
        """``hacore`` arguments that join this node to the cluster ``founder`` started (the
        caller adds the trust and timeout options it wants)."""
        return [
            "cluster", "join", founder.address, "-c", str(self.config_path),
            "--node-name", self.name,
        ]  # fmt: skip

    # -- the agent ---------------------------------------------------------------------------

    def spawn_agent(
        self,
        hacore: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        wrap: Callable[[list[str]], list[str]] | None = None,
    ) -> ServerProcess:
        """Start ``hacore agent run -c node.yaml`` in a session of its own, its output in
        :attr:`log_path` (not waiting for it); ``hacore`` is how to run the CLI, ``wrap``
        turns the command into the one to run (``ip netns exec ...``)."""
        argv = [*hacore, "agent", "run", "-c", str(self.config_path)]
        self.proc = ServerProcess(
            f"agent {self.name}", wrap(argv) if wrap else argv, self.log_path, env=env
        ).start()
        return self.proc

    def stop_agent(self) -> None:
        """Ask the agent to stop (it stops what it runs); :meth:`cleanup` waits for it."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)

    # -- what runs on the node ---------------------------------------------------------------

    def postmaster(self) -> int | None:
        return pid_in(self.pgdata / "postmaster.pid")

    def store_server(self) -> int | None:
        """The managed store member, started detached by the agent."""
        for name in STORE_PID_FILES:
            pid = pid_in(self.data_dir / "store" / name)
            if pid is not None:
                return pid
        return None

    def keeper(self) -> int | None:
        """The node's fence keeper (docs/fencing.md), started detached by its agent."""
        return pid_in(self.data_dir / "keeper.pid")

    def syncthing(self) -> int | None:
        return pid_in(self.data_dir / "filesync" / "syncthing" / "syncthing.pid")

    def service_pid(self, service: str) -> int | None:
        """The live pid of a ``process`` service (the process backend's pid file)."""
        return pid_in(self.services_dir / f"{service}.pid")

    @property
    def store_label(self) -> str:
        return f"{self.backend} member"

    def servers(self) -> dict[str, int]:
        """What the node runs besides its agent, by what it is: the live pids."""
        found = {
            "PostgreSQL": self.postmaster(),
            "fence keeper": self.keeper(),
            self.store_label: self.store_server(),
            "Syncthing": self.syncthing(),
            **{service: self.service_pid(service) for service in self.services},
        }
        return {what: pid for what, pid in found.items() if pid is not None}

    def crash(self, *, store: bool = True) -> dict[str, int]:
        """SIGKILL the agent and everything the node runs at once, as if its host died; what
        was killed. ``store=False`` spares the detached store member (a test that wants the
        store to keep its quorum)."""
        victims = self.servers()
        if not store:
            victims.pop(self.store_label, None)
        if self.proc is not None and self.proc.pid is not None:
            victims = {"agent": self.proc.pid, **victims}
            self.proc.kill()
        for pid in victims.values():
            kill_tree(pid)
        return victims

    def cleanup(self, timeout: float = 60.0) -> None:
        """Stop the agent (SIGTERM, SIGKILL after ``timeout``), then whatever it left
        running, by pid; every server is tried even when one will not die."""
        if self.proc is not None:
            self.proc.stop(signal.SIGTERM, timeout=timeout)
        for pid in self.servers().values():
            with contextlib.suppress(TimeoutError):
                kill_tree(pid)
