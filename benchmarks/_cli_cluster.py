"""A loopback cluster driven through the real CLI, as an operator forms and runs one: the part
the benchmarks that measure operations (``join.py``, ``maintenance.py``) share.

Each node is an agent service (``hacore agent run``) with its own managed etcd member; every
command is ``hacore ...`` in a subprocess with the run's CLI profile, so what is timed includes
what a user waits for.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs

from hacore.testing.local_cluster import LocalNode, managed_store_ports
from hacore.testing.procs import wait_for

HACORE = [str(Path(sys.executable).parent / "hacore")]
#: seconds any one CLI command or wait may take
WAIT = 300.0


@attrs.define
class BenchNode(LocalNode):
    def __attrs_post_init__(self) -> None:
        self.store = managed_store_ports(self.backend)


class Failed(Exception):
    """A step could not be done; the report says which and why."""


def socket_dsn(node: LocalNode) -> str:
    """The node's database as root over its Unix socket (peer authentication)."""
    return f"host={node.socket_dir} port={node.pg_port} user=postgres dbname=postgres"


def probe(node: LocalNode) -> int | None:
    """The HTTP status of the node's ``/status``; None when its agent does not answer."""
    import httpx

    try:
        return httpx.get(f"http://{node.address}/status", timeout=3.0).status_code
    except httpx.HTTPError:
        return None


class CliCluster:
    """The nodes under ``root``, the run's CLI profile and the commands run with it."""

    def __init__(
        self, root: Path, log: Callable[[str], None], prefix: str, wait: float = WAIT
    ) -> None:
        self.root = root
        self.log = log
        #: seconds a command or a wait may take
        self.wait = wait
        self.profile = root / "profile.json"
        self.namespace = f"{prefix}-{secrets.token_hex(4)}"
        self.ca_fingerprint = ""

    def cli(
        self, *args: str, timeout: float | None = None, hacore_cli: Sequence[str] = HACORE
    ) -> str:
        """``hacore ARGS`` as an operator runs it, with the run's profile; its stdout."""
        timeout = self.wait if timeout is None else timeout
        env = {**os.environ, "HACORE_PROFILE": str(self.profile)}
        done = subprocess.run(
            [*hacore_cli, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout + 30,
            check=False,
        )
        if done.returncode != 0:
            raise Failed(
                f"hacore {' '.join(args)} exited {done.returncode}: "
                f"{(done.stderr or done.stdout).strip()[-2000:]}"
            )
        return done.stdout

    def cli_json(self, *args: str, timeout: float | None = None) -> Any:
        return json.loads(self.cli(*args, "-o", "json", timeout=timeout))

    def start_agent(self, node: BenchNode, hacore_cli: Sequence[str] = HACORE) -> None:
        """The node's agent service, once its API answers."""
        node.spawn_agent(hacore_cli)
        wait_for(
            lambda: probe(node) is not None,
            self.wait,
            interval=0.05,
            what=f"the agent service of {node.name} ({node.log_path})",
        )

    def start_cluster(self, first: BenchNode) -> None:
        """``cluster start`` on ``first``; keeps the CA fingerprint joiners need."""
        started = self.cli_json("cluster", "start", "-c", str(first.config_path))
        self.ca_fingerprint = str(started["ca_fingerprint"])
