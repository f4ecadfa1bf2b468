"""The one place that builds a node's backends from its configuration.

The agent needs every family; the cluster operations that look at a node before its agent
exists (``cluster join`` must tell whether the node is empty) need only the database and the
managed store. Both build them here, so a backend gets the same arguments, the same data
directory and the same TLS material whoever asks for it.

Whether a backend is handed the node's TLS material is what its class declares
(``accepts_tls``, see docs/plugin-authors.md), never guessed from its constructor.
"""

from __future__ import annotations

from typing import Any

import attrs

from hacore.backends.consensus import ConsensusBackend, ManagedStore
from hacore.backends.declarations import Declarations
from hacore.backends.filesync import FilesyncBackend
from hacore.backends.records import TlsFiles
from hacore.backends.replication import ReplicationBackend
from hacore.backends.services import ServiceBackend
from hacore.config.node import BackendSection, NodeConfig
from hacore.errors import ConfigError
from hacore.plugins.registry import HacorePlugins

#: Where each backend keeps its data under ``node.data_dir``.
REPLICATION_DIR = "replication"
FILESYNC_DIR = "filesync"
STORE_DIR = "store"


@attrs.frozen
class Backends:
    """One node's backends, one per configured family."""

    consensus: ConsensusBackend
    replication: ReplicationBackend
    filesync: FilesyncBackend | None = None
    services: ServiceBackend | None = None
    #: This node's own store server, when hacore runs the store (``consensus.managed``).
    managed_store: ManagedStore | None = None


def tls_argument(
    cls: type[Declarations], tls: TlsFiles | None, what: str, *, required: bool = True
) -> dict[str, Any]:
    """``{"tls": tls}`` for a backend class that declares ``accepts_tls``, or nothing.

    Where TLS is ``required``, a backend without it cannot be part of a cluster that uses TLS,
    which is said here rather than as a ``TypeError`` from deep inside its constructor. Where
    it is only offered (a file sync engine may authenticate its peers itself, as Syncthing
    does), such a backend simply gets nothing.
    """
    if tls is None:
        return {}
    if cls.accepts_tls:
        return {"tls": tls}
    if not required:
        return {}
    raise ConfigError(
        f"the {what} backend does not support TLS (its class does not declare accepts_tls): "
        "use a backend that does, or set tls.enabled: false on every node"
    )


class BackendFactory:
    """Builds each family's backend of one node, picked by name from its configuration."""

    def __init__(
        self, config: NodeConfig, plugins: HacorePlugins, tls: TlsFiles | None = None
    ) -> None:
        self.config = config
        self.registry = plugins.registry
        self.tls = tls

    def replication(self) -> ReplicationBackend:
        section, node = self.replication_section(), self.config.node
        cls = self.registry.replication(section.backend)
        return cls(
            section.settings,
            **tls_argument(cls, self.tls, f"{section.backend} replication"),
            node_name=node.name,
            host=node.host,
            data_dir=node.data_dir / REPLICATION_DIR,
        )

    def replication_section(self) -> BackendSection:
        if self.config.replication is None:
            raise ConfigError(
                "the configuration has no replication section: a node needs a database "
                "backend (replication: {backend: postgresql, ...})"
            )
        return self.config.replication

    def managed_store(self) -> ManagedStore | None:
        """This node's store server, or None when the store is not run by hacore."""
        section, node = self.config.consensus, self.config.node
        if not section.managed:
            return None
        cls = self.registry.managed_store(section.backend)
        return cls(
            section.settings,
            **tls_argument(cls, self.tls, f"{section.backend} store server"),
            name=node.name,
            host=node.host,
            data_dir=node.data_dir / STORE_DIR,
        )

    def consensus(self, managed: ManagedStore | None) -> ConsensusBackend:
        """The store client: of ``managed`` when hacore runs the store, else as configured."""
        section, node, timing = self.config.consensus, self.config.node, self.config.timing
        settings: dict[str, Any] = dict(section.settings)
        if managed is not None:
            settings = managed.client_settings()
        cls = self.registry.consensus(section.backend)
        # An external store has its own CA: its TLS is in its settings, not the cluster's CA.
        tls = self.tls if managed is not None else None
        return cls(
            settings,
            **tls_argument(cls, tls, f"{section.backend} client"),
            namespace=self.config.cluster.namespace,
            node_name=node.name,
            ttl=timing.ttl,
            retry_timeout=timing.retry_timeout,
        )

    def filesync(self) -> FilesyncBackend | None:
        section, node = self.config.filesync, self.config.node
        if section is None:
            return None
        cls = self.registry.filesync(section.backend)
        return cls(
            section.settings,
            **tls_argument(cls, self.tls, f"{section.backend} file sync", required=False),
            node_name=node.name,
            host=node.host,
            data_dir=node.data_dir / FILESYNC_DIR,
            directories=section.directories,
        )

    def services(self) -> ServiceBackend | None:
        section = self.config.services
        if section is None:
            return None
        return self.registry.services(section.backend)(section.settings)


def build_backends(
    config: NodeConfig, plugins: HacorePlugins, tls: TlsFiles | None = None
) -> Backends:
    """Each family's backend; ``tls`` is handed to the database, to a file sync engine that
    takes it, and, when hacore runs the store, to its server and its client."""
    factory = BackendFactory(config, plugins, tls)
    factory.replication_section()  # the one section the agent cannot do without, first
    managed = factory.managed_store()
    consensus = factory.consensus(managed)
    replication = factory.replication()
    return Backends(consensus, replication, factory.filesync(), factory.services(), managed)
