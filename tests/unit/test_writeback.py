"""The clone's writeback: left to the page cache within the budget, never more than two
chunks on their way to the disk, small files written as one stream.

The ranges are written for real (sync_file_range on this machine's disk); only the record of
which ranges were started and waited for is taken by wrapping the real call.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hacore_plugins.postgresql import writeback

CHUNK = 64 * 1024


class Recorder:
    """The real ``write_range``, with the bytes on their way after each call."""

    def __init__(self) -> None:
        self.flight: dict[tuple[int, int, int], int] = {}
        self.most = 0
        self.most_files = 0
        self.started: list[tuple[int, int]] = []
        self.events: list[tuple[str, int]] = []
        self.real = writeback.write_range

    def __call__(self, fd: int, offset: int, length: int, *, wait: bool = True) -> bool:
        key = (fd, offset, length)
        if wait:
            self.flight.pop(key, None)
        else:
            self.flight[key] = length
            self.started.append((offset, length))
        self.events.append(("wait" if wait else "start", length))
        self.most = max(self.most, sum(self.flight.values()))
        self.most_files = max(self.most_files, len({fd for fd, _, _ in self.flight}))
        return self.real(fd, offset, length, wait=wait)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    found = Recorder()
    monkeypatch.setattr(writeback, "write_range", found)
    return found


def _tree(root: Path, big: int, small: int) -> None:
    (root / "base").mkdir(parents=True)
    (root / "base" / "big").write_bytes(os.urandom(big))
    for i in range(small):
        (root / "base" / f"small{i}").write_bytes(os.urandom(8192))


def test_a_copy_within_the_budget_is_written_back_only_at_its_end(
    tmp_path: Path, recorder: Recorder
) -> None:
    root = tmp_path / "copy"
    _tree(root, 5 * CHUNK, 0)
    back = writeback.Writeback(root, chunk=CHUNK, budget=6 * CHUNK, dirty=lambda: 0)
    back._write_back(whole=False)  # a look while the copy runs
    assert recorder.started == [] and back._written == {}
    (root / "base" / "more").write_bytes(os.urandom(2 * CHUNK))  # the copy passes the budget
    back._write_back(whole=False)
    assert back._written == {
        str(root / "base" / "big"): 5 * CHUNK,
        str(root / "base" / "more"): 2 * CHUNK,
    }
    back.finish()
    assert recorder.flight == {}


def test_at_most_two_chunks_are_on_their_way_and_small_files_stream(
    tmp_path: Path, recorder: Recorder
) -> None:
    root = tmp_path / "copy"
    _tree(root, 7 * CHUNK + 100, 5)
    back = writeback.Writeback(root, chunk=CHUNK, budget=0)
    back.finish()
    assert recorder.most <= 2 * CHUNK
    assert recorder.flight == {}  # every range started was waited for
    assert sum(length for _, length in recorder.started) == 7 * CHUNK + 100 + 5 * 8192
    # 5 small files of 8 KiB fit beside a chunk: they are started one after the other, not
    # each waited for before the next one starts
    last = max(i for i, event in enumerate(recorder.events) if event == ("start", 8192))
    assert ("wait", 8192) not in recorder.events[:last]


def test_the_budget_is_a_share_of_the_background_dirty_limit(tmp_path: Path) -> None:
    vm = tmp_path / "sys" / "vm"
    vm.mkdir(parents=True)
    (vm / "dirty_background_bytes").write_text("0\n")
    (vm / "dirty_background_ratio").write_text("10\n")
    (tmp_path / "meminfo").write_text(
        "MemTotal:        2000000 kB\n"
        "MemFree:          600000 kB\n"
        "Active(file):     200000 kB\n"
        "Inactive(file):   200000 kB\n"
    )
    # a small machine: 10% of 1 GB dirtyable, half of that
    assert writeback.dirty_budget(tmp_path) == int(1_000_000 * 1024 // 10 * writeback.SHARE)
    (vm / "dirty_background_bytes").write_text("67108864\n")
    assert writeback.dirty_budget(tmp_path) == int(67108864 * writeback.SHARE)
    (vm / "dirty_background_bytes").write_text("0\n")
    (tmp_path / "meminfo").write_text(
        "MemFree:        60000000 kB\nActive(file):  1 kB\nInactive(file):  1 kB\n"
    )
    assert writeback.dirty_budget(tmp_path) == writeback.MAX_BUDGET  # a large one: capped
    (vm / "dirty_background_bytes").unlink()
    assert writeback.dirty_budget(tmp_path) == writeback.FALLBACK_BUDGET


def test_the_copy_s_reports_spare_the_looks_at_its_files(tmp_path: Path) -> None:
    """A look stats every file of the copy: while the copy reports fewer bytes than the
    budget, the files are looked at only every LOOK_EVERY seconds."""
    machine = [0]
    back = writeback.Writeback(tmp_path, chunk=CHUNK, budget=10 * CHUNK, dirty=lambda: machine[0])
    assert back._due()  # no report: every interval
    back._looked = time.monotonic()
    back.copied(9 * CHUNK)
    assert not back._due()
    back.copied(10 * CHUNK)
    assert back._due()
    back._written["f"] = 5 * CHUNK  # written back: the budget applies to the rest
    assert not back._due()
    machine[0] = 10 * CHUNK  # other writers filled the page cache
    assert back._due()
    machine[0] = 0
    back._looked -= writeback.LOOK_EVERY  # the WAL beside the copy is not in its reports
    assert back._due()


def test_small_files_on_their_way_are_kept_open_within_a_bound(
    tmp_path: Path, recorder: Recorder
) -> None:
    root = tmp_path / "copy"
    _tree(root, 0, 100)
    before = len(os.listdir("/proc/self/fd"))
    writeback.Writeback(root, chunk=4 * 2**20, budget=0).finish()
    assert 10 < recorder.most_files <= writeback._Flight.FILES
    assert recorder.flight == {}
    assert len(os.listdir("/proc/self/fd")) == before  # every file closed


def test_a_machine_full_of_dirty_pages_has_the_copy_written_back_at_once(
    tmp_path: Path, recorder: Recorder
) -> None:
    """Other writers' dirty pages count: past the budget, the kernel's flusher would soon
    write the copy in bulk, so the copy's whole chunks are written back now."""
    root = tmp_path / "copy"
    _tree(root, 3 * CHUNK, 0)
    machine = [0]
    back = writeback.Writeback(root, chunk=CHUNK, budget=100 * CHUNK, dirty=lambda: machine[0])
    back._write_back(whole=False)
    assert back._written == {}
    machine[0] = 100 * CHUNK
    back._write_back(whole=False)
    assert back._written == {str(root / "base" / "big"): 3 * CHUNK}


def test_the_machine_s_dirty_pages_are_read(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemFree:  6000000 kB\nDirty:       1234 kB\nWriteback:    8 kB\n")
    assert writeback.machine_dirty(meminfo) == 1234 * 1024
    assert writeback.machine_dirty(tmp_path / "missing") == 0  # the final fsync still runs


def test_a_file_the_copy_has_left_is_written_back_whole_while_it_runs(
    tmp_path: Path, recorder: Recorder
) -> None:
    """Only whole chunks of a file the copy may still write; all of one it left a while ago
    (a copy of many small files would otherwise leave them all to its end)."""
    root = tmp_path / "copy"
    _tree(root, 0, 2)
    left = root / "base" / "small0"
    past = time.time() - 10.0
    os.utime(left, (past, past))
    back = writeback.Writeback(root, chunk=CHUNK, budget=0, dirty=lambda: 0)
    back._write_back(whole=False)
    assert back._written == {str(left): 8192}
