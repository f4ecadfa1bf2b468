"""Long-lived helper servers that outlive the agent that started them.

A managed store server (etcd, ZooKeeper) must keep running when the agent restarts, and the
next agent must still be able to stop it. So the server is started detached, in its own
process group (a signal meant for the agent never reaches it), with its output in a log file
and its pid in a pid file next to its data; it is found again and stopped by that pid.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import attrs

from hacore.atomic_files import write_atomic
from hacore.errors import HacoreError

#: what a child keeps of the agent's environment: where programs are, locale, home, time zone
KEPT_VARIABLES = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "USER", "LOGNAME")
#: never handed to a child, whatever prefix it keeps
SECRET_VARIABLES = frozenset({"HACORE_PASSWORD", "HACORE_JOIN_TOKEN"})


def child_environment(
    extra: Mapping[str, str] | None = None, *, keep_prefixes: Sequence[str] = ()
) -> dict[str, str]:
    """The environment for a server or tool the agent starts: :data:`KEPT_VARIABLES`,
    ``LC_*``, the variables starting with ``keep_prefixes``, then ``extra``.

    Not the agent's whole environment: whatever a unit file, a shell or a test put there
    (credentials, proxies, ``ETCD_*``/``ZOO*``/``RSYNC_*`` variables that steer the servers)
    would otherwise reach every child and show in its ``/proc/<pid>/environ``.
    """
    env = {
        name: value
        for name, value in os.environ.items()
        if (
            name in KEPT_VARIABLES
            or name.startswith("LC_")
            or any(name.startswith(prefix) for prefix in keep_prefixes)
        )
        and name not in SECRET_VARIABLES
    }
    env.setdefault("PATH", os.defpath)
    env.update(extra or {})
    return env


class DetachedProcess:
    """One server process, known by the pid in ``pid_path``.

    ``executable_name`` guards against pid reuse: a pid whose command line does not run that
    program is not ours.
    """

    def __init__(
        self,
        name: str,
        *,
        log_path: Path,
        pid_path: Path,
        executable_name: str,
    ) -> None:
        self.name = name
        self.log_path = Path(log_path)
        self.pid_path = Path(pid_path)
        self.executable_name = executable_name
        self._child: subprocess.Popen[bytes] | None = None

    def start(
        self,
        argv: Sequence[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        keep_prefixes: Sequence[str] = (),
        umask: int = -1,
    ) -> int:
        """Start ``argv`` detached, in :func:`child_environment` plus ``env`` (and ``umask``
        when given: a server whose files must be its owner's only); refuses when the
        previous one still runs."""
        running = self.pid()
        if running is not None:
            raise HacoreError(f"{self.name} is already running (pid {running})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._child = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                env=child_environment(env, keep_prefixes=keep_prefixes),
                umask=umask,
                start_new_session=True,
                close_fds=True,
            )
        # not durable: after a reboot the pid names no server of ours anyway
        write_atomic(self.pid_path, f"{self._child.pid}\n", durable=False)
        return self._child.pid

    def pid(self) -> int | None:
        """The pid of the running server, or None (a stale pid file is ignored)."""
        if self._child is not None and self._child.poll() is not None:
            return None
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if self._alive(pid) else None

    def running(self) -> bool:
        return self.pid() is not None

    def exit_code(self) -> int | None:
        """The exit status when this process started the server and it has exited."""
        return self._child.poll() if self._child is not None else None

    def _alive(self, pid: int) -> bool:
        if self._child is not None and self._child.pid == pid:
            # Our own child: its command line reads empty for a moment while it execs.
            return self._child.poll() is None
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        state = stat.rsplit(")", 1)[-1].split()[0]
        if state in ("Z", "X"):
            return threads_running(pid)
        program = os.path.basename(cmdline[0].decode(errors="replace")) if cmdline else ""
        return program == self.executable_name

    def send_signal(self, sig: int) -> None:
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Ask with ``sig`` (after SIGCONT, in case it was frozen), SIGKILL after ``timeout``;
        returns once the pid and every process it had started are gone. Idempotent.

        Gone means every thread of every process of the tree has exited: a start right after
        a SIGKILL found Syncthing's listen port still held by its server's last threads."""
        pid = self.pid()
        if pid is not None:
            family = [e for c in descendants(pid) if (e := read_proc(c)) is not None]
            self.send_signal(signal.SIGCONT)
            self.send_signal(sig)
            if not self._wait_gone(pid, timeout):
                # A child that made its own process group (Syncthing's monitor does) would
                # outlive a signal to ours: kill the whole tree by pid.
                for child in descendants(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child, signal.SIGKILL)
                self.send_signal(signal.SIGKILL)
                if not self._wait_gone(pid, 10.0):
                    raise HacoreError(f"{self.name} (pid {pid}) did not exit after SIGKILL")
            _end_orphans(family, sig, timeout)
        self._forget(pid)

    def _forget(self, stopped: int | None) -> None:
        """Remove the pid file unless it names a newer server than the one just stopped."""
        try:
            recorded = int(self.pid_path.read_text().strip())
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            recorded = None
        # Keep it while that pid lives at all: a server another process has just started may
        # still be exec-ing, its command line not yet the program's. A stale file is harmless:
        # pid() checks the program, and start() replaces the file.
        entry = read_proc(recorded) if recorded is not None and recorded != stopped else None
        if entry is not None and entry.alive:
            return
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._child is not None and self._child.pid == pid:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._child.wait(timeout=0.05)
            if not self._alive(pid):
                return True
            time.sleep(0.05)
        return False

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@attrs.frozen
class ProcEntry:
    """One process as /proc/PID/stat shows it (Linux): enough to find a server's tree."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str
    #: clock ticks after boot when it started: tells a reused pid from the process seen before
    started: int = 0

    @property
    def alive(self) -> bool:
        return self.state not in ("Z", "X")


def read_proc(pid: int) -> ProcEntry | None:
    """``pid``'s entry, None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name, in parentheses, may hold spaces: the fields follow the last ")"
    fields = text.rpartition(")")[2].split()
    return ProcEntry(
        pid, int(fields[1]), int(fields[2]), int(fields[3]), fields[0], int(fields[19])
    )


def pauses(first: float, most: float) -> Iterator[float]:
    """Waits between two looks at a server that changes state (starts, stops, promotes,
    becomes a voter): short at first, as it is often done well before a fixed poll would
    look again, then doubling up to ``most``, not to keep a slow one busy."""
    pause = first
    while True:
        yield pause
        pause = min(pause * 2, most)


def host_port(host: str, port: int) -> str:
    """``host:port`` as servers' configurations and URLs spell it: an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def port_taken(host: str, port: int) -> bool:
    """Whether a process listens on ``host:port`` already, so a server started there would
    fail. Connections of an earlier run in TIME_WAIT do not count, as for the servers
    themselves (they set SO_REUSEADDR too)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            return err.errno == errno.EADDRINUSE
    return False


def threads_running(pid: int) -> bool:
    """Whether a thread of ``pid`` has still to exit. A multi-threaded process killed at once
    (a Go server: Syncthing, etcd) may show its first thread a zombie while the others still
    exit, holding its sockets: a start right after found Syncthing's port taken."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tasks:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        if stat.rpartition(")")[2].split()[0] not in ("Z", "X"):
            return True
    return False


def process_table() -> list[ProcEntry]:
    """Every process on the machine, read once."""
    entries = (read_proc(int(e.name)) for e in Path("/proc").iterdir() if e.name.isdigit())
    return [entry for entry in entries if entry is not None]


def _end_orphans(family: list[ProcEntry], sig: int, timeout: float) -> None:
    """Wait for the processes a stopped server had started (its own group's got ``sig``
    with it; one in a group of its own gets it now), SIGKILL after ``timeout``. A pid with
    another start time was reused by another process: left alone."""

    def living() -> list[int]:
        return [
            e.pid
            for e in family
            if (now := read_proc(e.pid)) is not None
            and now.started == e.started
            and (now.alive or threads_running(e.pid))
        ]

    for attempt in (sig, signal.SIGKILL):
        left = living()
        for child in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, attempt)
        deadline = time.monotonic() + (timeout if attempt == sig else 10.0)
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = living()
        if not left:
            return


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``, children first."""
    parents: dict[int, list[int]] = {}
    for entry in process_table():
        parents.setdefault(entry.ppid, []).append(entry.pid)
    found: list[int] = []
    queue = list(parents.get(pid, []))
    while queue:
        child = queue.pop(0)
        found.append(child)
        queue.extend(parents.get(child, []))
    return found
