"""``hacore.atomic_files.write_atomic``: the one way hacore replaces a file (issue 12 point 5).

What a reader or a crash may see matters more than the end result: the mode and owner are
checked at the moment each byte is written (``os.write`` watched), and a failure must leave
the old file and no temporary file behind.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from hacore import atomic_files
from hacore.atomic_files import write_atomic


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """The most open umask: any mode the function does not set itself would show."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _left(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


class _Writes:
    """Every ``os.write`` of a test, with the mode and owner its file had at that moment."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: OSError | None = None) -> None:
        self.seen: list[tuple[int, int, int, bytes]] = []
        self.fail = fail
        self._real = os.write
        monkeypatch.setattr(os, "write", self)

    def __call__(self, fd: int, data: bytes | memoryview) -> int:
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode):
            self.seen.append((stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid, bytes(data)))
            if self.fail is not None:
                raise self.fail
        return self._real(fd, data)


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o400])
def test_the_mode_is_set_before_the_first_byte_whatever_the_umask(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask_zero: None, mode: int
) -> None:
    target = tmp_path / "secret.conf"
    writes = _Writes(monkeypatch)
    write_atomic(target, "api key\n", mode)
    assert writes.seen, "nothing was written through os.write"
    assert {seen for seen, *_ in writes.seen} == {mode}
    assert target.read_text() == "api key\n"
    assert _mode(target) == mode


def test_an_explicit_mode_is_exact_a_strict_umask_does_not_narrow_it(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_atomic(tmp_path / "ca.crt", b"cert", 0o644)
        write_atomic(tmp_path / "default", b"x")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "ca.crt") == 0o644
    # no mode: what open() would have made (0666 less the umask)
    assert _mode(tmp_path / "default") == 0o600


def test_no_mode_gives_what_open_gives(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        write_atomic(tmp_path / "state.json", "{}")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "state.json") == 0o644


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root")
def test_the_owner_is_set_before_the_first_byte(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = (65534, 65534)
    target = tmp_path / "postgresql.auto.conf"
    writes = _Writes(monkeypatch)
    write_atomic(target, b"primary_conninfo = ''\n", 0o600, owner)
    assert writes.seen
    assert {(mode, uid, gid) for mode, uid, gid, _ in writes.seen} == {(0o600, *owner)}
    info = target.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (*owner, 0o600)


def test_the_file_is_replaced_by_a_rename_never_rewritten_in_place(tmp_path: Path) -> None:
    target = tmp_path / "x.key"
    target.write_bytes(b"old")
    target.chmod(0o666)
    inode = target.stat().st_ino
    assert write_atomic(target, "néw", 0o600) == target
    assert target.read_text(encoding="utf-8") == "néw"
    assert _mode(target) == 0o600
    assert target.stat().st_ino != inode
    assert _left(tmp_path) == ["x.key"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "cluster.json"
    target.write_text("old\n")
    _Writes(monkeypatch, fail=OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(OSError) as raised:
        write_atomic(target, "new\n", 0o600)
    assert raised.value.errno == errno.ENOSPC
    assert target.read_text() == "old\n"
    assert _left(tmp_path) == ["cluster.json"]


def test_a_failed_rename_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "inside").write_text("kept")
    with pytest.raises(OSError):
        write_atomic(target, "new", 0o600)
    assert _left(tmp_path) == ["taken"]
    assert (target / "inside").read_text() == "kept"


def test_a_missing_directory_is_an_oserror_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "absent" / "file", "x", 0o600)
    assert _left(tmp_path) == []


def test_durable_writes_sync_the_file_and_the_directory_and_others_do_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[bool] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    write_atomic(tmp_path / "durable", "x", 0o600)
    assert synced == [False, True]  # the file, then its directory after the rename
    synced.clear()
    write_atomic(tmp_path / "pid", "1\n", durable=False)
    assert synced == []


def test_the_temporary_name_is_hidden_unique_and_recognisable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``.<name>.<random>.tmp``: what uninstall recognises as a crash's leftover, and never
    shared by two writers of one file."""
    names: list[str] = []
    real = atomic_files._create

    def create(target: Path, mode: int) -> tuple[int, Path]:
        fd, tmp = real(target, mode)
        names.append(tmp.name)
        return fd, tmp

    monkeypatch.setattr(atomic_files, "_create", create)
    write_atomic(tmp_path / "cluster.json", "1", 0o600)
    write_atomic(tmp_path / "cluster.json", "2", 0o600)
    assert len(set(names)) == 2
    assert all(n.startswith(".cluster.json.") and n.endswith(".tmp") for n in names)
