"""``cluster start``'s seed of the cluster-wide settings (on the in-memory store), and the
record a snapshot carries for it. The whole flow (a snapshot's settings seeded on a
restored node, on real servers) is in tests/integration/test_upgrade_flows.py."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from hacore.agent import keys
from hacore.cluster.cluster_config import seed
from hacore.cluster.snapshot import CLUSTER_WIDE, snapshot_cluster_wide
from hacore.cluster.snapshot_archive import SnapshotError
from hacore.config.cluster_settings import ClusterWide, with_assignments
from hacore.testing.memory import MemoryConsensus, drop_store


@pytest.fixture
def consensus() -> Iterator[MemoryConsensus]:
    name = f"seed-{secrets.token_hex(4)}"
    client = MemoryConsensus({"store": name}, namespace="ns", node_name="a", ttl=5, retry_timeout=1)
    yield client
    client.close()
    drop_store(name)


def test_seed_writes_an_absent_key_once(consensus: MemoryConsensus) -> None:
    first = with_assignments(ClusterWide(), {"parameters.work_mem": "7MB"})
    stored, written = seed(consensus, first, by="n1")
    assert written and stored.settings == first and stored.revision == 1
    kv = consensus.get(keys.SETTINGS_KEY)
    assert kv is not None and keys.StoredSettings.decode(kv.value).settings == first

    # a second seed (a resumed start, the agent's own) changes nothing and says what is there
    other = with_assignments(ClusterWide(), {"timing.ttl": "12"})
    again, written = seed(consensus, other, by="n9")
    assert not written
    assert again.settings == first and again.by == "n1"
    after = consensus.get(keys.SETTINGS_KEY)
    assert after is not None and after.version == kv.version


def test_a_snapshot_record_is_read_back() -> None:
    settings = with_assignments(
        ClusterWide(), {"parameters.work_mem": "7MB", "failover.maximum_lag_on_failover": "99"}
    )
    assert snapshot_cluster_wide({CLUSTER_WIDE: settings.to_mapping()}) == settings


def test_a_snapshot_of_an_earlier_hacore_has_no_record() -> None:
    """Before the record was kept, settings.json held node.yaml's sections of the active,
    not what the store held: no record, so the start seeds the node's own (as it did)."""
    old = {
        "timing": {"ttl": 12.0},
        "replication": {"port": 5432, "parameters": {"work_mem": "9MB"}},
        "cluster": {"name": "old"},
    }
    assert snapshot_cluster_wide(old) is None


def test_an_invalid_snapshot_record_is_refused() -> None:
    with pytest.raises(SnapshotError, match="the snapshot's cluster-wide settings"):
        snapshot_cluster_wide({CLUSTER_WIDE: {"timing": {"ttl": "soon"}}})
