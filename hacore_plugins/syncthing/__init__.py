"""The Syncthing reference plugin: directories mirrored from the active by Syncthing."""

from __future__ import annotations

from hacore.plugins.hookspecs import hookimpl
from hacore.plugins.registry import BackendRegistry
from hacore_plugins.syncthing.backend import SyncthingFilesync

__all__ = ["SyncthingFilesync"]


@hookimpl
def hacore_register_backends(registry: BackendRegistry) -> None:
    registry.add_filesync("syncthing", SyncthingFilesync)
