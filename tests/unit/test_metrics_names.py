"""``/metrics`` as Prometheus users expect it (issue 13.8): counters named ``_total`` and
counting from zero, label sets that do not follow the active, the names ``promtool`` accepts.

The real-cluster side (a Prometheus server scraping through a failover) is
tests/integration/test_prometheus.py; here the collector renders snapshots built by hand.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import Any

import attrs
from prometheus_client.parser import text_string_to_metric_families

from hacore.agent.counters import FAILOVER_REASONS, Event, EventCounters
from hacore.agent.snapshot import NodeSnapshot
from hacore.agent.supervise import ServerStatus
from hacore.agent.vocabulary import NodeState
from hacore.api.metrics import SnapshotCollector, render
from hacore.backends.filesync import FolderSync, SyncState
from hacore.backends.health import CheckResult
from hacore.backends.replication import ReplicationRole, ReplicationStatus, StandbyState
from hacore_plugins.postgresql.backend import _lag_seconds


def snapshot(name: str = "n1", leader: str = "n1", **changes: Any) -> NodeSnapshot:
    counters = EventCounters(checks=["db", "loop"])
    counters.add(Event.PROMOTION)
    counters.add(Event.FAILOVER, "lease_expired")
    counters.add(Event.CHECK_FAILURE, "db", 3)
    counters.add(Event.STORE_ERROR)
    snap = NodeSnapshot(
        name,
        "0.1.0",
        NodeState.ACTIVE if name == leader else NodeState.STANDBY,
        is_active=name == leader,
        leader=leader,
        checks={"db": CheckResult(True, "ok"), "loop": CheckResult(True, "ok")},
        replication=ReplicationStatus(
            True,
            ReplicationRole.PRIMARY,
            writable=True,
            position=5000,
            timeline=2,
            standbys=(
                StandbyState("n2", "streaming", 0, lag_seconds=0.0),
                StandbyState("n3", "streaming", 4096, lag_seconds=1.5),
            ),
            pending_restart=True,
        ),
        events=counters.counts(),
        store_reached_at=time.monotonic() - 7.0,
        last_loop_at=time.monotonic() - 0.5,
        files=SyncState(
            False,
            folders=(FolderSync("hacore-a", True), FolderSync("hacore-b", False, 2048)),
        ),
        servers=(ServerStatus("store", "etcd", up=True, restarts=1),),
    )
    return attrs.evolve(snap, **changes)


def text(snap: NodeSnapshot) -> str:
    return render(SnapshotCollector(lambda: snap)).decode()


def samples(snap: NodeSnapshot) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text(snap)):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_the_events_are_counters_named_total_and_start_at_zero() -> None:
    got = samples(snapshot())
    node = ("node", "n1")
    assert got[("hacore_promotions_total", (node,))] == 1
    assert got[("hacore_demotions_total", (node,))] == 0
    assert got[("hacore_fencings_total", (node,))] == 0
    assert got[("hacore_store_errors_total", (node,))] == 1
    for reason in FAILOVER_REASONS:
        want = 1 if reason == "lease_expired" else 0
        assert got[("hacore_failovers_total", (node, ("reason", reason)))] == want
    assert got[("hacore_check_failures_total", (("check", "db"), node))] == 3
    assert got[("hacore_check_failures_total", (("check", "loop"), node))] == 0
    families = {f.name: f.type for f in text_string_to_metric_families(text(snapshot()))}
    for stem in ("promotions", "demotions", "fencings", "store_errors", "failovers"):
        assert families[f"hacore_{stem}"] == "counter"
    assert "# TYPE hacore_check_failures_total counter" in text(snapshot())


def test_the_new_gauges() -> None:
    got = samples(snapshot())
    node = ("node", "n1")
    assert got[("hacore_replication_lag_seconds", (node, ("standby", "n2")))] == 0.0
    assert got[("hacore_replication_lag_seconds", (node, ("standby", "n3")))] == 1.5
    assert got[("hacore_replication_lag_bytes", (node, ("standby", "n3")))] == 4096
    assert got[("hacore_db_pending_restart", (node,))] == 1
    assert got[("hacore_paused", (node,))] == 0
    assert 7.0 <= got[("hacore_store_contact_age_seconds", (node,))] < 60.0
    assert got[("hacore_filesync_folder_in_sync", (("folder", "hacore-a"), node))] == 1
    assert got[("hacore_filesync_folder_in_sync", (("folder", "hacore-b"), node))] == 0
    assert got[("hacore_filesync_folder_need_bytes", (("folder", "hacore-b"), node))] == 2048
    never = samples(snapshot(store_reached_at=None, files=None))
    assert ("hacore_store_contact_age_seconds", (node,)) not in never
    assert not any(name.startswith("hacore_filesync") for name, _ in never)


def test_a_failover_changes_values_never_series() -> None:
    """The same node before and after another node took over: the same series, so
    ``rate()`` and ``sum by`` span the failover; no label names the active."""
    before = samples(snapshot("n1", leader="n1"))
    after = samples(snapshot("n1", leader="n2"))
    assert set(before) == set(after)
    assert not any(label == "leader" for _, labels in before for label, _ in labels)
    assert before[("hacore_is_active", (("node", "n1"),))] == 1
    assert after[("hacore_is_active", (("node", "n1"),))] == 0


def test_counts_are_a_copy_and_counters_are_shared() -> None:
    counters = EventCounters()
    first = counters.counts()
    counters.add(Event.FENCING)
    counters.add(Event.FAILOVER, "switchover")
    assert first.get(Event.FENCING) == 0
    later = counters.counts()
    assert later.get(Event.FENCING) == 1
    assert dict(later.labelled(Event.FAILOVER))["switchover"] == 1


def test_promtool_finds_no_problem() -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool missing: scripts/setup installs the prometheus package"
    for snap in (snapshot(), snapshot("n2", leader="n1"), NodeSnapshot("n1", "0", NodeState.INIT)):
        checked = subprocess.run(
            [promtool, "check", "metrics"],
            input=text(snap),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert checked.returncode == 0 and not checked.stdout.strip(), checked.stdout


def test_replay_lag_null_once_caught_up_is_zero() -> None:
    assert _lag_seconds({"lag": 0, "lag_s": None}) == 0.0
    assert _lag_seconds({"lag": 100, "lag_s": None}) is None
    assert _lag_seconds({"lag": 100, "lag_s": 0.25}) == 0.25
