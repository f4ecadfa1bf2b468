"""On the source, scan what changed as soon as it is complete, not after the watcher's delay.

Syncthing's own watcher gathers events for ``fsWatcherDelayS`` (an integer in Syncthing 1.19,
so at least 1 s) and scans a path only once its last event is that old: a file closed on the
active is announced 1-2 s later, and a 50 MiB one reaches the mirrors after 2 s or more. This
watcher asks Syncthing to scan the exact sub-paths (``POST /rest/db/scan?sub=``) once a file
is *complete*: closed after writing, renamed into the folder, deleted, a directory created or
moved. A file still being written is left to Syncthing's watcher, which stays on as the
fallback (and for what inotify does not say here: attribute changes, a lost event queue is
answered with a whole-folder scan). Scanning only tells Syncthing to look sooner; what is
sent, and to whom, is still decided by the folder types, so mirrors never run it.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path

import httpx
from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    EventsLostEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.inotify import InotifyObserver

from hacore.errors import FilesyncError
from hacore_plugins.syncthing.api import SyncthingApi

log = logging.getLogger(__name__)

#: what arrives within this many seconds of a first change is scanned with it
SETTLE = 0.05
#: more changed paths than this in one folder: scan the whole folder instead
MAX_SUBS = 64
#: a whole-folder marker among the pending paths
WHOLE = ""
#: complete changes (see the module docstring); a created file is still being written
EVENTS = [
    FileClosedEvent,
    FileMovedEvent,
    DirMovedEvent,
    FileDeletedEvent,
    DirDeletedEvent,
    DirCreatedEvent,
    FileCreatedEvent,
]


def relative(root: Path, raw: bytes | str) -> str | None:
    """``raw`` as Syncthing names it in the folder at ``root``; None for what Syncthing keeps
    to itself (its marker, versions, temporary files) and for paths outside the folder."""
    if not raw:
        return None
    path = os.fsdecode(raw)
    try:
        rel = Path(path).relative_to(root)
    except ValueError:
        return None
    parts = rel.parts
    if not parts:
        return None
    if parts[0] in (".stfolder", ".stversions"):
        return None
    name = parts[-1]
    if name.startswith("~syncthing~") or (name.startswith(".syncthing.") and name.endswith(".tmp")):
        return None
    return rel.as_posix()


def scan_params(folder: str, subs: set[str]) -> httpx.QueryParams:
    """The query of one scan: the sub-paths, or the whole folder when there are many."""
    if WHOLE in subs or len(subs) > MAX_SUBS:
        return httpx.QueryParams({"folder": folder})
    return httpx.QueryParams({"folder": folder, "sub": sorted(subs)})


class _Handler(FileSystemEventHandler):
    def __init__(self, scanner: ChangeScanner, folder: str, root: Path) -> None:
        self.scanner = scanner
        self.folder = folder
        self.root = root

    def dispatch(self, event: FileSystemEvent) -> None:
        if isinstance(event, EventsLostEvent):
            self.scanner.changed(self.folder, WHOLE)
            return
        if isinstance(event, FileCreatedEvent) and not os.path.islink(event.src_path):
            return  # being written: its close (or Syncthing's watcher) follows
        for raw in (event.src_path, event.dest_path):
            rel = relative(self.root, raw)
            if rel is not None:
                self.scanner.changed(self.folder, rel)


class ChangeScanner:
    """Watches the folders (inotify, through watchdog) and scans the changed sub-paths."""

    def __init__(self, api: SyncthingApi, folders: Mapping[str, Path], *, timeout: float):
        self.api = api
        self.folders = dict(folders)
        self.timeout = timeout
        self._pending: dict[str, set[str]] = {}
        self._wake = threading.Condition()
        self._halt = threading.Event()
        self._observer = InotifyObserver(generate_full_events=True)
        self._worker = threading.Thread(target=self._run, name="syncthing-scan", daemon=True)

    def start(self) -> None:
        """Raises OSError when inotify refuses (no watches left): the caller does without."""
        for folder, root in self.folders.items():
            self._observer.schedule(
                _Handler(self, folder, root.resolve()),
                str(root.resolve()),
                recursive=True,
                event_filter=EVENTS,
            )
        self._observer.start()
        self._worker.start()

    def stop(self) -> None:
        """Does not wait for a scan under way (a large one may take minutes): the worker
        ends, and closes its API client, once Syncthing has answered it."""
        self._halt.set()
        with self._wake:
            self._wake.notify_all()
        if self._observer.is_alive():
            self._observer.stop()
            self._observer.join(timeout=10)
        if self._worker.is_alive():
            self._worker.join(timeout=1)
        elif self._worker.ident is None:
            self.api.close()  # never started

    def changed(self, folder: str, rel: str) -> None:
        with self._wake:
            self._pending.setdefault(folder, set()).add(rel)
            self._wake.notify()

    def _take(self) -> dict[str, set[str]]:
        with self._wake:
            while not self._pending and not self._halt.is_set():
                self._wake.wait()
        # a burst (an unpacked archive, a rename's two halves) goes in one scan
        self._halt.wait(SETTLE)
        with self._wake:
            pending, self._pending = self._pending, {}
        return pending

    def _run(self) -> None:
        try:
            while not self._halt.is_set():
                for folder, subs in self._take().items():
                    if self._halt.is_set():
                        return
                    self._scan(folder, subs)
        finally:
            self.api.close()

    def _scan(self, folder: str, subs: set[str]) -> None:
        try:
            self.api.request(
                "POST", "/rest/db/scan", params=scan_params(folder, subs), timeout=self.timeout
            )
        except FilesyncError as err:
            # Syncthing's own watcher still sees the change, a second or two later
            log.debug("syncthing: scan of %s in %s: %s", sorted(subs), folder, err)
        except Exception:
            log.exception("syncthing: scan of %s in %s failed", sorted(subs), folder)
