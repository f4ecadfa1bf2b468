"""Server processes for tests: free loopback ports, start in a temp dir, stop by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from hacore.backends.processes import process_table

_reserved: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, never handed out twice by this process."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _reserved:
            _reserved.add(port)
            return port


def wait_for(
    predicate: Callable[[], object], timeout: float, interval: float = 0.05, what: str = ""
) -> object:
    """Poll until ``predicate`` returns a truthy value; TimeoutError after ``timeout``.

    An exception from ``predicate`` means "not yet" (a server still starting refuses
    connections), except an ``AssertionError``: a check inside the predicate that fails is a
    test failure at once, never a retry.
    """
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except AssertionError:
            raise
        except Exception as exc:
            last_exc = exc
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"timed out after {timeout}s waiting for {what or predicate}"
            ) from last_exc
        time.sleep(interval)


def holds_for(
    check: Callable[[], object], seconds: float, interval: float = 0.1, what: str = ""
) -> int:
    """Assert that ``check`` holds at every sample for ``seconds``; return how many it took.

    The proof that something did *not* happen: a bare sleep and one look at the end misses
    what came and went in between, this looks all along. ``check`` returning a falsy value or
    raising (AssertionError included) fails at once. ``seconds`` must be long enough for the
    thing looked for to show if it were going to; say why at the call site.
    """
    deadline = time.monotonic() + seconds
    samples = 0
    while True:
        assert check(), f"no longer holds after {samples} samples: {what or check}"
        samples += 1
        if time.monotonic() >= deadline:
            return samples
        time.sleep(interval)


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class ServerProcess:
    """One server process in its own process group, with its output in a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.cwd = cwd
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.frozen = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
                env={**os.environ, **(self.env or {})},
                start_new_session=True,
            )
        finally:
            log.close()
        self.frozen = False
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig: int) -> None:
        if self.alive():
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL, as a crash would; waits for the pid to be gone."""
        self.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)
        self.frozen = False

    def freeze(self) -> None:
        self.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        self.send_signal(signal.SIGCONT)
        self.frozen = False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Ask politely, then SIGKILL; always waits for the pid to exit."""
        if not self.alive():
            return
        assert self.proc is not None
        if self.frozen:
            self.thaw()
        self.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a reaped-later child counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid``, found through /proc (they may have left its process group)."""
    return [entry.pid for entry in process_table() if entry.ppid == pid]


def kill_with_children(pid: int, timeout: float = 30.0) -> None:
    """SIGKILL a server and its direct children, as a host death would, and wait for it.

    A PostgreSQL postmaster's children call setsid(), so killing its process group misses
    them; they are found by parent pid instead.
    """
    for proc in [pid, *child_pids(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), timeout, what=f"pid {pid} to die")
