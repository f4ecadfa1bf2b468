"""Where a rejoin's time went: the returning node's agent log and PostgreSQL log, and the new
active's checkpoints, laid on one timeline from the agent's start.

The agent says when its job began and ended and what pg_rewind said; PostgreSQL says when its
servers started, replayed, stopped and streamed, and the new active when the ``CHECKPOINT``
the rewind asks for began and ended. Between two marks is a step nobody logs (the slot and
the password on the new active, pg_rewind itself): the gap shows it all the same.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: (pattern, label: ``{1}``... are the pattern's groups) for the agent's log
AGENT_MARKS: tuple[tuple[str, str], ...] = (
    (r"agent started", "agent started"),
    (r"INFO hacore\.agent \S+ (\w+) -> (\w+): (?!.*still running)(.{0,100})", "{1} -> {2}: {3}"),
    (r"hacore\.agent\.jobs \S+ (.*): started$", "job began: {1}"),
    (r"replaying its WAL read-only", "crash recovery decided"),
    (
        r"pg_rewind from \S+ \([^)]*\)(?: \((dry run [\d.]+s, run [\d.]+s)\)| in ([\d.]+s))?"
        r": (?:pg_rewind: )?(.*)",
        "pg_rewind done ({1}{2}): {3}",
    ),
    (r"cannot rewind from", "rewind failed: re-cloning"),
    (r"backend \S+ cloned from", "cloned"),
    (r"hacore\.agent\.jobs \S+ .*: done in ([\d.]+)s", "job done ({1} s)"),
    (r"failed after ([\d.]+)s: (.{0,120})", "job FAILED after {1} s: {2}"),
    (r" (?:WARNING|ERROR) \S+ (.{0,120})", "{1}"),
)
#: ... for a PostgreSQL log's checkpoints and restartpoints
CHECKPOINT_MARKS: tuple[tuple[str, str], ...] = (
    (r"(checkpoint|restartpoint) starting: (.*)", "{1} starting: {2}"),
    (
        r"(checkpoint|restartpoint) complete: wrote (\d+) buffers.*write=([\d.]+) s, "
        r"sync=([\d.]+) s, total=([\d.]+) s",
        "{1} complete: {2} buffers, write {3} s, sync {4} s, total {5} s",
    ),
)
#: ... for the returning node's PostgreSQL log
PG_MARKS: tuple[tuple[str, str], ...] = (
    (r"LOG:  starting PostgreSQL", "server start"),
    (r"redo starts at (\S+)", "redo starts at {1}"),
    (r"redo done at (\S+).*elapsed: ([\d.]+) s", "redo done at {1} ({2} s)"),
    (r"consistent recovery state reached at (\S+)", "consistent at {1}"),
    (r"database system is ready to accept (read-only )?connections", "ready"),
    (r"received fast shutdown request", "fast shutdown"),
    *CHECKPOINT_MARKS,
    (r"database system is shut down", "shut down"),
    (r"started streaming WAL from primary at (\S+) on timeline (\d+)", "streaming from {1}"),
    (r"(?:FATAL|PANIC):  (.{0,120})", "{1}"),
)

_AGENT_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_PG_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) (\S+) ")

Mark = tuple[float, str, str]


def read_from(path: Path, offset: int) -> str:
    """The text appended to ``path`` since it was ``offset`` bytes long."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def records(text: str) -> list[tuple[float, str]]:
    """(``time.time()``, the record) of each timestamped line of an agent or PostgreSQL
    log; an untimed line (pg_rewind's output, a traceback) joins the record before it."""
    found: list[tuple[float, str]] = []
    for line in text.splitlines():
        at = _stamp(line)
        if at is not None:
            found.append((at, line))
        elif found and line.strip():
            found[-1] = (found[-1][0], f"{found[-1][1]} / {line.strip()}")
    return found


def _stamp(line: str) -> float | None:
    agent = _AGENT_STAMP.match(line)
    if agent:
        local = datetime.datetime.strptime(agent[1], "%Y-%m-%d %H:%M:%S,%f")
        return local.timestamp()
    pg = _PG_STAMP.match(line)
    if pg:
        at = datetime.datetime.strptime(pg[1], "%Y-%m-%d %H:%M:%S.%f")
        if pg[2] in ("UTC", "GMT"):
            at = at.replace(tzinfo=datetime.UTC)
        return at.timestamp()
    return None


def marks(text: str, patterns: Sequence[tuple[str, str]], where: str, since: float) -> list[Mark]:
    """(seconds since ``since``, where, what) of every record matching one of ``patterns``
    (the first that matches names it), from ``since`` on."""
    found: list[Mark] = []
    for at, record in records(text):
        if at < since - 0.001:
            continue
        for pattern, label in patterns:
            match = re.search(pattern, record)
            if match:
                what = label.format(None, *(g or "" for g in match.groups()))
                found.append((round(at - since, 3), where, what.strip()))
                break
    return found


def timeline(
    *, agent_log: str, pg_log: str, active_log: str, active: str, since: float
) -> list[Mark]:
    """Every mark of the three logs from ``since`` (a ``time.time()``), in time order."""
    found = marks(agent_log, AGENT_MARKS, "agent", since)
    found += marks(pg_log, PG_MARKS, "pg", since)
    found += marks(active_log, CHECKPOINT_MARKS, f"pg {active}", since)
    return sorted(found, key=lambda m: m[0])


def lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def phases(steps: Sequence[Mark], seen: float | None) -> dict[str, Any]:
    """The rejoin cut at the marks that bound its steps (seconds; None when a mark is
    missing), the new active's ``CHECKPOINT`` it waited for, and how much WAL the crash
    recovery of the killed server replayed."""

    def first(where: str, prefix: str, after: float = -1.0) -> float | None:
        return next(
            (at for at, w, what in steps if w == where and what.startswith(prefix) and at > after),
            None,
        )

    def last(where: str, prefix: str) -> float | None:
        hits = [at for at, w, what in steps if w == where and what.startswith(prefix)]
        return hits[-1] if hits else None

    job = first("agent", "job began")
    recovery = first("pg", "server start")
    recovered = first("pg", "shut down", recovery) if recovery is not None else None
    rewound = first("agent", "pg_rewind done") or first("agent", "cloned")
    standby = last("pg", "server start")
    if standby is not None and recovered is not None and standby < recovered:
        standby = None
    streaming = first("pg", "streaming from", standby) if standby is not None else None
    bounds: list[tuple[str, float | None]] = [
        ("agent_up", first("agent", "agent started")),
        ("to_job", job),
        ("before_recovery", recovery),
        ("crash_recovery", recovered),
        ("pg_rewind", rewound),
        ("to_standby_start", standby),
        ("standby_start", streaming),
        ("seen", seen),
    ]
    result: dict[str, Any] = {}
    previous: float | None = 0.0
    for name, at in bounds:
        result[f"{name}_s"] = round(at - previous, 3) if None not in (at, previous) else None
        previous = at if at is not None else previous
    result.update(_checkpoint(steps, job))
    result["replayed_bytes"] = _replayed(steps, recovery, recovered)
    result["job_failures"] = sum(1 for _, w, what in steps if what.startswith("job FAILED"))
    return result


def _checkpoint(steps: Sequence[Mark], job: float | None) -> dict[str, Any]:
    """The new active's ``CHECKPOINT`` the rewind asked for (the first immediate one after
    the job began): seconds from the job's start to its end (the wait includes a checkpoint
    already under way, which the request hurries), and its own length."""
    found: dict[str, Any] = {"checkpoint_wait_s": None, "checkpoint_total_s": None}
    if job is None:
        return found
    asked = False
    for at, where, what in steps:
        if not where.startswith("pg ") or at < job:
            continue
        if what.startswith("checkpoint starting: immediate"):
            asked = True
        elif asked and what.startswith("checkpoint complete"):
            total = re.search(r"total ([\d.]+) s", what)
            found["checkpoint_wait_s"] = round(at - job, 3)
            found["checkpoint_total_s"] = float(total[1]) if total else None
            return found
    return found


def _replayed(steps: Sequence[Mark], began: float | None, ended: float | None) -> int | None:
    if began is None or ended is None:
        return None
    start = end = None
    for at, where, what in steps:
        if where != "pg" or not began <= at <= ended:
            continue
        if what.startswith("redo starts at ") and start is None:
            start = lsn(what.split()[-1])
        elif what.startswith(("consistent at ", "redo done at ")) and end is None:
            end = lsn(what.split()[3] if what.startswith("redo") else what.split()[-1])
    return end - start if start is not None and end is not None else None
