"""Failsafe mode (issue 9, point 6): the whole store frozen under a running cluster.

Every node's managed etcd member is SIGSTOPped at once, so no agent can reach the store while
every agent still reaches the others over the API. With ``failover.failsafe_mode: on`` the
active asks every member to confirm it each loop and, with every confirmation, stays active
past its lease's deadline: no fence, no failover, the (synchronous) writes go on. With one
standby's agent killed as well, a confirmation is missing and the active fences by its lease's
deadline as without failsafe. Failsafe off (the default): the active fences by that deadline.

What must hold in every case: no acknowledged write lost, never two nodes writable, and one
active within ``2 * ttl`` after the store is thawed. The module forms its own cluster with
failsafe on (the harness's configuration plus that one setting), and restarts its agents
with it off for the last test.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator

import checker
import httpx
import pytest
import yaml
from fault_cluster import (
    TIMING,
    VERDICTS,
    WAIT,
    FaultCluster,
    FaultNode,
    Witnesses,
    assert_everywhere,
    assert_one_writer,
    assert_safe,
    explain,
    judge,
)
from netns import Network

from hacore.testing.procs import wait_for

pytestmark = [pytest.mark.fault, pytest.mark.root, pytest.mark.slow]

TTL = TIMING["ttl"]
MARGIN = TIMING["safety_margin"]
#: as in test_partitions: the fence's signal, the keeper's poll, one poller sample
ALLOWANCE = 1.0
#: ``HACORE_FAULT_WITHOUT_FAILSAFE=1`` forms the cluster with failsafe off: the first test
#: must then fail (the active fences), which is how the cluster behaved before failsafe mode
WITHOUT_FAILSAFE = os.environ.get("HACORE_FAULT_WITHOUT_FAILSAFE") == "1"
#: the failover settings every agent is (re)started with
FAILOVER: dict[str, str] = {"failsafe_mode": "on"}


class FailsafeNode(FaultNode):
    """The harness's node with :data:`FAILOVER` merged into its configuration."""

    def write_config(self) -> None:
        super().write_config()
        raw = yaml.safe_load(self.config_path.read_text())
        raw.setdefault("failover", {}).update(FAILOVER)
        self.config_path.write_text(yaml.safe_dump(raw))


@pytest.fixture(scope="module")
def cluster(
    fault_network: Network, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultCluster]:
    FAILOVER["failsafe_mode"] = "off" if WITHOUT_FAILSAFE else "on"
    fault_network.heal()
    cluster = FaultCluster(fault_network)
    cluster.nodes = {
        name: FailsafeNode(n.name, n.host, n.root, n.namespace) for name, n in cluster.nodes.items()
    }
    try:
        cluster.form()
        yield cluster
    finally:
        _thaw(cluster)
        fault_network.heal()
        cluster.cleanup(keep_logs=tmp_path_factory.mktemp("failsafe-logs"))


def _stores(cluster: FaultCluster) -> dict[str, int]:
    pids = {name: node.store_server() for name, node in cluster.nodes.items()}
    missing = [name for name, pid in pids.items() if pid is None]
    assert not missing, f"no managed etcd member running on {missing}"
    return {name: pid for name, pid in pids.items() if pid is not None}


def _freeze(cluster: FaultCluster) -> dict[str, int]:
    stores = _stores(cluster)
    for pid in stores.values():
        os.kill(pid, signal.SIGSTOP)
    return stores


def _thaw(cluster: FaultCluster, stores: dict[str, int] | None = None) -> None:
    for name, node in cluster.nodes.items():
        pid = (stores or {}).get(name) or node.store_server()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def only_one_active(cluster: FaultCluster) -> str | None:
    active = [name for name, code in cluster.codes("/status").items() if code == 200]
    return active[0] if len(active) == 1 else None


def failsafe_of(node: FaultNode) -> dict[str, object] | None:
    try:
        body = httpx.get(f"http://{node.address}/status", timeout=2.0).json()
    except (httpx.HTTPError, ValueError):
        return None
    found = body.get("failsafe")
    return found if isinstance(found, dict) else None


def not_writable_during(w: Witnesses, node: str, start: float, end: float) -> list[str]:
    return [
        f"{s.start - start:+.2f}s {s.state}"
        for s in w.poller.samples()[node]
        if start < s.start < end and not s.writable and s.state != checker.UNKNOWN
    ]


def writable_during(w: Witnesses, node: str, start: float, end: float) -> list[str]:
    return [
        f"{s.start - start:+.2f}s {s.state}"
        for s in w.poller.samples()[node]
        if s.writable and start < s.at_from < end
    ]


def back_to_one_active(cluster: FaultCluster, thawed_at: float, what: str) -> str:
    found = wait_for(
        lambda: only_one_active(cluster),
        2 * TTL,
        interval=0.2,
        what=f"one active within 2 x ttl after {what}",
    )
    assert time.monotonic() - thawed_at <= 2 * TTL + 1.0
    return str(found)


def test_failsafe_keeps_the_active_through_a_whole_store_outage(cluster: FaultCluster) -> None:
    """(a) Every store member frozen for 2 x ttl: the members confirm the active, which
    stays writable with no fence and no failover; after the thaw it is still the one active."""
    run = "failsafe-store-frozen"
    with cluster.witnesses(run) as w:
        old = w.active
        w.wait_acks(old.name, 20)
        fault_at = time.monotonic()
        stores = _freeze(cluster)
        try:
            # past the lease's own deadline, the active must be holding on its confirmations
            time.sleep(TTL)
            fenced = not_writable_during(w, old.name, fault_at, time.monotonic())
            assert not fenced, (
                f"{old.name} stopped taking writes {TTL}s into the outage (past its lease's "
                f"deadline): {fenced[:5]}\n" + explain(cluster, w, fault_at)
            )
            seen = failsafe_of(old)
            assert seen is not None and seen.get("holding") is True, (
                f"{old.name} does not report failsafe holding {TTL}s into the outage: {seen}\n"
                + cluster.log_tails(20)
            )
            promises = {n: failsafe_of(cluster.nodes[n]) for n in cluster.nodes if n != old.name}
            assert all(p is not None and p.get("promise") for p in promises.values()), promises
            listed = json.loads(cluster.cli("cluster", "nodes", "list", "--json").output)
            row = next(r for r in listed["nodes"] if r["name"] == old.name)
            assert (row.get("failsafe") or {}).get("holding") is True, row
            time.sleep(max(0.0, fault_at + 2 * TTL - time.monotonic()))
            w.wait_acks(old.name, 20, after=fault_at + TTL, timeout=5.0)
        finally:
            thawed_at = time.monotonic()
            _thaw(cluster, stores)
        active = back_to_one_active(cluster, thawed_at, "the store thawed")
        assert active == old.name, f"{active} became active: a failover, not failsafe"
        active, _ = cluster.wait_healthy()
        w.wait_acks(active, 20, after=time.monotonic())
    verdict = judge(f"{run} strict writer", cluster, w, fault_at, old.name)
    why = lambda: explain(cluster, w, fault_at)  # noqa: E731
    assert_safe(verdict, why)
    assert_one_writer(verdict, why)
    fenced = not_writable_during(w, old.name, fault_at, thawed_at)
    assert not fenced, f"{old.name} stopped taking writes during the outage: {fenced[:5]}\n{why()}"
    assert w.acking_other_than(old.name, fault_at) is None, "another node took writes"
    VERDICTS.append(f"[{run}] stayed active {thawed_at - fault_at:.1f}s on confirmations")
    assert_everywhere(cluster, w)


def _fenced_by_its_deadline(cluster: FaultCluster, run: str, kill_agent: bool) -> None:
    with cluster.witnesses(run) as w:
        old = w.active
        w.wait_acks(old.name, 20)
        victim = next(n for n in cluster.nodes.values() if n.name not in (old.name, w.sync.name))
        fault_at = time.monotonic()
        if kill_agent:
            assert victim.proc is not None and victim.proc.pid is not None
            os.kill(victim.proc.pid, signal.SIGKILL)
        stores = _freeze(cluster)
        try:
            fenced_at = w.wait_not_writable(old.name, fault_at, timeout=TTL + 5.0)
            time.sleep(max(0.0, fault_at + TTL + 1.0 - time.monotonic()))
        finally:
            thawed_at = time.monotonic()
            _thaw(cluster, stores)
            if kill_agent and victim.proc is not None and victim.proc.proc is not None:
                victim.proc.proc.wait(timeout=30)
                victim.launch()
        new = back_to_one_active(cluster, thawed_at, "the store thawed")
        active, _ = cluster.wait_healthy()
        w.wait_acks(active, 20, after=time.monotonic())
    verdict = judge(f"{run} strict writer", cluster, w, fault_at, active)
    why = lambda: explain(cluster, w, fault_at)  # noqa: E731
    assert_safe(verdict, why)
    assert_one_writer(verdict, why)
    # by the lease's deadline (the last renewal before the fault + ttl - margin), and not
    # writable again until the store was back (then it may find its lease still held)
    limit = TTL - MARGIN + ALLOWANCE
    assert fenced_at - fault_at <= limit, (
        f"{old.name} first seen fenced {fenced_at - fault_at:.2f}s after the fault, later "
        f"than its lease's deadline + allowance ({limit}s)\n{why()}"
    )
    late = writable_during(w, old.name, fault_at + limit, thawed_at)
    assert not late, f"{old.name} writable past its deadline: {late[:5]}\n{why()}"
    VERDICTS.append(
        f"[{run}] fenced {fenced_at - fault_at:.2f}s after the fault; {new} active after the thaw"
    )
    assert_everywhere(cluster, w)


def test_one_member_missing_means_the_active_fences_as_without_failsafe(
    cluster: FaultCluster,
) -> None:
    """(b) Store frozen and one standby's agent killed: not every member confirms, so the
    active fences by its lease's deadline."""
    _fenced_by_its_deadline(cluster, "failsafe-member-missing", kill_agent=True)


def test_failsafe_off_fences_the_active_when_the_store_freezes(cluster: FaultCluster) -> None:
    """(c) The default: every agent restarted with failsafe off, store frozen: the active
    fences by its lease's deadline.

    failsafe_mode is a cluster-wide setting (docs/configuration.md): it is changed in the
    store with ``cluster config set`` and takes effect as each agent restarts; node.yaml is
    changed too, so that it agrees."""
    cluster.cli("cluster", "config", "set", "failover.failsafe_mode=off")
    FAILOVER["failsafe_mode"] = "off"
    active = cluster.codes_active()
    # standbys first, the active last: its clean stop hands over to a running standby
    for node in sorted(cluster.nodes.values(), key=lambda n: n.name == active):
        assert node.proc is not None
        node.proc.stop(signal.SIGTERM, timeout=WAIT)
        node.launch()
        node.wait_up()
        cluster.wait_healthy()
    for node in cluster.nodes.values():
        assert "failsafe_mode: 'off'" in node.config_path.read_text()
        assert failsafe_of(node) is None, f"{node.name} still runs with failsafe on"
    _fenced_by_its_deadline(cluster, "failsafe-off", kill_agent=False)
