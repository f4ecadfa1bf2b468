"""A hacore plugin that marks a node unhealthy when its data directory runs short of disk space,
and adds a ``pidfile`` services backend.

A full disk stops PostgreSQL from writing WAL, so an active with little space left is about to
fail anyway; stepping down early lets a standby with room take over cleanly.

The ``pidfile`` backend (:mod:`hacore_diskspace.pidfile_services`) shows the other half of a
plugin: a backend of one family, registered through ``hacore_register_backends`` and tested
with the contract suite hacore ships for that family (``tests/`` next to this package).

Configuration, in ``node.yaml``::

    plugins:
      settings:
        diskspace:
          min_free_mb: 1024        # default: $HACORE_DISKSPACE_MIN_MB, else 1024
          path: /var/lib/hacore    # default: node.data_dir

Block it with ``HACORE_BLOCK_PLUGINS=diskspace`` or ``plugins: {block: [diskspace]}``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hacore import BackendRegistry, CheckResult, ConfigError, HealthCheck, hookimpl
from hacore.config.node import NodeConfig
from hacore_diskspace.pidfile_services import PidfileServices

PLUGIN_NAME = "diskspace"
MIN_FREE_ENV = "HACORE_DISKSPACE_MIN_MB"
DEFAULT_MIN_FREE_MB = 1024.0


class FreeDiskSpaceCheck(HealthCheck):
    """Passes while the file system holding ``path`` has at least ``min_free_mb`` available."""

    name = "disk-space"
    ttl = 30.0

    def __init__(self, path: Path, min_free_mb: float) -> None:
        self.path = path
        self.min_free_mb = min_free_mb

    def run(self) -> CheckResult:
        try:
            stats = os.statvfs(self.path)
        except OSError as err:
            return CheckResult(False, f"cannot read free space of {self.path}: {err.strerror}")
        free_mb = stats.f_bavail * stats.f_frsize / 2**20
        detail = f"{free_mb:.0f} MB free in {self.path} (minimum {self.min_free_mb:g} MB)"
        return CheckResult(free_mb >= self.min_free_mb, detail)


def _min_free_mb(settings: Mapping[str, Any]) -> float:
    value: Any = settings.get("min_free_mb")
    where = f"plugins.settings.{PLUGIN_NAME}.min_free_mb"
    if value is None:
        value, where = os.environ.get(MIN_FREE_ENV, DEFAULT_MIN_FREE_MB), f"${MIN_FREE_ENV}"
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{where} must be a number of megabytes (got {value!r})") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ConfigError(f"{where} must be a number of megabytes >= 0 (got {value!r})")
    return float(value)


@hookimpl
def hacore_register_backends(registry: BackendRegistry) -> None:
    registry.add_services("pidfile", PidfileServices)


@hookimpl
def hacore_health_checks(config: NodeConfig) -> list[HealthCheck]:
    settings = config.plugins.settings.get(PLUGIN_NAME, {})
    unknown = set(settings) - {"min_free_mb", "path"}
    if unknown:
        raise ConfigError(
            f"plugins.settings.{PLUGIN_NAME}: unknown keys {', '.join(sorted(unknown))} "
            "(known: min_free_mb, path)"
        )
    path = Path(settings.get("path") or config.node.data_dir)
    return [FreeDiskSpaceCheck(path, _min_free_mb(settings))]
