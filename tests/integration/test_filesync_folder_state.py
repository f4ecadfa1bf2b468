"""File sync state per directory (issue 13.8, ``hacore_filesync_folder_*`` metrics), with real
rsync daemons on loopback ports: a change in one directory shows on that directory alone."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from hacore.backends.filesync import FolderSync
from hacore.testing.procs import free_port
from hacore_plugins.rsync import RsyncFilesync

pytestmark = pytest.mark.skipif(shutil.which("rsync") is None, reason="no rsync binary on PATH")


def make(base: Path, name: str) -> RsyncFilesync:
    directories = [base / name / "config", base / name / "uploads"]
    for directory in directories:
        directory.mkdir(parents=True)
    return RsyncFilesync(
        {"port": free_port(), "password": "folder-secret", "interval": 3600},
        node_name=name,
        host="127.0.0.1",
        data_dir=base / name / "data",
        directories=directories,
    )


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[RsyncFilesync, RsyncFilesync]]:
    a, b = make(tmp_path, "a"), make(tmp_path, "b")
    try:
        for node in (a, b):
            node.start()
        identities = {"a": a.identity(), "b": b.identity()}
        for node in (a, b):
            node.set_peers(identities)
        a.become_source()
        b.become_mirror("a")
        b.sync_now()
        yield a, b
    finally:
        for node in (a, b):
            node.stop()


def test_each_directory_reports_its_own_state(
    pair: tuple[RsyncFilesync, RsyncFilesync], tmp_path: Path
) -> None:
    a, b = pair
    both = (FolderSync("hacore-config", True), FolderSync("hacore-uploads", True))
    assert a.state().folders == both
    assert b.state().folders == both
    (tmp_path / "a" / "uploads" / "big").write_bytes(b"x" * 50_000)
    state = b.state()
    assert not state.in_sync
    assert state.folders == (
        FolderSync("hacore-config", True),
        FolderSync("hacore-uploads", False, 50_000),
    )
    b.sync_now()
    assert b.state().folders == both
