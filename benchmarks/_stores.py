"""The store a benchmark's hacore nodes use: a 3-member etcd or a 3-server ZooKeeper ensemble,
started on loopback by the benchmark for each cluster (Patroni always gets etcd).

Both are the test harnesses (:class:`~hacore_plugins.etcd.testing.EtcdHarness`,
:class:`~hacore_plugins.zookeeper.testing.ZooKeeperHarness`), with two changes to ZooKeeper's:
its ``tickTime`` is the one asked for (by default what a managed server runs with at the
timing profile, :data:`~hacore.config.timing.PROFILE_STORE_SETTINGS`), with the session
limits a managed server derives from it, and its servers run with the production JVM options
(transaction log fsynced, as etcd's is), not the tests' ``forceSync=no``: a session's expiry
and the new leader key are writes, and what is timed is the deployment's failover.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from hacore.config.timing import TimingSettings, managed_store_settings
from hacore.testing.harness import ConsensusHarness
from hacore_plugins.etcd.testing import EtcdHarness
from hacore_plugins.zookeeper import server as zk
from hacore_plugins.zookeeper.settings import DEFAULT_TICK_MS
from hacore_plugins.zookeeper.testing import ZooKeeperHarness

BACKENDS = ("etcd", "zookeeper")
LOG_TIME_PROPERTY = "org.slf4j.simpleLogger.dateTimeFormat"
#: the agents' format (Python logging's asctime)
LOG_TIME_FORMAT = "yyyy-MM-dd HH:mm:ss,SSS"


def profile_tick_ms(profile: str) -> int:
    """The ``tick_time_ms`` a managed ZooKeeper server runs with at ``profile``."""
    settings = managed_store_settings({}, TimingSettings(profile=profile), "zookeeper", True)
    return int(settings.get("tick_time_ms", DEFAULT_TICK_MS))


def ticked_zookeeper(workdir: Path, tick_ms: int) -> ZooKeeperHarness:
    """The test ensemble at ``tick_ms``, sessions of 2 ticks to 60 s (a managed server's
    limits), production JVM options, wall-clock times in its log (to set a session's expiry
    beside the agents' logs)."""
    return ZooKeeperHarness(
        workdir,
        limits=zk.ServerLimits(tick_ms=tick_ms, min_session_ms=2 * tick_ms, max_session_ms=60_000),
        jvm_options=zk.DEFAULT_JVM_OPTIONS,
        system_properties={LOG_TIME_PROPERTY: LOG_TIME_FORMAT},
    )


@attrs.frozen
class Store:
    """Which store, and for ZooKeeper its tick."""

    backend: str = "etcd"
    tick_ms: int = DEFAULT_TICK_MS

    @classmethod
    def for_profile(cls, backend: str, profile: str, tick_ms: int | None = None) -> Store:
        return cls(backend, tick_ms or profile_tick_ms(profile))

    def describe(self) -> str:
        if self.backend == "zookeeper":
            return f"3-server ZooKeeper, tickTime {self.tick_ms} ms"
        return "3-member etcd"

    def unavailable(self) -> str | None:
        if self.backend == "zookeeper":
            return ZooKeeperHarness.unavailable_reason()
        return EtcdHarness.unavailable_reason()

    def harness(self, workdir: Path) -> ConsensusHarness:
        if self.backend == "zookeeper":
            return ticked_zookeeper(workdir, self.tick_ms)
        return EtcdHarness(workdir)


#: the store every benchmark ran on before ZooKeeper was a choice, and Patroni's
ETCD = Store()


def consensus(harness: ConsensusHarness) -> dict[str, Any]:
    """The ``consensus`` section of a node reaching the started ``harness``."""
    return {"backend": harness.backend_name, **harness.settings()}
