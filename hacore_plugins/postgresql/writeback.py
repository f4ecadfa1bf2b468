"""Writing a fresh copy to disk a little at a time, while it is made.

``pg_basebackup`` writes into the page cache and fsyncs the whole data directory at its end.
On a machine with memory to spare a 1 GiB copy is then one 1 GiB flush, and every other
writer of that disk waits behind it for seconds: the node's own store member above all, whose
fdatasync a two-member store waits for on every commit, long enough for the active to miss
its lease renewal. So the clone runs ``pg_basebackup --no-sync`` and :class:`Writeback` does
the writing instead: while the copy runs, what each file holds so far, in chunks with at most
two on their way to the disk (``sync_file_range``), so another writer waits for two at most;
at the end every file and directory is fsynced, as ``pg_basebackup`` would have, and finds
little left to write.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: bytes written back at once: small enough that another writer of the disk waits for one
#: chunk at most, large enough that the disk writes sequentially
CHUNK = 8 * 2**20
#: seconds between two looks at what the copy has written
INTERVAL = 0.2
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


def _files(root: Path) -> Iterator[tuple[str, int]]:
    """Every regular file under ``root`` (symlinks not followed), with its size."""
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
                    yield entry.path, entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue


class Writeback:
    """Writes back what a copy into ``root`` has written so far, every :data:`INTERVAL`."""

    def __init__(self, root: Path, *, chunk: int = CHUNK, interval: float = INTERVAL) -> None:
        self.root = root
        self.chunk = chunk
        self.interval = interval
        self._written: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="clone-writeback", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._write_back(whole=False)
            except OSError as err:  # the copy failed and is being removed: nothing to do
                log.debug("writeback of %s: %s", self.root, err)

    def _write_back(self, *, whole: bool) -> None:
        """Every file's bytes not yet written back: only whole chunks while the copy runs
        (the last one may still grow), everything at the end."""
        for path, size in _files(self.root):
            if self._stop.is_set() and not whole:
                return
            done = self._written.get(path, 0)
            if size - done < (1 if whole else self.chunk):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                # two chunks on their way at most: one is written while the other is
                # waited for, and a writer of the disk waits behind two chunks at worst
                previous = None
                while size - done >= (1 if whole else self.chunk):
                    length = min(self.chunk, size - done)
                    if not write_range(fd, done, length, wait=False):
                        done = size
                        break
                    if previous is not None:
                        write_range(fd, *previous)
                    previous = (done, length)
                    done += length
                if previous is not None:
                    write_range(fd, *previous)
            finally:
                os.close(fd)
            self._written[path] = done

    def finish(self) -> None:
        """After the copy: the rest written back, then every file and directory fsynced
        (files first, each directory after what it holds), so the copy survives a crash."""
        self.stop()
        self._write_back(whole=True)
        for path, _ in _files(self.root):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        directories = [str(self.root)]
        for dirpath, dirnames, _ in os.walk(self.root):
            directories += [os.path.join(dirpath, d) for d in dirnames]
        for directory in reversed(directories):
            if os.path.islink(directory):
                continue
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
