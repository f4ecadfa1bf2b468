"""Size bounds for the log files of the servers hacore starts (etcd, ZooKeeper, Syncthing,
PostgreSQL's server log).

Those servers write their output to a file hacore opened for them in append mode and they
outlive the agent, so the file cannot be reopened under them, and etcd 3.4 and ZooKeeper's
slf4j-simple binding cannot rotate by themselves. A file that has grown past ``max_bytes`` is
therefore copied to ``<name>.1`` (older copies shift up to ``<name>.<keep>``, the oldest is
dropped) and truncated in place: logrotate's *copytruncate*. Because the writer appends
(``O_APPEND``), its next line lands at the new, small end of the file rather than at its
old offset. Lines written between the copy and the truncation are lost; for these logs
(kept to explain a failure) that is an acceptable price for a bound.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: the bound for each managed server's log, and the copies kept
MAX_BYTES = 20 * 1024 * 1024
KEEP = 3
#: seconds between two looks at a log's size (a stat, but the loop runs every second)
CHECK_INTERVAL = 60.0


def trim_log(path: Path, max_bytes: int = MAX_BYTES, keep: int = KEEP) -> bool:
    """Rotate ``path`` by copy and truncate once it is larger than ``max_bytes``; True if it
    was. Never raises for a missing or unreadable file (a log is not worth a failure)."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
        for index in range(keep - 1, 0, -1):
            older = path.with_name(f"{path.name}.{index}")
            if older.exists():
                older.replace(path.with_name(f"{path.name}.{index + 1}"))
        if keep > 0:
            shutil.copyfile(path, path.with_name(f"{path.name}.1"))
        with open(path, "r+b") as handle:
            handle.truncate(0)
            os.fsync(handle.fileno())
    except OSError as err:
        log.debug("log %s not trimmed: %s", path, err)
        return False
    log.info("log %s reached %d bytes: rotated", path, max_bytes)
    return True


class LogTrimmer:
    """:func:`trim_log` at most once per ``interval``, for a caller that runs every loop."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = MAX_BYTES,
        keep: int = KEEP,
        interval: float = CHECK_INTERVAL,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self.interval = interval
        self._next = 0.0

    def now(self) -> bool:
        """Trim now if needed (before a start); resets the interval."""
        self._next = time.monotonic() + self.interval
        return trim_log(self.path, self.max_bytes, self.keep)

    def tick(self) -> bool:
        if time.monotonic() < self._next:
            return False
        with contextlib.suppress(Exception):
            return self.now()
        return False
