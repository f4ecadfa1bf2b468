"""Syncthing nodes on loopback for the filesync contract suite.

Each node runs its own Syncthing (a free listen port, its home under the harness's work
directory, the API on a unix socket), with a short rescan interval so that a change the file
watcher missed still travels within seconds. :meth:`SyncthingHarness.stop` stops every
instance a node started, by the pid file, whatever the backend did.
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
from hacore_plugins.syncthing.backend import SyncthingFilesync

HOST = "127.0.0.1"


class SyncthingHarness(FilesyncHarness):
    backend_name = "syncthing"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.made: list[SyncthingFilesync] = []

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return None if shutil.which("syncthing") else "no syncthing binary on PATH"

    def make_backend(self, node_name: str, directories: Sequence[Path]) -> FilesyncBackend:
        backend = SyncthingFilesync(
            {"listen_port": free_port(HOST), "rescan_interval": 5},
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
            if backend.process.running():
                backend.process.stop(signal.SIGKILL, timeout=10)
