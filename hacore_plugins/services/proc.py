"""Which process a pid names, read from ``/proc``.

A pid alone does not identify a process: once the process exits, the kernel hands the number
to the next one. The pair (pid, start time since boot), with the boot's id, does. A pid file
that records all three lets a later agent tell "my service, still running" from "a stranger
that got the same pid".
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import attrs

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    return _BOOT_ID.read_text().strip()


@attrs.frozen
class ProcStat:
    """The few fields of ``/proc/<pid>/stat`` that matter here."""

    state: str
    pgrp: int
    start_time: int

    @property
    def zombie(self) -> bool:
        return self.state in ("Z", "X")


def read_stat(pid: int) -> ProcStat | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) is in parentheses and may itself hold spaces and ')'.
    fields = text.rsplit(")", 1)[1].split()
    return ProcStat(state=fields[0], pgrp=int(fields[2]), start_time=int(fields[19]))


@attrs.frozen
class ProcessIdentity:
    pid: int
    start_time: int
    boot_id: str

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity | None:
        """The identity of the live process ``pid`` now; None when gone or a zombie."""
        stat = read_stat(pid)
        if stat is None or stat.zombie:
            return None
        return cls(pid, stat.start_time, boot_id())

    def alive(self) -> bool:
        return ProcessIdentity.of(self.pid) == self

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> ProcessIdentity | None:
        """None for anything that is not a pid file this module wrote."""
        try:
            pid, start, boot = data["pid"], data["start_time"], data["boot_id"]
        except (TypeError, KeyError):
            return None
        if not (isinstance(pid, int) and isinstance(start, int) and isinstance(boot, str)):
            return None
        return cls(pid, start, boot)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of the process group ``pgid``."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = read_stat(int(entry.name))
            if stat is not None and stat.pgrp == pgid and not stat.zombie:
                members.append(int(entry.name))
    return members
