"""Real network faults on a real 3-node cluster, judged by a checker of writes and writers.

The nodes are network namespaces (``fault_cluster``); faults are nftables rules in a node's
namespace. While each fault runs, a writer inserts sequential rows the way the manager's own
services would, and a poller asks every database ten times a second whether it takes writes
(``hacore.testing.checker``). Each test starts from a whole cluster (one active, two streaming
standbys, one of them synchronous: ``synchronous_mode: on``) and leaves it whole again, so
the tests do not depend on their order; they share one cluster per module.

What must hold (DESIGN §3): no acknowledged write is lost; two nodes never take writes at the
same moment (the old active fences itself before its lease can expire, so a new active is
only writable after the old one stopped); the old active comes back as a streaming standby.
"""

from __future__ import annotations

import itertools
import signal
import time

import pytest
from fault_cluster import (
    PG_PORT,
    TIMING,
    VERDICTS,
    WAIT,
    FaultCluster,
    assert_everywhere,
    assert_safe,
    explain,
    judge,
)

from hacore.testing.procs import wait_for

pytestmark = [pytest.mark.fault, pytest.mark.root, pytest.mark.slow]

TTL = TIMING["ttl"]
MARGIN = TIMING["safety_margin"]


def test_an_isolated_active_fences_itself_and_a_standby_takes_over(
    cluster: FaultCluster,
) -> None:
    """The active loses every link (store, standbys, clients over the network)."""
    with cluster.witnesses("isolate") as w:
        old = w.active
        w.wait_acks(old.name, 20)
        fault_at = time.monotonic()
        cluster.net.isolate(old.host)
        try:
            found = wait_for(
                lambda: w.acking_other_than(old.name, fault_at),
                WAIT,
                interval=0.1,
                what="another node to take writes",
            )
            new = str(found)
            w.wait_not_writable(old.name, fault_at)
            w.wait_acks(new, 20, after=fault_at)
        finally:
            cluster.net.heal(old.host)
        active, _ = cluster.wait_healthy()
        assert active == new, f"{active} is active after the heal, not {new}"
        w.wait_acks(new, 20, after=time.monotonic())
    verdict = judge("isolate active", cluster, w, fault_at, new)
    assert_safe(verdict, lambda: explain(cluster, w, fault_at))
    assert not verdict.overlaps_rw, (
        f"the old active was writable while {new} was: {verdict.overlaps_rw[:5]}\n"
        + explain(cluster, w, fault_at)
    )
    assert verdict.fence_s is not None and verdict.fence_s <= TTL + MARGIN, (
        f"{old.name} fenced {verdict.fence_s}s after losing the store (ttl {TTL})\n"
        + explain(cluster, w, fault_at)
    )
    assert verdict.handover_gap_s is not None and verdict.handover_gap_s > 0
    assert_everywhere(cluster, w)


class WritesStalled(AssertionError):
    """Writes stopped for longer than the availability bound (safety held)."""


#: Writes must resume within this long of a fault that leaves a majority and an active
#: whole: generous (the design's failover takes about ttl + loop_wait) for a busy machine.
STALL_BOUND = 2 * TTL
HOLD = STALL_BOUND + 2.0


@pytest.mark.parametrize(
    "ports", [pytest.param((), id="all-traffic"), pytest.param((PG_PORT,), id="database-only")]
)
def test_cutting_the_active_from_its_synchronous_standby_keeps_one_writer(
    cluster: FaultCluster, ports: tuple[int, ...]
) -> None:
    """An asymmetric fault: the active and its synchronous standby lose each other (all
    traffic, or only the database's); both still reach the third node, so there is a store
    majority and a standby to replicate to. One writer throughout, nothing lost, and writes
    go on (after at most ``STALL_BOUND``)."""
    with cluster.witnesses("cut-" + ("db" if ports else "all")) as w:
        old = w.active
        sync = w.sync
        w.wait_acks(old.name, 20)
        fault_at = time.monotonic()
        cluster.net.cut(old.host, sync.host, ports=ports)
        try:
            time.sleep(HOLD)
        finally:
            healed_at = time.monotonic()
            cluster.net.heal(old.host)
        # a heal can disturb the store too (the cut member rejoins): keep watching
        time.sleep(TTL)
        active, _ = cluster.wait_healthy()
        w.wait_acks(active, 20, after=time.monotonic())
        ended_at = time.monotonic()
    verdict = judge(f"cut active-sync {ports or 'all'}", cluster, w, fault_at, active)
    assert_safe(verdict, lambda: explain(cluster, w, fault_at))
    assert not verdict.overlaps_rw, (
        f"two nodes were writable at once: {verdict.overlaps_rw[:5]}\n"
        + explain(cluster, w, fault_at)
    )
    assert_everywhere(cluster, w)
    during = [a.at for a in w.writer.acks() if fault_at < a.at < ended_at]
    stall = max(b - a for a, b in itertools.pairwise([fault_at, *during, ended_at]))
    if stall > STALL_BOUND:
        raise WritesStalled(
            f"no write acknowledged for {stall:.1f}s after {old.name} was cut from "
            f"{sync.name} ({ports or 'all traffic'}, healed after {healed_at - fault_at:.1f}s); "
            f"bound {STALL_BOUND}s\n" + explain(cluster, w, fault_at)
        )


def test_a_frozen_active_takes_no_write_after_it_thaws(cluster: FaultCluster) -> None:
    """Every process of the active's host is SIGSTOPped for longer than the TTL (a VM pause),
    then resumed: a standby took over meanwhile, so the old active must fence itself before
    it acknowledges anything, and come back as a standby."""
    with cluster.witnesses("freeze") as w:
        old = w.active
        w.wait_acks(old.name, 20)
        fault_at = time.monotonic()
        frozen = cluster.net.signal_host(old.host, signal.SIGSTOP)
        try:
            found = wait_for(
                lambda: w.acking_other_than(old.name, fault_at),
                WAIT,
                interval=0.1,
                what="another node to take writes",
            )
            new = str(found)
            # stay frozen past the old lease's expiry by a clear margin
            time.sleep(max(0.0, fault_at + TTL + 2.0 - time.monotonic()))
        finally:
            thawed_at = time.monotonic()
            cluster.net.signal_host(old.host, signal.SIGCONT)
        assert frozen, "no process to freeze on the active's host"
        fenced_at = w.wait_not_writable(old.name, thawed_at)
        active, _ = cluster.wait_healthy()
        assert active == new, f"{active} is active after the thaw, not {new}"
        w.wait_acks(new, 20, after=time.monotonic())
    verdict = judge("freeze active", cluster, w, fault_at, new)
    VERDICTS.append(f"[freeze active] fenced {fenced_at - thawed_at:.2f}s after the thaw")
    assert_safe(verdict, lambda: explain(cluster, w, fault_at))
    # a probe sent once the host froze runs when it thaws: none may be acknowledged
    late = [s for s in w.poller.samples()[old.name] if s.start > fault_at and s.state == "acks"]
    assert not late, f"{old.name} acknowledged writes after it thawed: {late[:3]}\n" + explain(
        cluster, w, fault_at
    )
    assert_everywhere(cluster, w)
