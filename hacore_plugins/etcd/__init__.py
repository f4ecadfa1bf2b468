"""The etcd reference plugin: consensus through etcd's v3 JSON gateway, and a managed etcd."""

from __future__ import annotations

from hacore.plugins.hookspecs import hookimpl
from hacore.plugins.registry import BackendRegistry
from hacore_plugins.etcd.backend import EtcdConsensus
from hacore_plugins.etcd.managed import EtcdManagedStore

__all__ = ["EtcdConsensus", "EtcdManagedStore"]


@hookimpl
def hacore_register_backends(registry: BackendRegistry) -> None:
    registry.add_consensus("etcd", EtcdConsensus)
    registry.add_managed_store("etcd", EtcdManagedStore)
    registry.add_test_harness("etcd", "hacore_plugins.etcd.testing:EtcdHarness")
