"""In-process agents on real PostgreSQL servers: forming a cluster, failover, switchover,
vetoes, crashes in the middle of a promotion, and self-fencing when the store stops answering.

These are the fast, unit-level variants (hence ``_in_process`` in every name): the agents run
as objects in this process, a "kill" stops a loop cooperatively and the hooks are an
in-process recorder. The same promises proven with real ``hacore agent run`` processes on a
real etcd, with SIGKILL and SIGSTOP (host death with a writer, fencing when the store freezes
bounded on the last writable sample, SIGKILL in the middle of a promotion, a veto and the hook
order through a real hook plugin) live in test_agent_real.py.

Three agents run in this process, each with its own data directory and PostgreSQL port; the
first node is bootstrapped as ``cluster start`` would, the other two clone themselves. The
store is the in-memory one (fast, and it can be frozen) for most tests, and a real 3-member
etcd and ZooKeeper ensemble for a kill -9 failover. Synchronous mode is on: a failover must
keep every acknowledged write.

The tests of the memory cluster share it and run in file order; each begins by waiting for
the cluster to converge (one active, every other node streaming from it), so none depends on
which node another test left active.
"""

from __future__ import annotations

import gc
import secrets
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
from agent_fixtures import (
    WAIT,
    AgentCluster,
    AgentKilled,
    Node,
    Writer,
    insert,
    is_state,
    make_root,
    notes,
    running_cluster,
    until,
    wait_note,
)

from hacore.agent import interpreter, keys
from hacore.agent.vocabulary import NodeState
from hacore.backends.records import NodeRole
from hacore.testing.harness import ConsensusHarness
from hacore.testing.memory import drop_store, get_store
from hacore.testing.pytest_plugin import run_harness
from hacore_plugins.etcd.testing import EtcdHarness
from hacore_plugins.postgresql.settings import default_bin_dir
from hacore_plugins.zookeeper.testing import ZooKeeperHarness

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(default_bin_dir() is None, reason="no PostgreSQL binaries installed"),
]

TTL = 6.0
SAFETY_MARGIN = 1.5


@pytest.fixture(scope="module")
def cluster() -> Iterator[AgentCluster]:
    store = f"agents-{uuid.uuid4().hex}"
    yield from running_cluster(make_root(), {"store": store}, backend="memory")
    get_store(store).thaw()
    drop_store(store)


def standbys(cluster: AgentCluster, leader: Node) -> list[Node]:
    return [n for n in cluster.nodes.values() if n is not leader]


def test_cluster_forms_with_clones_made_by_the_agents_in_process(cluster: AgentCluster) -> None:
    leader = cluster.wait_converged()
    assert leader.name == "n1", "the bootstrapped node must be the first active"
    others = standbys(cluster, leader)
    for node in others:
        assert node.pg.is_initialized()
        assert node.snapshot().state is NodeState.STANDBY
        # EMPTY -> CLONE was decided by the agent itself.
        assert "membership_changed" in node.recorder.names()
    assert leader.recorder.names().count("after_promote") == 1
    assert ("role_changed", (NodeRole.STARTING, NodeRole.ACTIVE)) in leader.recorder.calls

    members = {m.name: m for m in leader.agent.consensus.members()}
    assert {m.role for m in members.values()} == {NodeRole.ACTIVE, NodeRole.STANDBY}
    assert members["n1"].role is NodeRole.ACTIVE and members["n1"].healthy
    assert members["n1"].extra["replication"]["port"] == leader.pg.config.port

    token = leader.snapshot().lease_token
    assert token is not None and leader.pg.fencing_token() == token
    history = leader.agent.consensus.get(keys.history_key(token))
    assert history is not None and keys.HistoryEntry.decode(history.value).node == "n1"

    sync = cluster.sync_standby()
    assert sync in {n.name for n in others}
    # each standby publishes its candidacy: in synchronous mode only the synchronous one
    until(
        lambda: (
            {m.name for m in leader.agent.consensus.members() if m.candidate and m.name != "n1"}
            == {sync}
        ),
        "only the synchronous standby is published as a candidate",
    )
    insert(leader, "formed")
    for node in others:
        wait_note(node, "formed")

    # /cluster is served from what the loop last read: it shows the key one loop later.
    until(lambda: leader.agent.cluster()["status"]["sync_standbys"] == [sync], "/cluster")
    body = leader.agent.cluster()
    assert body["leader"] == "n1" and body["switchover"] is None
    assert sorted(m["name"] for m in body["members"]) == ["n1", "n2", "n3"]

    # the agent's process is tuned for prompt probes (hacore/agent/interpreter.py): what the
    # agents built to start is out of the collector's sight, and threads take short turns
    assert gc.get_freeze_count() > 0
    assert sys.getswitchinterval() == pytest.approx(interpreter.SWITCH_INTERVAL)


def test_failover_keeps_every_acknowledged_write_in_process(cluster: AgentCluster) -> None:
    old = cluster.wait_converged()
    sync = cluster.sync_standby()
    writer = Writer(old, f"fo-{secrets.token_hex(3)}").start()
    writer.wait_acked(20)

    cluster.kill_agent(old)
    cluster.kill_database(old)
    crashed_at = time.monotonic()
    acked = writer.lost_server()

    def new_active() -> Node | None:
        actives = [n for n in cluster.actives() if n is not old]
        return actives[0] if actives else None

    new = until(new_active, "a new active", timeout=WAIT)
    took = time.monotonic() - crashed_at
    # The promise (docs/fencing.md): one active again within 2 x ttl of the crash.
    assert took <= 2 * TTL, f"failover took {took:.1f}s"
    assert new.name == sync, "in synchronous mode only the synchronous standby may take over"
    missing = set(acked) - notes(new)
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {sorted(missing)[:3]}"
    until(
        lambda: ("membership_changed", (set(), {old.name})) in new.recorder.calls,
        "the survivors to see the crashed member vanish",
    )

    # The old active comes back (a new agent process) and rewinds to follow the new one.
    cluster.restart(old)
    leader = cluster.wait_converged()
    assert leader is new
    status = old.pg.status()
    assert status.role == "standby" and not status.needs_rewind
    insert(new, "after-failover")
    wait_note(old, "after-failover")
    assert set(acked) <= notes(old)


def test_planned_switchover_in_process(
    cluster: AgentCluster, caplog: pytest.LogCaptureFixture
) -> None:
    old = cluster.wait_converged()
    sync = cluster.sync_standby()
    # A standby that is not the synchronous one: the active must make it synchronous first.
    target = next(n for n in standbys(cluster, old) if n.name != sync)
    target.recorder.fail_after_promote = True
    insert(old, "before-switchover")
    old_calls, target_calls = len(old.recorder.calls), len(target.recorder.calls)
    started = time.monotonic()
    try:
        old.agent.request_switchover(target.name)
        until(lambda: target.snapshot().is_active, f"{target.name} to become active")
    finally:
        target.recorder.fail_after_promote = False
    took = time.monotonic() - started
    leader = cluster.wait_converged()
    assert leader is target, "a failing after_promote must not undo the promotion"
    assert "Recorder's hacore_after_promote raised RuntimeError" in caplog.text
    assert "before-switchover" in notes(target)
    # Hooks in their order on both sides; the old active follows the new one after a rewind.
    assert [c for c in old.recorder.names()[old_calls:] if "demote" in c] == [
        "before_demote",
        "after_demote",
    ]
    promoted = [c for c, _ in target.recorder.calls[target_calls:] if c != "membership_changed"]
    assert promoted[-3:] == ["before_promote", "after_promote", "role_changed"]
    assert ("role_changed", (NodeRole.STARTING, NodeRole.ACTIVE)) in target.recorder.calls
    assert promoted.index("before_promote") < promoted.index("after_promote")
    assert old.snapshot().state is NodeState.STANDBY
    until(
        lambda: old.agent.consensus.get(keys.SWITCHOVER_KEY) is None,
        "the new active to clear the switchover request",
    )
    print(f"switchover took {took:.1f}s")


def test_vetoed_promotion_keeps_the_node_a_standby_in_process(cluster: AgentCluster) -> None:
    old = cluster.wait_converged()
    target = standbys(cluster, old)[0]
    promotions = target.recorder.names().count("after_promote")
    target.recorder.veto = "raise"
    try:
        old.agent.request_switchover(target.name)
        until(lambda: target.recorder.vetoes >= 1, f"{target.name}'s veto")
        target.recorder.veto = "return"
        # The hook has answered; the loop then resigns and publishes the outcome.
        until(
            lambda: target.agent.lease.lease is None and is_state(target, NodeState.STANDBY),
            f"{target.name} to resign and stay a standby",
        )
        assert not target.snapshot().is_active
        assert target.pg.status().role == "standby"
        assert target.recorder.names().count("after_promote") == promotions
        # While the veto stands, nobody is active: the target backs off and tries again.
        until(lambda: target.recorder.vetoes >= 2, "a second attempt after the backoff")
        assert not target.snapshot().is_active
        assert target.pg.status().role == "standby"
    finally:
        target.recorder.veto = None
    until(lambda: target.snapshot().is_active, f"{target.name} to become active after the veto")
    assert cluster.wait_converged() is target


def test_clean_stop_hands_over_at_once_in_process(cluster: AgentCluster) -> None:
    old = cluster.wait_converged()
    sync = cluster.sync_standby()  # else nobody may take over in synchronous mode
    stopped_at = time.monotonic()
    old.agent.stop()
    old.down = True
    assert old.pg.postmaster_pid() is None, "a clean stop fences the active's database"
    holder = standbys(cluster, old)[0].agent.consensus.leader()
    assert holder is None or holder.name != old.name, "a clean stop resigns the lease"
    new = until(lambda: next(iter(cluster.actives()), None), "a new active")
    took = time.monotonic() - stopped_at
    # Not a speed: sooner than its lease could have expired, so by the resign.
    assert took < TTL, f"{took:.1f}s: the stopped active did not resign"
    assert new.name == sync
    cluster.restart(old)
    assert cluster.wait_converged() is new


def test_agent_killed_in_the_middle_of_a_promotion_converges_in_process(
    cluster: AgentCluster,
) -> None:
    old = cluster.wait_converged()
    victim = standbys(cluster, old)[0]
    insert(old, "before-kill")
    victim.pg.kill_after_promote = True
    old.agent.request_switchover(victim.name)
    until(lambda: victim.agent.died is not None, f"{victim.name}'s agent to die mid-promotion")
    assert isinstance(victim.agent.died, AgentKilled)
    assert victim.pg.status().writable, "the database was promoted before the kill"
    lease = victim.agent.lease.lease
    assert lease is not None and victim.pg.fencing_token() != lease.token, "token not yet recorded"
    cluster.kill_agent(victim)

    cluster.restart(victim)
    leader = cluster.wait_converged()
    token = leader.snapshot().lease_token
    assert token is not None and leader.pg.fencing_token() == token
    for node in cluster.nodes.values():
        wait_note(node, "before-kill")
    insert(leader, "after-kill")
    for node in cluster.nodes.values():
        wait_note(node, "after-kill")
    assert len(cluster.actives()) == 1


def test_active_fences_itself_when_the_store_stops_answering_in_process(
    cluster: AgentCluster,
) -> None:
    leader = cluster.wait_converged()
    store = get_store(cluster.store["store"])
    renewed = leader.agent.lease.last_renewal
    store.freeze()
    frozen_at = time.monotonic()
    try:
        until(lambda: leader.pg.postmaster_pid() is None, "the active to fence its database")
        fenced_at = time.monotonic()
        assert renewed is not None
        deadline = max(renewed, leader.agent.lease.last_renewal or 0) + TTL - SAFETY_MARGIN
        # Fencing stops the server; allow for the stop itself on a busy machine.
        assert fenced_at <= deadline + 5.0, f"fenced {fenced_at - deadline:.1f}s late"
        assert fenced_at - frozen_at <= TTL - SAFETY_MARGIN + 5.0
        assert not leader.snapshot().is_active
        for node in standbys(cluster, leader):
            assert node.pg.status().role == "standby", "a standby promoted without the store"
        until(lambda: is_state(leader, NodeState.FENCED), "the active to say it is fenced")
    finally:
        store.thaw()
    cluster.wait_converged()
    assert len(cluster.actives()) == 1


# -------------------------------------------------------------------------------------------
# The failover again, on a real 3-member etcd and a real 3-server ZooKeeper ensemble.


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(EtcdHarness, id="etcd"),
        pytest.param(ZooKeeperHarness, id="zookeeper"),
    ],
)
def store_cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentCluster]:
    harness_cls: type[ConsensusHarness] = request.param
    name = harness_cls.backend_name
    for harness in run_harness(harness_cls, tmp_path_factory.mktemp(f"agent-{name}")):
        yield from running_cluster(make_root(), harness.settings(), backend=name)


def test_failover_on_a_real_store_in_process(store_cluster: AgentCluster) -> None:
    """kill -9 of the active's agent and database: its store session expires by itself."""
    cluster = store_cluster
    old = cluster.wait_converged()
    sync = cluster.sync_standby()
    writer = Writer(old, f"{cluster.backend}-{secrets.token_hex(3)}").start()
    writer.wait_acked(20)
    cluster.kill_agent(old)
    cluster.kill_database(old)
    crashed_at = time.monotonic()
    acked = writer.lost_server()

    new = until(lambda: next((n for n in cluster.actives() if n is not old), None), "a new active")
    took = time.monotonic() - crashed_at
    # The promise (docs/fencing.md): one active again within 2 x ttl of the crash.
    assert took <= 2 * TTL, f"failover took {took:.1f}s"
    assert new.name == sync
    missing = set(acked) - notes(new)
    assert not missing, f"{len(missing)} acknowledged writes lost"
    other = next(n for n in standbys(cluster, old) if n is not new)
    until(lambda: other.snapshot().standby_streaming, f"{other.name} to follow {new.name}")
