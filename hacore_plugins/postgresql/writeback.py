"""Writing a fresh copy to disk a little at a time, never in one burst.

``pg_basebackup`` writes into the page cache and fsyncs the whole data directory at its end.
On a machine with memory to spare a 1 GiB copy is then one 1 GiB flush, and every other
writer of that disk waits behind it for seconds: the node's own store member above all, whose
fdatasync a two-member store waits for on every commit, long enough for the active to miss
its lease renewal. So the clone runs ``pg_basebackup --no-sync`` and :class:`Writeback` does
the writing instead, in chunks with at most two on their way to the disk
(``sync_file_range``), so another writer waits for two chunks at most.

Writing back while the copy runs competes with the copy for the disk and, on a small
machine, the CPU; so the copy's unwritten bytes are left in the page cache up to a budget: a
share of what the kernel lets dirty pages grow to before its own flusher writes them
(``vm.dirty_background_*``, which it would do in bulk), capped (:data:`MAX_BUDGET`) as what is
left unwritten at the end is written after the copy. A copy within the budget runs at the
speed of a plain copy and is written back, chunk by chunk, once complete; a larger one is
written back while it runs whenever its unwritten part passes the budget, and so is any copy
while the machine's dirty pages (other writers' included) pass it. At the end every file and
directory is fsynced, as ``pg_basebackup`` would have, and finds nothing left to write.
"""

from __future__ import annotations

import collections
import concurrent.futures
import ctypes
import ctypes.util
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: bytes written back at once: small enough that another writer of the disk waits a fraction
#: of a second at most behind two, large enough to keep the disk's queue busy
CHUNK = 16 * 2**20
#: seconds between two looks at what the copy has written
INTERVAL = 0.2
#: the share of the kernel's background dirty limit the copy's unwritten bytes may take: the
#: rest is left to every other writer of the machine before its flusher starts
SHARE = 0.5
#: seconds between two looks at the files while the copy's reports keep within the budget
LOOK_EVERY = 5.0
#: seconds after its last write a file counts as complete while the copy runs
SETTLED = 2.0
#: threads that fsync the copy's files at its end
SYNC_THREADS = 8
#: the most the copy leaves unwritten however much memory the machine has: what is left at its
#: end is written after it, and measured on a virtio disk (1 GiB copies), leaving the whole
#: copy to its end saved no time (the copy ran no faster) but added ~0.6 s after it and
#: another writer's fdatasync waited up to ~0.45 s (vs ~0.1 s written back as it came)
MAX_BUDGET = 128 * 2**20
#: the budget when the kernel's limits cannot be read
FALLBACK_BUDGET = MAX_BUDGET
_WAIT_BEFORE, _WRITE, _WAIT_AFTER = 1, 2, 4


def _sync_file_range() -> Any:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        func = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    func.restype = ctypes.c_int
    return func


_RANGE = _sync_file_range()


def write_range(fd: int, offset: int, length: int, *, wait: bool = True) -> bool:
    """Start writing ``length`` bytes of the file from ``offset`` to disk and, with
    ``wait``, wait for them; False when the system cannot (the final fsync writes them)."""
    if _RANGE is None:
        return False
    flags = _WAIT_BEFORE | _WRITE | _WAIT_AFTER if wait else _WRITE
    return int(_RANGE(fd, offset, length, flags)) == 0


def dirty_budget(proc: Path = Path("/proc")) -> int:
    """The bytes a copy may leave unwritten: :data:`SHARE` of the dirty pages the kernel
    allows before its flusher writes in the background (``dirty_background_bytes``, else
    ``dirty_background_ratio`` percent of the memory dirty pages may take: free memory and
    the page cache, as the kernel counts it), at most :data:`MAX_BUDGET`."""
    try:
        vm = proc / "sys" / "vm"
        limit = int((vm / "dirty_background_bytes").read_text())
        if not limit:
            ratio = int((vm / "dirty_background_ratio").read_text())
            fields = {}
            for line in (proc / "meminfo").read_text().splitlines():
                name, _, rest = line.partition(":")
                fields[name] = int(rest.split()[0]) * 1024
            dirtyable = fields["MemFree"] + fields["Active(file)"] + fields["Inactive(file)"]
            limit = dirtyable * ratio // 100
    except (OSError, ValueError, KeyError, IndexError):
        return FALLBACK_BUDGET
    return min(int(limit * SHARE), MAX_BUDGET) if limit > 0 else FALLBACK_BUDGET


def machine_dirty(meminfo: Path = Path("/proc/meminfo")) -> int:
    """Bytes of dirty pages on the whole machine, not yet on their way to the disk: the
    kernel's flusher starts at its background limit whoever wrote them."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("Dirty:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _files(root: Path) -> Iterator[tuple[str, int, float]]:
    """Every regular file under ``root`` (symlinks not followed), with its size and the time
    it was last written."""
    stack = [str(root)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    found = entry.stat(follow_symlinks=False)
                    yield entry.path, found.st_size, found.st_mtime
            except OSError:
                continue


class Writeback:
    """Writes back what a copy into ``root`` has written so far, every :data:`INTERVAL`,
    once its unwritten bytes pass ``budget`` (default :func:`dirty_budget`)."""

    def __init__(
        self,
        root: Path,
        *,
        chunk: int = CHUNK,
        interval: float = INTERVAL,
        budget: int | None = None,
        dirty: Callable[[], int] = machine_dirty,
    ) -> None:
        self.root = root
        self.chunk = chunk
        self.interval = interval
        self.budget = dirty_budget() if budget is None else budget
        self.dirty = dirty
        self._written: dict[str, int] = {}
        self._copied: int | None = None
        self._looked = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clone-writeback", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def copied(self, done: int) -> None:
        """What the copy reports it has written so far: until that passes the budget, the
        files are looked at only every :data:`LOOK_EVERY` seconds, not every interval (a
        look stats every file: a database of many thousand relations makes it costly)."""
        self._copied = done

    def _due(self) -> bool:
        """Time to look at the files: without reports every interval; with them once the
        reported bytes not yet written back pass the budget, and every :data:`LOOK_EVERY`
        seconds (the reports leave out the WAL streamed beside the copy)."""
        if self._copied is None or time.monotonic() - self._looked >= LOOK_EVERY:
            return True
        return self._copied - sum(self._written.values()) >= self.budget or self._crowded()

    def _pending(self, files: list[tuple[str, int, float]]) -> int:
        return sum(max(0, size - self._written.get(path, 0)) for path, size, _ in files)

    def _crowded(self) -> bool:
        """The machine's dirty pages (others' too) pass the budget: the copy's own are
        written back now, before the kernel's flusher writes them in bulk."""
        return self.dirty() >= self.budget

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not self._due():
                continue
            self._looked = time.monotonic()
            try:
                self._write_back(whole=False)
            except OSError as err:  # the copy failed and is being removed: nothing to do
                log.debug("writeback of %s: %s", self.root, err)

    def _write_back(self, *, whole: bool) -> None:
        """Every file's bytes not yet written back: while the copy runs only once they pass
        the budget, and only whole chunks (the last one may still grow); everything at the
        end."""
        files = list(_files(self.root))
        if not whole and self._pending(files) < self.budget and not self._crowded():
            return
        # chunks on their way to the disk, oldest first, across files: at most two chunks'
        # bytes, so a writer of the disk waits behind two at worst, and small files are
        # written as one stream, not one at a time (with a bound on the files kept open)
        flight = _Flight(2 * self.chunk)
        try:
            now = time.time()
            for path, size, written in files:
                if self._stop.is_set() and not whole:
                    return
                done = self._written.get(path, 0)
                # a file the copy has left (unwritten for SETTLED seconds) is written back
                # whole: a copy of many small files would otherwise leave them all to its end
                step = 1 if whole or now - written >= SETTLED else self.chunk
                if size - done < step:
                    continue
                fd = flight.open(path)
                while size - done >= step and (whole or not self._stop.is_set()):
                    length = min(self.chunk, size - done)
                    if not flight.start(fd, done, length):
                        done = size  # no range sync here: the final fsync writes it
                        break
                    done += length
                flight.close(fd)
                self._written[path] = done
            flight.land_all()
        finally:
            flight.abandon()

    def finish(self) -> None:
        """After the copy: the rest written back, then every file and directory fsynced
        (files first, then the directories), so the copy survives a crash.

        The data is on the disk by then, but each fsync still waits for the disk's cache to
        be flushed: one after the other, a thousand files cost a fifth of a second. Done by
        several threads at once, the flushes they wait for are shared."""
        self.stop()
        self._write_back(whole=True)
        directories = [str(self.root)]
        for dirpath, dirnames, _ in os.walk(self.root):
            directories += [os.path.join(dirpath, d) for d in dirnames]
        with concurrent.futures.ThreadPoolExecutor(SYNC_THREADS, "clone-fsync") as pool:
            for _ in pool.map(_fsync, [path for path, _, _ in _files(self.root)]):
                pass
            real = [d for d in directories if not os.path.islink(d)]
            for _ in pool.map(functools.partial(_fsync, directory=True), real):
                pass


class _Flight:
    """Ranges on their way to the disk, oldest first: each new one waits for the oldest
    until the bytes on their way, its own included, fit ``most``."""

    #: files kept open for their ranges on their way
    FILES = 64

    def __init__(self, most: int) -> None:
        self.most = most
        self.bytes = 0
        self.ranges: collections.deque[tuple[int, int, int]] = collections.deque()
        self.open_fds: dict[int, bool] = {}  # fd: its file is done (close once it lands)

    def open(self, path: str) -> int:
        while self.ranges and len(self.open_fds) >= self.FILES:
            self._land()
        fd = os.open(path, os.O_RDONLY)
        self.open_fds[fd] = False
        return fd

    def start(self, fd: int, offset: int, length: int) -> bool:
        while self.ranges and self.bytes + length > self.most:
            self._land()
        if not write_range(fd, offset, length, wait=False):
            return False
        self.ranges.append((fd, offset, length))
        self.bytes += length
        return True

    def close(self, fd: int) -> None:
        """The file has no more ranges to start: closed once those on their way landed."""
        if any(r[0] == fd for r in self.ranges):
            self.open_fds[fd] = True
        else:
            del self.open_fds[fd]
            os.close(fd)

    def _land(self) -> None:
        fd, offset, length = self.ranges.popleft()
        write_range(fd, offset, length)
        self.bytes -= length
        if self.open_fds.get(fd) and not any(r[0] == fd for r in self.ranges):
            del self.open_fds[fd]
            os.close(fd)

    def land_all(self) -> None:
        while self.ranges:
            self._land()

    def abandon(self) -> None:
        """Close every file still open (the ranges on their way go on without a wait)."""
        self.ranges.clear()
        for fd in self.open_fds:
            os.close(fd)
        self.open_fds.clear()


def _fsync(path: str, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
