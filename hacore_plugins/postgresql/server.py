"""Starting and stopping the postmaster, always by the pid in its own ``postmaster.pid``.

Stopping does not use ``pg_ctl stop``: a postmaster killed with SIGKILL leaves a pid file
whose process is gone or a zombie (on a machine whose init does not reap), and ``pg_ctl``
would wait on it for its whole timeout. Here a dead or zombie pid counts as stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from hacore.backends.processes import pauses
from hacore.errors import ReplicationError
from hacore_plugins.postgresql.commands import PgTools, tail
from hacore_plugins.postgresql.layout import Layout

log = logging.getLogger(__name__)

#: The states ``pg_controldata`` reports for a data directory that was shut down cleanly; the
#: only ones pg_rewind accepts.
CLEAN_STATES = frozenset({"shut down", "shut down in recovery"})


def _unreadable(path: Path, err: OSError) -> ReplicationError:
    """A read that failed for another reason than the file being absent (out of descriptors,
    EMFILE, above all): the answer is unknown, and must not be taken for "stopped" (DESIGN
    rule 7); the agent reads a ReplicationError from ``status`` as an unknown database."""
    return ReplicationError(f"cannot read {path}, so the database's state is unknown: {err}")


def process_alive(pid: int) -> bool:
    path = Path(f"/proc/{pid}/stat")
    try:
        stat = path.read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError as err:
        raise _unreadable(path, err) from err
    # The state follows the command name, which is in parentheses and may hold spaces.
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def pid_file_fields(layout: Layout) -> list[str]:
    try:
        return layout.pid_file.read_text().splitlines()
    except FileNotFoundError:
        return []
    except OSError as err:
        raise _unreadable(layout.pid_file, err) from err


def postmaster_pid(layout: Layout) -> int | None:
    """The pid of the running postmaster, None when none runs."""
    fields = pid_file_fields(layout)
    if not fields or not fields[0].strip().isdigit():
        return None
    pid = int(fields[0])
    return pid if process_alive(pid) else None


def postmaster_state(layout: Layout) -> str | None:
    """``starting``, ``ready``, ``standby`` or ``stopping`` from the pid file, None if stopped."""
    fields = pid_file_fields(layout)
    if postmaster_pid(layout) is None:
        return None
    return fields[7].strip() if len(fields) > 7 else "starting"


def log_tail(layout: Layout, lines: int = 12, limit: int = 16384) -> str:
    try:
        with open(layout.log_file, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - limit))
            text = handle.read().decode(errors="replace")
    except OSError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:]) or "(server log is empty)"


#: seconds between two looks at ``postmaster.pid`` while a server starts or stops: the first
#: look early, then less often (``pg_ctl -w`` alone looks every 100 ms, so a start took up to
#: 100 ms longer than the server needed; a fixed 50 ms added 25 ms on average to every fence,
#: inside a switchover's write gap)
POLL_FIRST = 0.005
POLL_MAX = 0.02


def poll_pauses() -> Iterator[float]:
    """The waits between two looks at a server that starts, stops or promotes."""
    return pauses(POLL_FIRST, POLL_MAX)


def start(tools: PgTools, layout: Layout, *, timeout: float, what: str) -> int:
    """Start the postmaster and wait until it accepts connections; returns its pid.

    ``pg_ctl -w`` still starts it and judges a failure (a server that exits, or not ready
    within ``timeout``); the server's own pid file saying ``ready`` or ``standby`` ends the
    wait sooner, as pg_ctl itself would on its next look (the stale pid file is removed
    first, so the file read is the new server's). pg_ctl is then left to exit and reaped.
    """
    pid = postmaster_pid(layout)
    if pid is not None:
        return pid
    _remove_stale_locks(layout)
    args = ["start", "-D", str(layout.pgdata), "-l", str(layout.log_file)]
    args += ["-w", "-t", str(int(timeout)), "-s"]
    proc = tools.spawn("pg_ctl", args)
    deadline = time.monotonic() + timeout + 30
    waits = poll_pauses()
    code: int | None = None
    while (code := proc.poll()) is None:
        if postmaster_state(layout) in ("ready", "standby"):
            pid = postmaster_pid(layout)
            if pid is not None:
                threading.Thread(target=proc.communicate, name="pg_ctl", daemon=True).start()
                return pid
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            raise ReplicationError(f"pg_ctl did not finish within {timeout + 30:.0f}s")
        time.sleep(next(waits))
    proc.communicate()
    pid = postmaster_pid(layout)
    if code == 0 and pid is not None:
        return pid
    if pid is not None:
        state = postmaster_state(layout)
        raise ReplicationError(
            f"PostgreSQL for {what} is still {state} after {timeout:.0f}s (left running); "
            f"server log:\n{log_tail(layout)}"
        )
    raise ReplicationError(
        f"PostgreSQL for {what} failed to start; server log:\n{log_tail(layout)}"
    )


def _remove_stale_locks(layout: Layout) -> None:
    """Remove the lock files of a postmaster that died (only called when none runs).

    A SIGKILLed postmaster leaves ``postmaster.pid`` and the socket's ``.lock`` file behind;
    until an init that reaps slowly collects it, its pid is a zombie that the new server's
    ``kill(pid, 0)`` takes for a live postmaster, and it refuses to start.
    """
    layout.pid_file.unlink(missing_ok=True)
    for lock in layout.run_dir.glob(".s.PGSQL.*.lock"):
        try:
            first = lock.read_text().split("\n", 1)[0].strip()
        except OSError:
            continue
        if not first.isdigit() or not process_alive(int(first)):
            log.info("removing %s, left by a postmaster that died", lock)
            lock.unlink(missing_ok=True)


def cluster_state(tools: PgTools, layout: Layout) -> str:
    """The data directory's state in its control file (``pg_controldata``): "shut down",
    "in production", "in archive recovery", ..."""
    result = tools.run("pg_controldata", ["-D", str(layout.pgdata)], timeout=60)
    if result.returncode != 0:
        raise ReplicationError(f"pg_controldata failed: {tail(result.stdout + result.stderr)}")
    for line in result.stdout.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Database cluster state":
            return value.strip()
    raise ReplicationError("pg_controldata did not report the database cluster state")


def stop(layout: Layout, *, timeout: float, immediate_wait: float = 10.0) -> bool:
    """Fast shutdown (clients cut), then immediate, then SIGKILL; True if one was running.

    A server with a stopped process (SIGSTOP, a frozen host being thawed piece by piece)
    acts on no signal but SIGKILL, so a shutdown would only wait out its timeouts while the
    lease runs out: the postmaster and every child are SIGKILLed at once. SIGCONT is not ours to
    send: it would let a frozen backend acknowledge a commit after the fence.
    """
    pid = postmaster_pid(layout)
    if pid is None:
        return False
    steps: tuple[tuple[signal.Signals, float], ...] = (
        (signal.SIGINT, timeout),
        (signal.SIGQUIT, immediate_wait),
        (signal.SIGKILL, 10.0),
    )
    if frozen_processes(pid):
        log.warning(
            "postmaster %d or its children are stopped (SIGSTOP): a shutdown cannot run, "
            "killing the server's processes",
            pid,
        )
        steps = ((signal.SIGKILL, 10.0),)
    for sig, wait in steps:
        if sig == signal.SIGKILL:
            _kill_server(pid)
        else:
            _signal(pid, sig)
        if _wait_gone(layout, pid, wait):
            return True
        log.warning("postmaster %d did not stop within %.0fs after %s", pid, wait, sig.name)
    raise ReplicationError(f"PostgreSQL (pid {pid}) did not stop even after SIGKILL")


def _state_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return ""


def frozen_processes(pid: int) -> list[int]:
    """The postmaster ``pid`` and those of its children that are stopped (state T or t)."""
    return [p for p in (pid, *children_of(pid)) if _state_of(p) in ("T", "t")]


def _kill_server(pid: int) -> None:
    """SIGKILL the postmaster and every backend. Each child of a postmaster makes itself a
    process group leader (``InitPostmasterChild``), so one ``killpg`` misses them: every
    process is killed by pid, and the group each leads (an archive command's shell) too."""
    for proc in (pid, *children_of(pid)):
        with contextlib.suppress(OSError):
            if os.getpgid(proc) == proc:
                os.killpg(proc, signal.SIGKILL)
        _signal(proc, signal.SIGKILL)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(layout: Layout, pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    waits = poll_pauses()
    while time.monotonic() < deadline:
        # The postmaster removes its pid file last, after every backend has exited.
        if not process_alive(pid) or not layout.pid_file.exists():
            return True
        time.sleep(next(waits))
    return False
