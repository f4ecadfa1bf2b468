"""rsync nodes on loopback for the filesync contract suite.

Each node runs its own rsync daemon on a free port (plain rsync, no TLS: the TLS wrapping
has its own integration tests), shares one password with the others, and pulls every half
second while it mirrors. :meth:`RsyncHarness.stop` stops every daemon a node started, by the
pid file, whatever the backend did.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
from collections.abc import Sequence
from pathlib import Path

from hacore import FilesyncBackend
from hacore.testing.family_harness import FilesyncHarness
from hacore.testing.procs import free_port
from hacore_plugins.rsync.backend import RsyncFilesync

HOST = "127.0.0.1"
PASSWORD = "contract-secret"


class RsyncHarness(FilesyncHarness):
    backend_name = "rsync"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.made: list[RsyncFilesync] = []

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return None if shutil.which("rsync") else "no rsync binary on PATH"

    def make_backend(self, node_name: str, directories: Sequence[Path]) -> FilesyncBackend:
        backend = RsyncFilesync(
            {"port": free_port(HOST), "password": PASSWORD, "interval": 0.5},
            node_name=node_name,
            host=HOST,
            data_dir=self.workdir / node_name / "data",
            directories=directories,
        )
        self.made.append(backend)
        return backend

    def stop(self) -> None:
        while self.made:
            backend = self.made.pop()
            with contextlib.suppress(Exception):  # stopped by pid below regardless
                backend.stop()
            if backend.daemon.running():
                backend.daemon.stop(signal.SIGKILL, timeout=10)
