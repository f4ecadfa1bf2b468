"""A services backend: each service a plain child process, found again by its pid file.

The smallest real service manager: ``start`` runs the service's command in a session of its
own and writes ``<run_dir>/<name>.pid`` (the pid and the process's start time, so a pid
reused by another program after a crash is not taken for the service); ``status`` reads the
file back and asks ``/proc`` whether that very process still runs; ``stop`` signals the
session's process group, then SIGKILLs it after ``stop_timeout``. Being a file, the record
outlives the agent: a restarted agent stops the services its predecessor started.

Configuration, in ``node.yaml``::

    services:
      backend: pidfile
      active_only: [api]
      run_dir: /var/lib/hacore/pidfile   # pid files and each service's output
      stop_timeout: 10                   # SIGKILL this long after SIGTERM (default 10)
      start_grace: 0.5                   # a service that exits this soon failed (default 0.5)
      commands:
        api: ["python3", "-m", "manager.api"]

hacore's contract suite for the services family checks it: see ``tests/`` next to this
package.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hacore import ConfigError, ServiceBackend, ServiceError, ServiceStatus

KNOWN = ("run_dir", "commands", "stop_timeout", "start_grace")
#: seconds a SIGKILLed process may take to leave the process table
KILL_WAIT = 10.0


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), None when it is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def _problems(settings: Mapping[str, Any]) -> list[str]:
    problems = [
        f"services.{key}: unknown setting (known: {', '.join(KNOWN)})"
        for key in settings
        if key not in KNOWN
    ]
    run_dir = settings.get("run_dir")
    if not isinstance(run_dir, str) or not Path(run_dir).is_absolute():
        problems.append(f"services.run_dir: an absolute path is required (got {run_dir!r})")
    for key in ("stop_timeout", "start_grace"):
        value = settings.get(key, 1)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            problems.append(f"services.{key}: a number of seconds > 0 (got {value!r})")
    commands = settings.get("commands", {})
    if not isinstance(commands, Mapping):
        problems.append("services.commands: a mapping of service name to argv list")
        return problems
    for name, argv in commands.items():
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
            problems.append(f"services.commands.{name}: a non-empty list of strings")
    return problems


class PidfileServices(ServiceBackend):
    """Every service is a command from the settings, run as a child in a session of its own."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        self.run_dir = Path(settings["run_dir"])
        self.commands: dict[str, list[str]] = dict(settings.get("commands", {}))
        self.stop_timeout = float(settings.get("stop_timeout", 10.0))
        self.start_grace = float(settings.get("start_grace", 0.5))
        #: the children this instance started, reaped once they exit
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        problems = _problems(settings)
        if problems:
            raise ConfigError("\n".join(problems))

    @classmethod
    def validate_services(cls, settings: Mapping[str, Any], names: Iterable[str]) -> None:
        missing = sorted(set(names) - set(settings.get("commands", {})))
        if missing:
            raise ConfigError(f"services.commands: no command for {', '.join(missing)}")

    # -- the pid file ------------------------------------------------------------------------

    def _pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def _running_pid(self, name: str) -> int | None:
        """The pid the service's file names, while that same process runs."""
        self._reap()
        try:
            pid_text, started = self._pid_file(name).read_text().split()
            pid = int(pid_text)
        except (OSError, ValueError):
            return None
        return pid if _start_time(pid) == started else None

    def _reap(self) -> None:
        for pid, child in list(self._children.items()):
            if child.poll() is not None:
                del self._children[pid]

    def _command(self, name: str) -> list[str]:
        try:
            return self.commands[name]
        except KeyError:
            raise ServiceError(f"{name}: no such service (services.commands)") from None

    # -- the interface -----------------------------------------------------------------------

    def start(self, name: str) -> None:
        argv = self._command(name)
        if self._running_pid(name) is not None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / f"{name}.log", "ab") as log:
            try:
                child = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            except OSError as err:
                raise ServiceError(f"{name}: cannot run {argv[0]}: {err.strerror}") from err
        self._children[child.pid] = child
        started = _start_time(child.pid)
        if started is not None:
            self._pid_file(name).write_text(f"{child.pid} {started}\n")
        deadline = time.monotonic() + self.start_grace
        while time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)
        if child.poll() is not None:
            self._pid_file(name).unlink(missing_ok=True)
            raise ServiceError(
                f"{name}: exited at once with status {child.returncode} "
                f"(output in {self.run_dir / f'{name}.log'})"
            )

    def stop(self, name: str) -> None:
        self._command(name)
        pid = self._running_pid(name)
        if pid is not None:
            self._signal(pid, signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout
            while self._running_pid(name) is not None and time.monotonic() < deadline:
                time.sleep(0.05)
            if self._running_pid(name) is not None:
                self._signal(pid, signal.SIGKILL)
                deadline = time.monotonic() + KILL_WAIT
                while self._running_pid(name) is not None and time.monotonic() < deadline:
                    time.sleep(0.05)
            if self._running_pid(name) is not None:
                raise ServiceError(f"{name}: pid {pid} still runs {KILL_WAIT:g}s after SIGKILL")
        self._pid_file(name).unlink(missing_ok=True)

    def status(self, name: str) -> ServiceStatus:
        self._command(name)
        pid = self._running_pid(name)
        if pid is None:
            return ServiceStatus(name, False, "not running")
        return ServiceStatus(name, True, f"pid {pid}")

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        """The service's whole process group: it leads one, since it started a session."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
