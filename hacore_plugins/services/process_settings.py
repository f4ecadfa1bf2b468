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

from hacore.config.check import check_name, show
from hacore.errors import ConfigError
from hacore_plugins.services.settings import absolute_path, reject_unknown, seconds

WHERE = "services"
STOP_SIGNALS = ("TERM", "INT", "QUIT", "HUP", "USR1", "USR2")
_KNOWN = ("run_dir", "commands", "stop_timeout", "start_grace")
_KNOWN_SERVICE = ("command", "cwd", "env", "stop_signal", "stop_timeout")


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
        reject_unknown(settings, _KNOWN, WHERE)
        if settings.get("run_dir") is None:
            raise ConfigError(
                f"{WHERE}.run_dir is required: the directory for the services' pid and log files"
            )
        run_dir = absolute_path(settings["run_dir"], f"{WHERE}.run_dir")
        stop_timeout = seconds(settings, "stop_timeout", 10.0, WHERE)
        raw = settings.get("commands")
        if not isinstance(raw, Mapping) or not raw:
            raise ConfigError(
                f"{WHERE}.commands must map each service name to its command line, "
                f'e.g. worker: "python3 -m worker" (got {show(raw)})'
            )
        commands = {name: _command(name, value, stop_timeout) for name, value in raw.items()}
        return cls(
            run_dir=run_dir,
            commands=commands,
            start_grace=seconds(settings, "start_grace", 0.5, WHERE),
        )


def _command(name: Any, raw: Any, default_stop_timeout: float) -> ProcessCommand:
    def fail(message: str) -> NoReturn:
        raise ConfigError(message)

    where = f"{WHERE}.commands.{name}"
    check_name(name, f"{WHERE}.commands: service name {show(name)}", fail, what="a service name")
    spec: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {"command": raw}
    reject_unknown(spec, _KNOWN_SERVICE, where)
    return ProcessCommand(
        name=name,
        argv=_argv(spec.get("command"), f"{where}.command" if spec is raw else where),
        cwd=absolute_path(spec["cwd"], f"{where}.cwd") if spec.get("cwd") is not None else None,
        env=_env(spec.get("env"), f"{where}.env"),
        stop_signal=_signal(spec.get("stop_signal"), f"{where}.stop_signal"),
        stop_timeout=seconds(spec, "stop_timeout", default_stop_timeout, where),
    )


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
