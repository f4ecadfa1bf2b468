"""A new mirror's first copy: written without an fsync per file, flushed once at the end.

Syncthing fsyncs each file it receives, one at a time (a single "finisher" routine), before
renaming it into place. For a node that joins with an empty directory that is most of the
time: on a loaded 2-core host, a 1 GiB tree of 2,000 files took 26.8 s with it and 13.4 s
without (``disableFsync``), beside 6-8 s for ``rsync -a``, which syncs nothing.

Without the fsyncs, Syncthing's database may list a file as received whose data a crash
loses. So the mirror marks the folder in its Syncthing home first (a file, made durable),
turns the per-file fsync off, and only when the copy is complete turns it back on, flushes
the file system (``syncfs``) and removes the mark. While the mark exists the node does not
say it is in sync, and a Syncthing started with a mark left over (a crash during a first
copy) gets its database reset first, so that it hashes every file again and fetches what
does not match. Only an instance hacore runs does this: resetting someone else's database
is not hacore's business.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
from pathlib import Path

from hacore.atomic_files import write_atomic
from hacore_plugins.syncthing import home as st_home

log = logging.getLogger(__name__)

PREFIX = "first-copy-"


def mark_path(home: Path, folder: str) -> Path:
    return home / f"{PREFIX}{folder}"


def begin(home: Path, folder: str) -> None:
    write_atomic(mark_path(home, folder), f"{folder}\n", 0o600)


def marked(home: Path, folder: str) -> bool:
    return mark_path(home, folder).exists()


def left_over(home: Path) -> list[str]:
    """The folders whose first copy a stop or crash interrupted."""
    with contextlib.suppress(OSError):
        return sorted(p.name[len(PREFIX) :] for p in home.iterdir() if p.name.startswith(PREFIX))
    return []


def flush(directory: Path) -> None:
    """Write the file system holding ``directory`` to disk (all of them where ``syncfs`` is
    missing)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = getattr(libc, "syncfs", None)
        if syncfs is None or syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def end(home: Path, folder: str) -> None:
    """Remove the mark, durably (the directory entry too)."""
    with contextlib.suppress(FileNotFoundError):
        mark_path(home, folder).unlink()
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover(binary: str, home: Path, node_name: str) -> None:
    """Before a start: a first copy a crash cut short resets Syncthing's database, so that
    every file is checked again."""
    cut_short = left_over(home)
    if not cut_short:
        return
    log.warning(
        "syncthing: the first copy of %s on %s was cut short; resetting Syncthing's "
        "database so that every file is checked again",
        ", ".join(cut_short),
        node_name,
    )
    st_home.reset_database(binary, home)
    for folder in cut_short:
        end(home, folder)
