"""The pieces of a node that cluster operations look at before its agent exists.

``cluster join`` must tell whether the node is empty, and learn its store identity, without
starting anything; the agent's full set of backends is built only once the node is a store
member (a managed store's client settings come from its own files).
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import attrs

from hacore.backends.consensus import ManagedStore
from hacore.backends.records import TlsFiles
from hacore.backends.replication import ReplicationBackend
from hacore.config.node import NodeConfig
from hacore.errors import HacoreError
from hacore.plugins.factory import BackendFactory
from hacore.plugins.registry import HacorePlugins


@attrs.frozen
class LocalParts:
    replication: ReplicationBackend
    #: None when the store is not run by hacore
    store: ManagedStore | None

    def not_empty(self) -> str:
        """Why this node is not empty ("" when it is): it holds a database or store data."""
        reasons = []
        if self.replication.is_initialized():
            reasons.append(f"it already holds a database in {self.replication.data_dir}")
        if self.store is not None and _has_files(self.store.data_dir):
            reasons.append(f"it already holds store data in {self.store.data_dir}")
        return " and ".join(reasons)

    def store_has_data(self) -> bool:
        return self.store is not None and _has_files(self.store.data_dir)

    def wipe_store(self) -> None:
        """Stop this node's store server and delete its data: only for a store this node's
        own interrupted operation left behind."""
        if self.store is None:
            return
        with contextlib.suppress(HacoreError):
            self.store.stop()
        if self.store.data_dir.exists():
            shutil.rmtree(self.store.data_dir)

    def stop(self) -> None:
        """Stop the database and the store server, if they run (a removed node)."""
        for stop in (self.replication.stop, self.store.stop if self.store else None):
            if stop is not None:
                with contextlib.suppress(HacoreError, OSError):
                    stop()


def local_parts(
    config: NodeConfig, plugins: HacorePlugins, tls: TlsFiles | None = None
) -> LocalParts:
    """The node's replication backend and managed store, as the agent will build them."""
    factory = BackendFactory(config, plugins, tls)
    return LocalParts(factory.replication(), factory.managed_store())


def _has_files(directory: Path) -> bool:
    # a log file of a failed attempt does not make a store "in use"
    return directory.is_dir() and any(not p.name.endswith(".log") for p in directory.iterdir())
