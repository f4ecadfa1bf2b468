"""The ``process`` services backend: the agent runs each service itself (development, demos).

Each service runs in its own session and process group, so a signal meant for the agent never
reaches it and stopping it stops its children too. Its output goes to ``<run_dir>/<name>.log``
and its identity (pid, start time, boot id) to ``<run_dir>/<name>.pid``: an agent that
restarts finds the services it started before and can stop them, and a pid the kernel has
since given to another process is never mistaken for the service.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hacore.atomic_files import write_atomic
from hacore.backends.services import ServiceBackend, ServiceStatus
from hacore.errors import ConfigError, ServiceError
from hacore_plugins.services.proc import ProcessIdentity, group_members
from hacore_plugins.services.process_settings import ProcessCommand, ProcessSettings

log = logging.getLogger(__name__)

#: seconds to wait for a process group to vanish after SIGKILL before giving up
KILL_WAIT = 10.0


def describe_exit(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


class ProcessServices(ServiceBackend):
    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        self.config = ProcessSettings.parse(settings)
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._last_exit: dict[str, int] = {}

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        ProcessSettings.parse(settings)

    @classmethod
    def validate_services(cls, settings: Mapping[str, Any], names: Iterable[str]) -> None:
        commands = ProcessSettings.parse(settings).commands
        missing = [name for name in names if name not in commands]
        if missing:
            raise ConfigError(
                f"services.commands has no command for {', '.join(missing)} "
                f"(commands are given for: {', '.join(sorted(commands))})"
            )

    def pid_path(self, name: str) -> Path:
        return self.config.run_dir / f"{name}.pid"

    def log_path(self, name: str) -> Path:
        return self.config.run_dir / f"{name}.log"

    # -- the three operations ------------------------------------------------------------

    def start(self, name: str) -> None:
        command = self._command(name)
        if self._identity(name) is not None:
            return
        self.stop(name)  # a stale pid file, or leftovers of a group whose leader died
        child = self._spawn(command)
        deadline = time.monotonic() + self.config.start_grace
        while (code := child.poll()) is None:
            if time.monotonic() >= deadline:
                return
            time.sleep(0.05)
        self._last_exit[name] = code
        self.stop(name)
        raise ServiceError(
            f"service {name} {describe_exit(code)} right after it started "
            f"({shlex.join(command.argv)}); {self._log_hint(name)}"
        )

    def stop(self, name: str) -> None:
        command = self._command(name)
        recorded = self._read_pid_file(name)
        if recorded is not None:
            pgid = self._group_to_stop(recorded)
            if pgid is not None:
                self._terminate(command, pgid)
        self._reap(name)
        with contextlib.suppress(FileNotFoundError):
            self.pid_path(name).unlink()

    def status(self, name: str) -> ServiceStatus:
        self._command(name)
        self._reap(name)
        recorded = self._read_pid_file(name)
        if recorded is not None and recorded.alive():
            return ServiceStatus(name, True, f"pid {recorded.pid}")
        if recorded is None:
            detail = "not running"
        elif ProcessIdentity.of(recorded.pid) is not None:
            detail = f"not running: pid {recorded.pid} now belongs to another process"
        else:
            detail = f"not running: pid {recorded.pid} is gone"
        if name in self._last_exit:
            detail += f" ({describe_exit(self._last_exit[name])})"
        return ServiceStatus(name, False, detail)

    # -- helpers -------------------------------------------------------------------------

    def _command(self, name: str) -> ProcessCommand:
        try:
            return self.config.commands[name]
        except KeyError:
            raise ServiceError(
                f"the process backend has no command for service {name} (add it under "
                "services.commands)"
            ) from None

    def _identity(self, name: str) -> ProcessIdentity | None:
        """The service's process when it runs now."""
        recorded = self._read_pid_file(name)
        return recorded if recorded is not None and recorded.alive() else None

    def _spawn(self, command: ProcessCommand) -> subprocess.Popen[bytes]:
        self.config.run_dir.mkdir(parents=True, exist_ok=True)
        name = command.name
        with open(self.log_path(name), "ab") as out:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            out.write(f"--- hacore {stamp}: starting {shlex.join(command.argv)}\n".encode())
            out.flush()
            try:
                child = subprocess.Popen(
                    command.argv,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=command.cwd,
                    env={**os.environ, **command.env},
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as err:
                raise ServiceError(
                    f"cannot start service {name}: {command.argv[0]}: {err.strerror}"
                ) from None
        self._children[name] = child
        self._last_exit.pop(name, None)
        identity = ProcessIdentity.of(child.pid)
        if identity is not None:  # None: it exited already, which the caller sees
            self._write_pid_file(command, identity)
        return child

    def _group_to_stop(self, recorded: ProcessIdentity) -> int | None:
        """The process group to signal, or None when nothing of the service is left.

        A leader that is gone may have left children in its group; the group id cannot be
        taken by anybody else while they live, so they are the service's and are stopped too.
        """
        if recorded.alive():
            return recorded.pid
        if ProcessIdentity.of(recorded.pid) is not None:
            return None  # the pid now names a stranger
        return recorded.pid if group_members(recorded.pid) else None

    def _terminate(self, command: ProcessCommand, pgid: int) -> None:
        self._signal_group(pgid, signal.SIGCONT)  # a frozen process would never act on it
        self._signal_group(pgid, command.stop_signal)
        if self._wait_group_gone(command.name, pgid, command.stop_timeout):
            return
        log.warning(
            "service %s did not stop within %g s of %s; sending SIGKILL",
            command.name,
            command.stop_timeout,
            command.stop_signal.name,
        )
        self._signal_group(pgid, signal.SIGKILL)
        if not self._wait_group_gone(command.name, pgid, KILL_WAIT):
            raise ServiceError(
                f"service {command.name} (process group {pgid}) still runs "
                f"{KILL_WAIT:g} s after SIGKILL"
            )

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)

    def _wait_group_gone(self, name: str, pgid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            self._reap(name)
            if not group_members(pgid):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    def _reap(self, name: str) -> None:
        """Collect the exit status of a child this instance started, so it is no zombie."""
        child = self._children.get(name)
        if child is not None and (code := child.poll()) is not None:
            self._last_exit[name] = code
            del self._children[name]

    def _read_pid_file(self, name: str) -> ProcessIdentity | None:
        try:
            data = json.loads(self.pid_path(name).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            log.warning("ignoring unreadable pid file %s: %s", self.pid_path(name), err)
            return None
        return ProcessIdentity.from_json(data)

    def _write_pid_file(self, command: ProcessCommand, identity: ProcessIdentity) -> None:
        # not durable: after a reboot the pid names no process of ours anyway
        body = json.dumps({**identity.to_json(), "argv": list(command.argv)}) + "\n"
        write_atomic(self.pid_path(command.name), body, durable=False)

    def _log_hint(self, name: str, lines: int = 5) -> str:
        path = self.log_path(name)
        try:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return f"see {path}"
        return f"last lines of {path}: " + " | ".join(line.strip() for line in tail)
