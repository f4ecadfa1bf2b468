"""The settings of the ``process`` services backend.

.. code-block:: yaml

    services:
      backend: process
      active_only: [broker, worker]
      run_dir: /var/lib/hacore/services   # pid and log files
      stop_timeout: 10                    # SIGKILL this long after the stop signal
      start_grace: 0.5                    # a service that exits this soon failed to start
      commands:
        broker: ["python3", "-m", "broker"]
        worker:
          command: "python3 -m worker --threads 4"
          cwd: /opt/manager
          env: {MANAGER_ROLE: worker}
          stop_signal: INT
          stop_timeout: 30
"""

from __future__ import annotations

import shlex
import signal
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

import attrs

from hacore.config.check import Section, backend_settings, check_name, show
from hacore.errors import ConfigError

WHERE = "services"
STOP_SIGNALS = ("TERM", "INT", "QUIT", "HUP", "USR1", "USR2")
_KNOWN = ("run_dir", "commands", "stop_timeout", "start_grace")
_KNOWN_SERVICE = ("command", "cwd", "env", "stop_signal", "stop_timeout")
SECONDS = "a number of seconds > 0"


def _frozen_env(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


@attrs.frozen
class ProcessCommand:
    """How to run one service: argv (no shell), where, with which extra environment."""

    name: str
    argv: tuple[str, ...]
    cwd: Path | None = None
    env: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_env)
    stop_signal: signal.Signals = signal.SIGTERM
    stop_timeout: float = 10.0


def _frozen_commands(value: Mapping[str, ProcessCommand]) -> Mapping[str, ProcessCommand]:
    return MappingProxyType(dict(value))


@attrs.frozen
class ProcessSettings:
    run_dir: Path
    commands: Mapping[str, ProcessCommand] = attrs.field(converter=_frozen_commands)
    start_grace: float = 0.5

    @classmethod
    def parse(cls, settings: Mapping[str, Any]) -> ProcessSettings:
        sec = backend_settings(WHERE, settings, _KNOWN)
        if settings.get("run_dir") is None:
            sec.problem(
                f"{WHERE}.run_dir is required: the directory for the services' pid and log files"
            )
        run_dir = sec.absolute_path("run_dir", "/")
        stop_timeout = sec.number("stop_timeout", 10.0, what=SECONDS)
        raw = settings.get("commands")
        commands: dict[str, ProcessCommand] = {}
        if not isinstance(raw, Mapping) or not raw:
            sec.problem(
                f"{WHERE}.commands must map each service name to its command line, "
                f'e.g. worker: "python3 -m worker" (got {show(raw)})'
            )
        else:
            for name, value in raw.items():
                command = _command(sec, name, value, stop_timeout)
                if command is not None:
                    commands[name] = command
        start_grace = sec.number("start_grace", 0.5, what=SECONDS)
        sec.done()
        return cls(run_dir=run_dir, commands=commands, start_grace=start_grace)


def _command(
    sec: Section, name: Any, raw: Any, default_stop_timeout: float
) -> ProcessCommand | None:
    """One service's command, or None with its problems recorded in ``sec``."""

    def fail(message: str) -> NoReturn:
        raise ConfigError(message)

    where = f"{WHERE}.commands.{name}"
    title = f"{WHERE}.commands: service name {show(name)}"
    if not sec.passes(lambda: check_name(name, title, fail, what="a service name")):
        return None
    spec: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {"command": raw}
    own = Section("", where, spec, _KNOWN_SERVICE, problems=sec.problems)
    own.reject_unknown()
    command = ProcessCommand(
        name=name,
        argv=own.attempt(
            lambda: _argv(spec.get("command"), f"{where}.command" if spec is raw else where), ()
        ),
        cwd=own.optional_path("cwd"),
        env=own.attempt(lambda: _env(spec.get("env"), f"{where}.env"), {}),
        stop_signal=own.attempt(
            lambda: _signal(spec.get("stop_signal"), f"{where}.stop_signal"), signal.SIGTERM
        ),
        stop_timeout=own.number("stop_timeout", default_stop_timeout, what=SECONDS),
    )
    return command if own.clean else None


def _argv(raw: Any, where: str) -> tuple[str, ...]:
    expected = 'a command line ("python3 -m worker") or a list of arguments'
    if isinstance(raw, str):
        try:
            argv = shlex.split(raw)
        except ValueError as err:
            raise ConfigError(f"{where}: cannot split {show(raw)} into arguments: {err}") from None
    elif isinstance(raw, list | tuple) and all(isinstance(a, str) for a in raw):
        argv = list(raw)
    else:
        raise ConfigError(f"{where} must be {expected} (got {show(raw)})")
    if not argv or not argv[0]:
        raise ConfigError(f"{where} must be {expected}, not empty")
    return tuple(argv)


def _env(raw: Any, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must map variable names to strings (got {show(raw)})")
    env = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not key or "=" in key:
            raise ConfigError(f"{where}: {show(key)} is not an environment variable name")
        if not isinstance(value, str):
            raise ConfigError(f"{where}.{key} must be a string; quote it (got {show(value)})")
        env[key] = value
    return env


def _signal(raw: Any, where: str) -> signal.Signals:
    if raw is None:
        return signal.SIGTERM
    name = raw.upper().removeprefix("SIG") if isinstance(raw, str) else None
    if name not in STOP_SIGNALS:
        raise ConfigError(f"{where} must be one of {', '.join(STOP_SIGNALS)} (got {show(raw)})")
    return signal.Signals[f"SIG{name}"]
