"""hacore: active/hot-standby high availability for manager servers.

The public API is what this module re-exports; everything else may change.
"""

from __future__ import annotations

from hacore.backends.consensus import ConsensusBackend, ManagedStore, Watcher
from hacore.backends.filesync import FilesyncBackend, SyncState
from hacore.backends.health import CheckResult, HealthCheck
from hacore.backends.records import (
    ClusterView,
    EventKind,
    KeyValue,
    Leader,
    Lease,
    Member,
    NodeRole,
    StoreMember,
    TlsFiles,
    WatchEvent,
)
from hacore.backends.replication import (
    ReplicationBackend,
    ReplicationRole,
    ReplicationSource,
    ReplicationStatus,
    StandbyState,
)
from hacore.backends.services import ServiceBackend, ServiceStatus
from hacore.config.node import NodeConfig, load_config
from hacore.config.options import parse_options
from hacore.errors import (
    ConfigError,
    FilesyncError,
    HacoreError,
    ManagedStoreError,
    PromotionVetoedError,
    ReplicationError,
    ServiceError,
    StoreUnavailableError,
    UnknownBackendError,
)
from hacore.plugins.hookspecs import hookimpl, hookspec
from hacore.plugins.registry import BackendRegistry, HacorePlugins, load_plugins

__version__ = "0.1.0"

__all__ = [
    "BackendRegistry",
    "CheckResult",
    "ClusterView",
    "ConfigError",
    "ConsensusBackend",
    "EventKind",
    "FilesyncBackend",
    "FilesyncError",
    "HacoreError",
    "HacorePlugins",
    "HealthCheck",
    "KeyValue",
    "Leader",
    "Lease",
    "ManagedStore",
    "ManagedStoreError",
    "Member",
    "NodeConfig",
    "NodeRole",
    "PromotionVetoedError",
    "ReplicationBackend",
    "ReplicationError",
    "ReplicationRole",
    "ReplicationSource",
    "ReplicationStatus",
    "ServiceBackend",
    "ServiceError",
    "ServiceStatus",
    "StandbyState",
    "StoreMember",
    "StoreUnavailableError",
    "SyncState",
    "TlsFiles",
    "UnknownBackendError",
    "WatchEvent",
    "Watcher",
    "__version__",
    "hookimpl",
    "hookspec",
    "load_config",
    "load_plugins",
    "parse_options",
]
