"""hacore: active/hot-standby high availability for manager servers.

The public API is what this module re-exports; everything else may change.
"""

from __future__ import annotations

from hacore.config import NodeConfig, load_config
from hacore.consensus import ConsensusBackend, ManagedStore, Watcher
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
from hacore.filesync import FilesyncBackend, SyncState
from hacore.health import CheckResult, HealthCheck
from hacore.hookspecs import hookimpl, hookspec
from hacore.options import parse_options
from hacore.plugins import BackendRegistry, HacorePlugins, load_plugins
from hacore.records import (
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
from hacore.replication import (
    ReplicationBackend,
    ReplicationSource,
    ReplicationStatus,
    StandbyState,
)
from hacore.services import ServiceBackend, ServiceStatus

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
