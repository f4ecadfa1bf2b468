"""The rsync plugin: mirrors pull the active's directories from its rsync daemon."""

from __future__ import annotations

from hacore.plugins.hookspecs import hookimpl
from hacore.plugins.registry import BackendRegistry
from hacore_plugins.rsync.backend import RsyncFilesync

__all__ = ["RsyncFilesync"]


@hookimpl
def hacore_register_backends(registry: BackendRegistry) -> None:
    registry.add_filesync("rsync", RsyncFilesync)
