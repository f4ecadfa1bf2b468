"""One node of the cluster demo: its configuration, its agent service, and what it runs.

Every node is an agent service (``hacore agent run``) that runs, on loopback ports under one
work directory, a managed store member, PostgreSQL, Syncthing for the sample manager's
resources directory and, while the node is active, the manager's API and worker as
``process`` services. The node's layout, its processes (found by their pid files, so a crash
kills exactly what the node runs and the cleanup stops it by pid) and the writing of its
configuration are the local-cluster scaffold's (:mod:`hacore.testing.local_cluster`); this
module adds what only the demo needs.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs
import httpx

from hacore.errors import HacoreError
from hacore.testing.local_cluster import HOST, LocalNode, managed_store_ports
from hacore.testing.procs import free_port

#: the database the sample manager keeps its workflows in (created by ``cluster start``)
MANAGER_DB = "manager"
SERVICES = ("api", "worker")
STEP_SECONDS = 0.4

T = TypeVar("T")


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


def ca_file(data_dir: Path) -> Path | None:
    """The cluster CA a TLS cluster gives every node (``cluster start``/``join`` write it)."""
    path = data_dir / "pki" / "node" / "ca.crt"
    return path if path.is_file() else None


@attrs.define
class DemoNode(LocalNode):
    manager_port: int = attrs.field(factory=free_port, kw_only=True)
    sync_ports: tuple[int, int] = attrs.field(
        factory=lambda: (free_port(), free_port()), kw_only=True
    )
    services: tuple[str, ...] = attrs.field(default=SERVICES, kw_only=True)

    @property
    def resources(self) -> Path:
        """The sample manager's resources directory, mirrored by Syncthing."""
        return self.data_dir / "resources"

    @property
    def manager_url(self) -> str:
        return f"http://{HOST}:{self.manager_port}"

    def write_config(self, **sections: Any) -> dict[str, Any]:
        """The demo node's configuration (the demo passes no ``sections``: they are all here)."""
        self.store = managed_store_ports(self.backend)
        dsn = f"host={self.socket_dir} port={self.pg_port} dbname={MANAGER_DB} user=postgres"
        python = [sys.executable, "-m"]
        self.resources.mkdir(parents=True, exist_ok=True)
        return super().write_config(
            cluster="demo",
            namespace="demo",
            # Only a synchronous standby may take over: no acknowledged row or step is lost.
            failover={"synchronous_mode": "on"},
            replication={
                "database": MANAGER_DB,
                "parameters": {"shared_buffers": "16MB", "max_connections": 30},
            },
            filesync={
                "backend": "syncthing",
                "directories": [str(self.resources)],
                "api_port": self.sync_ports[0],
                "listen_port": self.sync_ports[1],
            },
            services={
                "backend": "process",
                "active_only": list(SERVICES),
                "run_dir": str(self.services_dir),
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
            extra={"plugins": {"settings": {"sample_manager": {"api_url": self.manager_url}}}},
            **sections,
        )  # fmt: skip

    # -- the agent service -------------------------------------------------------------------

    def start_service(self, env: dict[str, str]) -> None:
        self.spawn_service(env)
        self.wait_service()

    def spawn_service(self, env: dict[str, str]) -> None:
        self.spawn_agent(hacore_command(), env=env)

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

    def stop_service(self) -> None:
        """Ask the agent to stop (it stops what it runs); :meth:`cleanup` waits for it."""
        self.stop_agent()

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
