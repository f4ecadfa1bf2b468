"""A clone straight into an empty data directory, and what a later start makes of it.

The copy itself is tested against real servers (tests/integration/test_postgresql.py); here
only the marker's rule: an unfinished copy whose cloner is gone is removed, one whose cloner
still runs is left alone, and the written-back copy's files are synced.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hacore_plugins.postgresql import clone, writeback
from hacore_plugins.postgresql.layout import Layout


def _half_copy(tmp_path: Path) -> Layout:
    layout = Layout(tmp_path)
    (layout.pgdata / "base").mkdir(parents=True)
    (layout.pgdata / "PG_VERSION").write_text("15\n")
    (layout.pgdata / "base" / "1234").write_bytes(b"\0" * 8192)
    return layout


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_the_copy_of_a_cloner_that_is_gone_is_removed(tmp_path: Path) -> None:
    layout = _half_copy(tmp_path)
    layout.cloning.write_text(json.dumps({"pid": _dead_pid(), "started": 1}))
    clone.recover_interrupted(layout)
    assert not layout.pgdata.exists() and not layout.cloning.exists()


def test_a_reused_pid_does_not_keep_an_unfinished_copy(tmp_path: Path) -> None:
    """The pid is this process's, the start time is not: another process had the pid."""
    layout = _half_copy(tmp_path)
    layout.cloning.write_text(json.dumps({"pid": os.getpid(), "started": 1}))
    clone.recover_interrupted(layout)
    assert not layout.pgdata.exists() and not layout.cloning.exists()


@pytest.mark.parametrize("text", ["", "{", "null", '{"pid": "x"}'])
def test_an_unreadable_marker_means_an_unfinished_copy(tmp_path: Path, text: str) -> None:
    layout = _half_copy(tmp_path)
    layout.cloning.write_text(text)
    clone.recover_interrupted(layout)
    assert not layout.pgdata.exists() and not layout.cloning.exists()


def test_a_copy_under_way_is_left_alone(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    with clone.straight_in(layout) as pgdata:
        (pgdata / "base").mkdir(parents=True)
        (pgdata / "PG_VERSION").write_text("15\n")
        clone.recover_interrupted(layout)  # the loop looks while the copy runs
        assert (pgdata / "PG_VERSION").exists() and layout.cloning.exists()
    assert not layout.cloning.exists() and (layout.pgdata / "PG_VERSION").exists()


def test_a_failed_copy_leaves_nothing(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    with pytest.raises(RuntimeError), clone.straight_in(layout) as pgdata:
        (pgdata / "base").mkdir(parents=True)
        raise RuntimeError("cut")
    assert not layout.pgdata.exists() and not layout.cloning.exists()


def test_a_finished_database_without_marker_is_kept(tmp_path: Path) -> None:
    layout = _half_copy(tmp_path)
    clone.recover_interrupted(layout)
    assert (layout.pgdata / "PG_VERSION").exists()


def test_the_range_sync_is_available(tmp_path: Path) -> None:
    """sync_file_range is reached through ctypes; a wrong binding would quietly leave the
    whole copy to the final fsync, the flood this module exists to avoid."""
    path = tmp_path / "f"
    path.write_bytes(os.urandom(3 * 4096))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert writeback.write_range(fd, 0, 3 * 4096)
    finally:
        os.close(fd)


def test_writeback_syncs_every_file_and_keeps_off_symlinks(tmp_path: Path) -> None:
    root = tmp_path / "copy"
    (root / "pg_wal").mkdir(parents=True)
    (root / "base").mkdir()
    (root / "base" / "1").write_bytes(os.urandom(3 * writeback.CHUNK // 2))
    (root / "pg_wal" / "seg").write_bytes(os.urandom(1000))
    elsewhere = tmp_path / "tablespace"
    elsewhere.mkdir()
    (elsewhere / "other").write_bytes(b"x")
    (root / "pg_tblspc").mkdir()
    (root / "pg_tblspc" / "16384").symlink_to(elsewhere)
    back = writeback.Writeback(root, interval=0.01)
    back.start()
    back.finish()
    sizes = back._written  # what was written back, file by file
    assert sizes == {
        str(root / "base" / "1"): 3 * writeback.CHUNK // 2,
        str(root / "pg_wal" / "seg"): 1000,
    }
