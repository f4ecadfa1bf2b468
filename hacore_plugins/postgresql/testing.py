"""PostgreSQL nodes on loopback for the replication contract suite.

Each node gets a free port and a data directory under one root that the ``postgres`` user
may enter (pytest's own temporary directories are ``0700 root``; the plugin runs the server
as ``postgres`` when started as root). Servers are small and run without fsync: nothing here
has to survive an operating-system crash. :meth:`PostgresHarness.stop` stops every server a
node of the harness started, by the pid in its ``postmaster.pid``, whatever the backend did.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

from hacore import ReplicationBackend, ReplicationSource
from hacore.testing.family_harness import ReplicationHarness
from hacore.testing.procs import free_port, kill_with_children, pid_alive, wait_for
from hacore_plugins.postgresql.backend import PostgresReplication
from hacore_plugins.postgresql.settings import default_bin_dir

HOST = "127.0.0.1"
#: small servers, as a busy two-core machine runs several at once
TEST_PARAMETERS: dict[str, Any] = {
    "shared_buffers": "16MB",
    "max_connections": 30,
    "fsync": "off",
}


class PostgresHarness(ReplicationHarness):
    backend_name = "postgresql"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.root: Path | None = None
        self.made: list[PostgresReplication] = []
        self._serial = itertools.count()

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return None if default_bin_dir() is not None else "no PostgreSQL binaries installed"

    def start(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="hacore-pg-contract-"))
        self.root.chmod(0o755)

    def make_backend(self, node_name: str) -> ReplicationBackend:
        assert self.root is not None, "start() the harness first"
        node = PostgresReplication(
            {"port": free_port(HOST), "parameters": TEST_PARAMETERS},
            node_name=node_name,
            host=HOST,
            data_dir=self.root / f"{node_name}-{next(self._serial)}",
        )
        self.made.append(node)
        return node

    def source(self, backend: ReplicationBackend, password: str) -> ReplicationSource:
        assert isinstance(backend, PostgresReplication)
        host, port = backend.address()
        return ReplicationSource(
            backend.node_name, host, port, backend.config.replication_user, password
        )

    def stop(self) -> None:
        while self.made:
            _stop_by_pid(self.made.pop())
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None


def _stop_by_pid(node: PostgresReplication) -> None:
    try:
        first = (node.layout.pgdata / "postmaster.pid").read_text().split("\n", 1)[0]
    except OSError:
        return
    if not first.strip().isdigit() or not pid_alive(int(first)):
        return
    pid = int(first)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
    try:
        wait_for(lambda: not pid_alive(pid), 30, what=f"{node.node_name} to stop")
    except TimeoutError:
        kill_with_children(pid)
