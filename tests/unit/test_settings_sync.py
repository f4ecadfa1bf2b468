"""The agent's side of the cluster-wide settings, on the in-memory store: the active seeds an
absent key, every agent follows a changed one (what cannot change under a running agent is
reported as waiting for a restart), and node.yaml's disagreement is logged once per key.
The PostgreSQL parameters are applied on real servers in
tests/integration/test_cluster_config.py."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from typing import Any, cast

import pytest

from hacore.agent import keys
from hacore.agent.hooks import NodeLog
from hacore.agent.observe import StoreReading, read_store
from hacore.agent.settings_sync import SettingsSync
from hacore.backends.replication import ReplicationBackend
from hacore.config.cluster_settings import ClusterWide, with_assignments
from hacore.config.node import NodeConfig, load_config
from hacore.testing.memory import MemoryConsensus, drop_store


@pytest.fixture
def store() -> Iterator[tuple[NodeConfig, MemoryConsensus]]:
    name = f"settings-{secrets.token_hex(4)}"
    config = load_config(
        {
            "node": {"name": "a", "host": "127.0.0.1", "data_dir": "/tmp/unused"},
            "consensus": {"backend": "memory", "settings": {"store": name}},
            "failover": {"maximum_lag_on_failover": 100},
        }
    )
    consensus = MemoryConsensus(
        {"store": name}, namespace="ns", node_name="a", ttl=5, retry_timeout=1
    )
    yield config, consensus
    consensus.close()
    drop_store(name)


def _reading(consensus: MemoryConsensus) -> StoreReading:
    return read_store(consensus, lease=None, last_renewal=None, gate=None, retry_timeout=1.0)


def _sync(config: NodeConfig, consensus: MemoryConsensus) -> SettingsSync:
    # parameters never change here, so the replication backend is never called
    replication = cast(ReplicationBackend, None)
    return SettingsSync(config, consensus, replication, NodeLog(logging.getLogger("t"), "a"))


def _direct(call: Any) -> object:
    return call()


def _store(consensus: MemoryConsensus, settings: ClusterWide, revision: int) -> None:
    record = keys.StoredSettings(settings, revision=revision, by="test")
    assert consensus.put(keys.SETTINGS_KEY, record.encode())


def test_only_the_active_seeds_an_absent_key(
    store: tuple[NodeConfig, MemoryConsensus],
) -> None:
    config, consensus = store
    sync = _sync(config, consensus)
    assert sync.step(_reading(consensus), active=False, busy=False, call=_direct) is None
    assert consensus.get(keys.SETTINGS_KEY) is None
    assert sync.step(_reading(consensus), active=True, busy=False, call=_direct) is None
    kv = consensus.get(keys.SETTINGS_KEY)
    assert kv is not None
    seeded = keys.StoredSettings.decode(kv.value)
    assert (seeded.revision, seeded.by) == (1, "a")
    assert seeded.settings == ClusterWide.from_config(config)
    # read back: nothing to apply, and a second seed writes nothing
    assert sync.step(_reading(consensus), active=True, busy=False, call=_direct) is None
    assert sync.json() == {"revision": 1, "restart_pending": []}
    after = consensus.get(keys.SETTINGS_KEY)
    assert after is not None and after.version == kv.version


def test_a_change_is_followed_and_timing_waits_for_a_restart(
    store: tuple[NodeConfig, MemoryConsensus], caplog: pytest.LogCaptureFixture
) -> None:
    config, consensus = store
    sync = _sync(config, consensus)
    changed = with_assignments(
        ClusterWide.from_config(config),
        {"failover.maximum_lag_on_failover": "5", "timing.loop_wait": "0.5"},
    )
    _store(consensus, changed, 2)
    with caplog.at_level(logging.INFO):
        new = sync.step(_reading(consensus), active=False, busy=False, call=_direct)
    assert new is not None
    assert new.failover.maximum_lag_on_failover == 5
    assert new.timing == config.timing
    assert new.node == config.node
    assert sync.json() == {"revision": 2, "restart_pending": ["timing.loop_wait"]}
    told = [r.getMessage() for r in caplog.records if "comes from the store" in r.getMessage()]
    assert told == [
        "a: cluster-wide setting failover.maximum_lag_on_failover comes from the store "
        "(node.yaml differs)",
        "a: cluster-wide setting timing.loop_wait comes from the store (node.yaml differs)",
    ]
    caplog.clear()
    again = with_assignments(changed, {"checks.check_fail_fast": "false"})
    _store(consensus, again, 3)
    with caplog.at_level(logging.INFO):
        newer = sync.step(_reading(consensus), active=False, busy=False, call=_direct)
    assert newer is not None and newer.checks.check_fail_fast is False
    assert newer.failover.maximum_lag_on_failover == 5
    told = [r.getMessage() for r in caplog.records if "comes from the store" in r.getMessage()]
    assert told == [
        "a: cluster-wide setting checks.check_fail_fast comes from the store (node.yaml differs)"
    ]


def test_an_unreadable_key_is_never_overwritten(
    store: tuple[NodeConfig, MemoryConsensus],
) -> None:
    config, consensus = store
    assert consensus.put(keys.SETTINGS_KEY, b'{"settings": {"timing": {"ttl": -1}}}')
    sync = _sync(config, consensus)
    reading = _reading(consensus)
    assert reading.settings is None and reading.settings_version != 0
    assert sync.step(reading, active=True, busy=False, call=_direct) is None
    kv = consensus.get(keys.SETTINGS_KEY)
    assert kv is not None and b"-1" in kv.value
