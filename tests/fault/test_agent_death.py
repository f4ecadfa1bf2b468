"""Only the active's agent dies or hangs; its PostgreSQL runs on (issue 9, DESIGN rule 6).

The agent's own self-fencing cannot act then: the node's fence keeper (docs/fencing.md) must
stop the primary by the deadline the agent last gave it, which comes ``safety_margin`` before
the lease can expire anywhere else. Two writers witness it: the strict one, and an impatient
one that cancels a write after a client timeout and counts what PostgreSQL reports done (a
cancelled synchronous commit is reported committed). Before the keeper existed the old
primary stayed writable, waiting for a synchronous standby that had been promoted, and the
impatient writer's cancelled commits were lost when it was rewound.

What must hold: no acknowledged write lost (either writer, and the poller's acknowledged
probes); never two nodes writable, nor two agents answering ``/status`` 200, at once; a
positive handover gap; the old primary last seen writable (its last writable sample,
attributed to when its server wrote) at most ``ALLOWANCE`` after its deadline, and so at
most ``ALLOWANCE`` after ``fault + ttl - safety_margin``; a new active taking
writes within ``TAKEOVER_BOUND`` of the fault; one active within ``2 * ttl`` after the agent
comes back; and the old node streaming as a standby.

``HACORE_FAULT_WITHOUT_KEEPER=1`` makes the fault kill the node's keeper too, which is how the
cluster behaved without one: both tests must then fail.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from fault_cluster import (
    TIMING,
    VERDICTS,
    WAIT,
    FaultCluster,
    FaultNode,
    Witnesses,
    assert_everywhere,
    assert_fenced_by,
    assert_one_writer,
    assert_safe,
    explain,
    judge,
)

from hacore.agent.keeper import RECORD_FILE, read_record
from hacore.testing.procs import pid_alive, wait_for

pytestmark = [pytest.mark.fault, pytest.mark.root, pytest.mark.slow]

TTL = TIMING["ttl"]
MARGIN = TIMING["safety_margin"]
#: the impatient writer's client-side timeout
CLIENT_TIMEOUT = 1.0
#: How long after the agent's deadline the old primary may still be seen writable: the
#: keeper's 0.1 s poll, its role query and the fence's signal, plus one 0.1 s poller sample,
#: on a busy two-core machine. Below ``safety_margin``: the primary stops before the lease
#: can expire on the others.
ALLOWANCE = 1.0
#: A new active must take writes this soon after the fault: the design's failover takes
#: about ttl + loop_wait (the lease must expire first), generous for a loaded two-core machine
#: where the store itself answers late.
TAKEOVER_BOUND = 3 * TTL
WITHOUT_KEEPER = os.environ.get("HACORE_FAULT_WITHOUT_KEEPER") == "1"


def only_one_active(cluster: FaultCluster) -> str | None:
    active = [name for name, code in cluster.codes("/status").items() if code == 200]
    return active[0] if len(active) == 1 else None


def last_writable(w: Witnesses, node: str, since: float) -> float | None:
    """The end of the attributed interval of ``node``'s last writable sample."""
    rows = [s for s in w.poller.samples()[node] if s.writable and s.at_to >= since]
    return max((s.at_to for s in rows), default=None)


def agent_fault(cluster: FaultCluster, sig: signal.Signals) -> None:
    """SIGKILL (then restart) or SIGSTOP (then SIGCONT) the active's agent process alone."""
    assert ALLOWANCE < MARGIN
    run = f"agent-{sig.name.lower()}"
    with cluster.witnesses(run, impatient=CLIENT_TIMEOUT) as w:
        old: FaultNode = w.active
        assert old.proc is not None and old.proc.proc is not None
        impatient = w.impatient
        assert impatient is not None
        w.wait_acks(old.name, 20)
        keeper = old.keeper()
        assert keeper is not None, f"{old.name}'s agent runs no fence keeper"
        agent = old.proc.pid
        assert agent is not None
        fault_at = time.monotonic()
        os.kill(agent, sig)  # the agent's pid only: its database, store and keeper run on
        if WITHOUT_KEEPER:
            os.kill(keeper, signal.SIGKILL)
        try:
            record = read_record(old.data_dir / RECORD_FILE)
            assert record is not None and record.holds and record.deadline is not None, (
                f"{old.name}'s agent left no deadline for its keeper: {record}"
            )
            deadline = record.deadline
            assert deadline <= fault_at + TTL - MARGIN, (
                f"the keeper's deadline is {deadline - fault_at:.2f}s after the fault: later than "
                f"the last renewal's ttl - safety_margin ({TTL - MARGIN}s)"
            )
            found = wait_for(
                lambda: w.acking_other_than(old.name, fault_at),
                WAIT,
                interval=0.1,
                what="another node to take writes",
            )
            new = str(found)
            # the agent stays out well past the takeover: the window the defect lost writes in
            time.sleep(max(fault_at + TTL + 3.0, time.monotonic() + 3.0) - time.monotonic())
            if sig is signal.SIGKILL and not WITHOUT_KEEPER:
                wait_for(
                    lambda: not pid_alive(keeper),
                    10.0,
                    what="the keeper to exit once its dead agent's deadline was enforced",
                )
            elif not WITHOUT_KEEPER:
                assert pid_alive(keeper), "the keeper of a hung agent must stay"
        finally:
            ended_at = time.monotonic()
            if sig is signal.SIGSTOP:
                os.kill(agent, signal.SIGCONT)
            else:
                old.proc.proc.wait(timeout=30)
                old.launch()
        wait_for(
            lambda: only_one_active(cluster),
            2 * TTL,
            interval=0.2,
            what=f"one active within 2 x ttl after {old.name}'s agent came back",
        )
        active, _ = cluster.wait_healthy()
        assert active == new, f"{active} is active after {old.name}'s agent came back, not {new}"
        w.wait_acks(new, 20, after=time.monotonic())
        wait_for(
            lambda: sum(1 for a in impatient.acks() if a.node == new) >= 20,
            WAIT,
            interval=0.1,
            what=f"the impatient writer's writes acknowledged by {new}",
        )
        assert old.keeper() is not None, f"{old.name}'s agent did not start a new keeper"
    strict = judge(f"{run} strict writer", cluster, w, fault_at, new)
    cancels = judge(f"{run} impatient writer", cluster, w, fault_at, new, writer=impatient)
    cancelled = [a for a in impatient.acks() if a.cancelled]
    last = last_writable(w, old.name, fault_at)
    VERDICTS.append(
        f"[{run}] deadline {deadline - fault_at:.2f}s after the fault; old primary last seen "
        f"writable {'-' if last is None else f'{last - fault_at:.2f}s'}; "
        f"{len(cancelled)} cancelled commits reported done"
    )
    why = lambda: explain(cluster, w, fault_at)  # noqa: E731
    assert_safe(strict, why)
    assert_safe(cancels, lambda: explain(cluster, w, fault_at, writer=impatient))
    assert_one_writer(strict, why)
    assert last is not None and last <= deadline + ALLOWANCE, (
        f"{old.name} was still writable {(last or 0) - deadline:.2f}s after its agent's "
        f"deadline (allowance {ALLOWANCE}s, ended the fault {ended_at - fault_at:.1f}s after "
        f"it began)\n" + why()
    )
    # and so before the lease can expire on the others: the deadline is not later than that
    assert_fenced_by(strict, TTL - MARGIN, ALLOWANCE, why)
    assert strict.takeover_s is not None and strict.takeover_s <= TAKEOVER_BOUND, (
        f"no new active took writes within {TAKEOVER_BOUND}s ({strict.takeover_s}s)\n"
        + explain(cluster, w, fault_at)
    )
    assert_everywhere(cluster, w)
    assert_everywhere(cluster, w, writer=impatient)


def test_a_killed_agent_s_primary_is_fenced_by_its_keeper(cluster: FaultCluster) -> None:
    """SIGKILL of the active's agent; it is restarted once another node took over."""
    agent_fault(cluster, signal.SIGKILL)


def test_a_hung_agent_s_primary_is_fenced_by_its_keeper(cluster: FaultCluster) -> None:
    """SIGSTOP of the active's agent for longer than the ttl, then SIGCONT: it must find its
    database fenced and come back as a standby."""
    agent_fault(cluster, signal.SIGSTOP)
