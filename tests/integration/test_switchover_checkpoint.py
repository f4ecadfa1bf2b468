"""The checkpoint a planned switchover runs on the active before its writers stop (issue 15,
target 5), on real PostgreSQL servers with in-process agents (tests/integration/agent_fixtures.py).

Without it the fence's fast shutdown wrote and fsynced every change since the last checkpoint
while nobody could write, and the switchover's write gap grew with the database's size and
load. What is checked: ``prepare_handover`` makes PostgreSQL run a requested checkpoint, it
gives up within its timeout when the checkpointer cannot make progress, a switchover under a
writer runs it on the old active while that one still serves, and a switchover goes on without
it when it cannot end; neither loses an acknowledged write.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
import uuid
from collections.abc import Iterator

import pytest
from agent_fixtures import (
    AgentCluster,
    FaultyPostgres,
    Node,
    Writer,
    connect,
    make_root,
    notes,
    running_cluster,
    until,
)

from hacore.errors import ReplicationError
from hacore.testing.memory import drop_store, get_store
from hacore_plugins.postgresql.settings import default_bin_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(default_bin_dir() is None, reason="no PostgreSQL binaries installed"),
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[AgentCluster]:
    store = f"ckpt-{uuid.uuid4().hex}"
    yield from running_cluster(make_root(), {"store": store}, backend="memory")
    get_store(store).thaw()
    drop_store(store)


def requested_checkpoints(node: Node) -> int:
    """Checkpoints the server started on request (CHECKPOINT, a shutdown, ...) since its
    statistics began."""
    with connect(node) as conn:
        query = (
            "SELECT num_requested FROM pg_stat_checkpointer"
            if conn.info.server_version >= 170000
            else "SELECT checkpoints_req FROM pg_stat_bgwriter"
        )
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0])


def checkpointer_pid(node: Node) -> int:
    with connect(node) as conn:
        row = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_prepare_handover_runs_a_checkpoint(cluster: AgentCluster) -> None:
    active = cluster.wait_converged()
    before = requested_checkpoints(active)
    active.pg.prepare_handover(timeout=30)
    assert requested_checkpoints(active) > before, "no checkpoint was requested"
    assert active.pg.status().writable


def test_prepare_handover_gives_up_within_its_timeout(cluster: AgentCluster) -> None:
    """A checkpointer that makes no progress (stopped here) must not hold the step-down."""
    active = cluster.wait_converged()
    pid = checkpointer_pid(active)
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(ReplicationError, match="did not end within"):
            active.pg.prepare_handover(timeout=0.5)
        took = time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)
    # not a speed: well under the 30 s a checkpoint could otherwise hold the agent's loop
    assert took < 10, f"prepare_handover(timeout=0.5) took {took:.1f}s"
    assert active.pg.status().writable


def test_switchover_checkpoints_while_serving_and_keeps_every_write(
    cluster: AgentCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = cluster.wait_converged()
    target = cluster.nodes[cluster.sync_standby()]
    seen: list[tuple[str, bool, int, int]] = []
    real = FaultyPostgres.prepare_handover

    def watched(self: FaultyPostgres, *, timeout: float) -> None:
        node = cluster.nodes[self.node_name]
        before = requested_checkpoints(node)
        real(self, timeout=timeout)
        seen.append((self.node_name, self.status().writable, before, requested_checkpoints(node)))

    monkeypatch.setattr(FaultyPostgres, "prepare_handover", watched)
    writer = Writer(old, f"ckpt-{secrets.token_hex(3)}").start()
    writer.wait_acked(20)
    old.agent.request_switchover(target.name)
    until(lambda: target.snapshot().is_active, f"{target.name} to become active")
    acked = writer.lost_server()
    assert cluster.wait_converged() is target
    assert len(seen) == 1, f"the handover's checkpoint ran {len(seen)} times: {seen}"
    name, serving, before, after = seen[0]
    assert name == old.name
    assert serving, "the checkpoint ran after the old active stopped serving"
    assert after > before, "the handover requested no checkpoint"
    missing = set(acked) - notes(target)
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {sorted(missing)[:3]}"


def test_a_checkpoint_that_cannot_end_does_not_hold_the_switchover(
    cluster: AgentCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """The checkpointer is stopped: the handover's checkpoint runs out of its time, is logged,
    and the step-down goes on (the fence kills a server with a stopped process at once)."""
    old = cluster.wait_converged()
    target = cluster.nodes[cluster.sync_standby()]
    writer = Writer(old, f"stuck-{secrets.token_hex(3)}").start()
    writer.wait_acked(20)
    pid = checkpointer_pid(old)
    os.kill(pid, signal.SIGSTOP)
    try:
        old.agent.request_switchover(target.name)
        until(lambda: target.snapshot().is_active, f"{target.name} to become active")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    acked = writer.lost_server()
    assert "handing over without a checkpoint first" in caplog.text
    assert "did not end within" in caplog.text
    missing = set(acked) - notes(target)
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {sorted(missing)[:3]}"
    assert cluster.wait_converged() is target
