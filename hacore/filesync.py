"""The filesync family: directories the active writes and the standbys mirror."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs


@attrs.frozen
class SyncState:
    """How far this node's copy is from the active's."""

    in_sync: bool
    completion: float = 100.0
    need_bytes: int = 0
    last_change: float | None = None
    detail: str = ""


class FilesyncBackend(abc.ABC):
    def __init__(
        self,
        settings: Mapping[str, Any],
        *,
        node_name: str,
        host: str,
        data_dir: Path,
        directories: Sequence[Path],
    ) -> None:
        self.settings = dict(settings)
        self.node_name = node_name
        self.host = host
        self.data_dir = Path(data_dir)
        self.directories = tuple(Path(d) for d in directories)

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        """Raise :class:`~hacore.errors.ConfigError` when ``settings`` cannot work."""

    @abc.abstractmethod
    def identity(self) -> dict[str, Any]:
        """What peers need to reach this node (exchanged during join)."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start (or attach to) the sync engine."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the sync engine; idempotent."""

    @abc.abstractmethod
    def set_peers(self, peers: Mapping[str, Mapping[str, Any]]) -> None:
        """The other members, by node name, as returned by their :meth:`identity`."""

    @abc.abstractmethod
    def become_source(self) -> None:
        """This node is active: its directories are the ones others mirror."""

    @abc.abstractmethod
    def become_mirror(self, source: str) -> None:
        """This node mirrors ``source``; local changes are overwritten, never sent back."""

    @abc.abstractmethod
    def state(self) -> SyncState:
        """Sync completion of this node's copy."""
