"""The ``systemd`` services backend: units of the system (or a user's) service manager.

Every operation is one ``systemctl`` call. ``start`` and ``stop`` block until systemd's job
is done (no ``--no-block``): "start returns once the service runs" is what the agent relies on
before it calls ``after_promote``, and a stop that returned early would let a demoted node
keep a worker running. ``--no-ask-password`` makes a missing permission an error instead of
a password prompt nobody answers. The command runner is injectable for the tests: this
machine has no running systemd.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from hacore.backends.services import ServiceBackend, ServiceStatus
from hacore.config.check import backend_settings
from hacore.errors import ServiceError
from hacore_plugins.services.systemd_show import PROPERTIES, UnitState

WHERE = "services"
QUERY_TIMEOUT = 5.0
_KNOWN = ("systemctl", "user", "timeout")
#: systemctl's "Unit x.service not found." (start) and "... not loaded." (stop)
_NO_UNIT_RE = re.compile(r"Unit \S+ not (found|loaded)")


@attrs.frozen
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


#: runs argv with a timeout in seconds; raises ServiceError when it cannot run it at all
Runner = Callable[[Sequence[str], float], CommandResult]


def run_command(argv: Sequence[str], timeout: float) -> CommandResult:
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "LC_ALL": "C", "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""},
            check=False,
        )
    except FileNotFoundError:
        raise ServiceError(
            f"cannot run {argv[0]}: no such program (set services.systemctl to its path)"
        ) from None
    except subprocess.TimeoutExpired:
        raise ServiceError(f"{shlex.join(argv)} did not finish within {timeout:g} s") from None
    return CommandResult(done.returncode, done.stdout, done.stderr)


@attrs.frozen
class SystemdSettings:
    systemctl: str = "systemctl"
    #: True: the calling user's manager (``systemctl --user``), not the system's
    user: bool = False
    #: seconds a start or stop may take; above the units' TimeoutStartSec/TimeoutStopSec
    timeout: float = 100.0

    @classmethod
    def parse(cls, settings: Mapping[str, Any]) -> SystemdSettings:
        sec = backend_settings(WHERE, settings, _KNOWN)
        parsed = cls(
            systemctl=sec.optional_string("systemctl") or "systemctl",
            user=sec.boolean("user", False),
            timeout=sec.number("timeout", 100.0, what="a number of seconds > 0"),
        )
        sec.done()
        return parsed


class SystemdServices(ServiceBackend):
    def __init__(self, settings: Mapping[str, Any], *, runner: Runner | None = None) -> None:
        super().__init__(settings)
        self.config = SystemdSettings.parse(settings)
        self.runner: Runner = runner or run_command

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        SystemdSettings.parse(settings)

    def command(self, verb: str, name: str) -> list[str]:
        """The systemctl command line for ``start``, ``stop`` or ``show`` of unit ``name``."""
        argv = [self.config.systemctl]
        if self.config.user:
            argv.append("--user")
        if verb == "show":
            return [*argv, "show", f"--property={','.join(PROPERTIES)}", "--", name]
        return [*argv, "--no-ask-password", verb, "--", name]

    def start(self, name: str) -> None:
        self._run("start", name, self.config.timeout)
        state = self._show(name)
        if not state.running:
            raise ServiceError(
                f"systemd unit {state.id} is {state.describe()} right after it was started; "
                f"see journalctl -u {state.id}"
            )

    def stop(self, name: str) -> None:
        self._run("stop", name, self.config.timeout)

    def status(self, name: str) -> ServiceStatus:
        state = self._show(name)
        return ServiceStatus(name, state.running, state.describe())

    def _show(self, name: str) -> UnitState:
        state = UnitState.parse(self._run("show", name, QUERY_TIMEOUT).stdout)
        if state.load_state == "not-found":
            raise ServiceError(f"systemd has no unit named {state.id}")
        return state

    def _run(self, verb: str, name: str, timeout: float) -> CommandResult:
        result = self.runner(self.command(verb, name), timeout)
        if result.returncode != 0:
            if _NO_UNIT_RE.search(result.stderr):
                raise ServiceError(f"systemd has no unit named {name}")
            message = " ".join(result.stderr.split()) or f"exit status {result.returncode}"
            raise ServiceError(f"systemctl {verb} {name} failed: {message}")
        return result
