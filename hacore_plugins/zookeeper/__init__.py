"""The ZooKeeper reference plugin: consensus on ZooKeeper 3.6+ and managed ZooKeeper servers.

Needs the ``zookeeper`` extra (kazoo). The servers must be ZooKeeper 3.6 or newer, for
persistent recursive watches; the managed store runs ``java`` with ZooKeeper's jars.
"""

from __future__ import annotations

import logging

from hacore.plugins.hookspecs import hookimpl
from hacore.plugins.registry import BackendRegistry

log = logging.getLogger(__name__)


@hookimpl
def hacore_register_backends(registry: BackendRegistry) -> None:
    """Register the backend, the managed store and the test harness (when kazoo is installed)."""
    try:
        from hacore_plugins.zookeeper.backend import ZooKeeperConsensus
        from hacore_plugins.zookeeper.managed import ZooKeeperManagedStore
    except ImportError as exc:
        log.debug("zookeeper backend not available: %s", exc)
        why = f"{exc.name or exc} is missing: pip install 'hacore[zookeeper]'"
        for family in ("consensus", "managed_store", "test_harness"):
            registry.add_missing(family, "zookeeper", why)
        return
    registry.add_consensus("zookeeper", ZooKeeperConsensus)
    registry.add_managed_store("zookeeper", ZooKeeperManagedStore)
    registry.add_test_harness("zookeeper", "hacore_plugins.zookeeper.testing:ZooKeeperHarness")
