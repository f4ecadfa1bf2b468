"""The etcd reference plugin (being written)."""

from __future__ import annotations

from hacore.hookspecs import hookimpl
from hacore.plugins import BackendRegistry


@hookimpl
def hacore_register_backends(registry: BackendRegistry) -> None:
    """Nothing registered yet."""
