"""The filesync family: directories the active writes and the standbys mirror."""

from __future__ import annotations

import abc
import re
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import attrs

from hacore.backends.declarations import Declarations
from hacore.errors import ConfigError, FilesyncError


@attrs.frozen
class FolderSync:
    """One synchronised directory, named by its key (:func:`directory_keys`)."""

    name: str
    in_sync: bool
    need_bytes: int = 0


@attrs.frozen
class SyncState:
    """How far this node's copy is from the active's."""

    in_sync: bool
    completion: float = 100.0
    need_bytes: int = 0
    last_change: float | None = None
    detail: str = ""
    #: Each directory on its own (for the metrics); empty when the engine could not tell.
    folders: tuple[FolderSync, ...] = ()


def directory_keys(directories: Sequence[Path], prefix: str = "hacore-") -> dict[str, Path]:
    """A name per directory, made from its last path component.

    Every node lists the same directories, so the names agree across nodes without being
    exchanged; they name Syncthing folders, rsync modules and the like.
    """
    keys: dict[str, Path] = {}
    for directory in directories:
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(directory).name).strip("-.") or "root"
        key = f"{prefix}{base}"
        if key in keys:
            raise ConfigError(
                f"filesync directories {keys[key]} and {directory} end in the same name; "
                "the name identifies a directory across nodes, so it must be unique"
            )
        keys[key] = Path(directory)
    return keys


class PeerNarrowing(Protocol):
    """How an engine that declares ``narrows_to_peers`` spells :meth:`FilesyncBackend.state`
    and :meth:`FilesyncBackend.wait_in_sync`."""

    def state(self, *, peers: Collection[str] | None = None) -> SyncState: ...

    def wait_in_sync(
        self, timeout: float, *, interval: float = 0.2, peers: Collection[str] | None = None
    ) -> SyncState: ...


class FilesyncBackend(Declarations, abc.ABC):
    """With ``accepts_tls`` the engine takes the node's ``tls`` material for its peer
    traffic; one without it is still usable with TLS on (it authenticates peers itself)."""

    #: True: :meth:`state` and :meth:`wait_in_sync` take a keyword ``peers`` (node names, as
    #: :class:`PeerNarrowing` spells it) and then judge the copy against those peers only. A
    #: switchover waits for the one standby that takes over, not for another that may be
    #: down; an engine without it is asked about its whole copy.
    narrows_to_peers: ClassVar[bool] = False
    #: True: the engine's peers authenticate with a secret the cluster shares (rsync), which
    #: :meth:`use_secret` replaces; a removal then rotates it (the removed node knew it). An
    #: engine whose peers authenticate otherwise (Syncthing's device keys) shares none.
    rotates_secret: ClassVar[bool] = False

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

    def use_secret(self, secret: str) -> str | None:
        """Authenticate peers with ``secret`` from now on, in both directions: the cluster
        rotated it (declare ``rotates_secret``). :class:`FilesyncError` when this node cannot;
        a note for the removal's answer (a setting it overrides), or None."""
        raise FilesyncError("this file sync engine shares no secret to rotate")

    def scan(self) -> None:
        """Make the engine notice local changes now instead of at its next scan.

        Called on the active before a planned switchover, after its writers stopped. The
        default does nothing, for engines that need no scan.
        """

    def wait_in_sync(self, timeout: float, *, interval: float = 0.2) -> SyncState:
        """Wait until :meth:`state` says in sync; :class:`FilesyncError` after ``timeout``.

        A planned switchover calls it on the mirror that takes over, so no file the active
        wrote is lost. Backends may give a more precise message on timeout.
        """
        deadline = time.monotonic() + timeout
        while True:
            state = self.state()
            if state.in_sync:
                return state
            if time.monotonic() >= deadline:
                raise FilesyncError(
                    f"files not in sync after {timeout:g}s: {state.need_bytes} bytes missing"
                    + (f" ({state.detail})" if state.detail else "")
                )
            time.sleep(interval)
