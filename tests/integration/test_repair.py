"""Node repair through the real CLI on a real 3-node cluster (agents, etcd, PostgreSQL).

In order, on one cluster (each step leaves it healthy for the next): a standby's restart; the
active's restart, which switches over first, under a writer that loses no acknowledged row;
a reinit that keeps the node's name and streams again; a reinit killed half-way (the agent
and its copy SIGKILLed), which leaves the old data running and the node recoverable; a
removed node's name joined again by a fresh node; and last a manual ``cluster failover --to``
with the active dead and every standby past ``maximum_lag_on_failover``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cluster_fixtures import PG_PARAMETERS, WAIT, CliCluster, Node, formed_cluster, kill_tree
from row_writer import RowWriter

from hacore.testing.procs import holds_for, wait_for
from hacore_plugins.postgresql.settings import default_bin_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(default_bin_dir() is None, reason="no PostgreSQL binaries installed"),
]

#: bytes; small, so that freezing a standby's stream puts it past the limit at once
LAG_LIMIT = 65536
EXTRA = {"failover": {"maximum_lag_on_failover": LAG_LIMIT}}


@pytest.fixture(scope="module")
def trio() -> Iterator[CliCluster]:
    yield from formed_cluster("etcd", extra=EXTRA)


def streaming(cluster: CliCluster, name: str) -> bool:
    row = cluster.view().get(name)
    return row is not None and row["state"] == "standby" and row["replication"] == "streaming"


def wait_streaming(cluster: CliCluster, *names: str) -> None:
    for name in names:
        wait_for(lambda n=name: streaming(cluster, n), WAIT, 0.5, what=f"{name} streaming")


def active_node(cluster: CliCluster) -> Node | None:
    for node in cluster.nodes.values():
        probe = node.probe()
        if probe is not None and probe["http_status"] == 200:
            return node
    return None


def active_writer(cluster: CliCluster) -> RowWriter:
    """Rows into whichever node is active (found by its probe, as a load balancer would);
    errors during a handover are expected and only counted."""
    node = active_node(cluster)
    assert node is not None
    with node.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS repair (id bigint PRIMARY KEY)")

    def connect() -> psycopg.Connection[Any] | None:
        target = active_node(cluster)
        return target.connect() if target is not None else None

    return RowWriter(connect, "INSERT INTO repair (id) VALUES (%s)", interval=0.03)


def missing_on(writer: RowWriter, node: Node) -> set[int]:
    with node.connect() as conn:
        return writer.missing({row[0] for row in conn.execute("SELECT id FROM repair")})


def postmaster_start(node: Node) -> str:
    with node.connect() as conn:
        row = conn.execute("SELECT pg_postmaster_start_time()::text").fetchone()
    assert row is not None
    return str(row[0])


def test_restart_of_a_standby(trio: CliCluster) -> None:
    wait_streaming(trio, "n2", "n3")
    active = trio.active()
    standby = next(n for n in trio.nodes.values() if n is not active)
    before = postmaster_start(standby)
    out = trio.cli("cluster", "nodes", "restart", standby.name).output
    assert "streaming" in out, out
    assert postmaster_start(standby) != before, "the database was not restarted"
    # nodes list shows the active's view, a loop behind what the command read on the node
    wait_streaming(trio, standby.name)
    assert trio.active() is active


def test_restart_of_the_active_switches_over_first_and_loses_no_write(trio: CliCluster) -> None:
    wait_streaming(trio, *(n for n in trio.nodes if trio.nodes[n] is not trio.active()))
    old = trio.active()
    before = postmaster_start(old)
    refused = trio.cli("cluster", "nodes", "restart", old.name, "--in-place", code=4)
    assert "cluster pause" in refused.output
    assert trio.active() is old
    with active_writer(trio) as writer:
        out = trio.cli("cluster", "nodes", "restart", old.name).output
        assert "switching over first" in out, out
        writer.wait_more(10, WAIT)
    new = trio.active()
    assert new is not old
    assert postmaster_start(old) != before
    wait_streaming(trio, old.name)
    assert not missing_on(writer, new), "acknowledged rows were lost"


def test_reinit_keeps_the_name_and_streams_again(trio: CliCluster) -> None:
    active = trio.active()
    standby = next(n for n in trio.nodes.values() if n is not active)
    wait_streaming(trio, standby.name)
    marker = standby.pgdata / "hacore-test-old-copy"
    marker.write_text("old")
    refused = trio.cli("cluster", "nodes", "reinit", active.name, "--yes", code=4)
    assert "is the active node" in refused.output
    unconfirmed = trio.cli("cluster", "nodes", "reinit", standby.name, code=2)
    assert "--yes" in unconfirmed.output
    assert marker.exists()
    out = trio.cli("cluster", "nodes", "reinit", standby.name, "--yes").output
    assert "streaming" in out, out
    assert not marker.exists(), "the data directory was not replaced"
    wait_streaming(trio, standby.name)
    with active.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS after_reinit (id int)")
        conn.execute("INSERT INTO after_reinit VALUES (1)")

    def replicated() -> bool:
        with standby.connect() as conn:
            return conn.execute("SELECT count(*) FROM after_reinit").fetchone() == (1,)

    wait_for(replicated, WAIT, 0.5, what="a new row on the re-cloned standby")


def _copies_of(pgdata: Path) -> list[int]:
    """pids of the pg_basebackup processes writing into ``pgdata``'s clone directory."""
    target = str(pgdata.with_name("pgdata.clone"))
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if any(b"pg_basebackup" in a for a in argv) and target.encode() in argv:
                found.append(int(entry.name))
    return found


def test_reinit_killed_half_way_keeps_the_old_data_and_the_node_recovers(
    trio: CliCluster,
) -> None:
    active = trio.active()
    standby = next(n for n in trio.nodes.values() if n is not active)
    wait_streaming(trio, standby.name)
    # a slow copy (and enough data) to kill it half-way
    with active.connect() as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS bulk AS "
            "SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 150000) g"
        )
    standby.extra = {
        **EXTRA,
        "replication": {
            "backend": "postgresql",
            "port": standby.pg_port,
            "parameters": PG_PARAMETERS,
            "clone_max_rate": "2M",
        },
    }
    assert standby.proc is not None
    standby.proc.stop(signal.SIGTERM, timeout=90)
    standby.start()
    wait_streaming(trio, standby.name)
    marker = standby.pgdata / "hacore-test-old-copy"
    marker.write_text("old")
    postmaster = standby.postmaster()
    assert postmaster is not None

    result: dict[str, Any] = {}

    def run() -> None:
        result["out"] = trio.cli("cluster", "nodes", "reinit", standby.name, "--yes", code=None)

    cli = threading.Thread(target=run, daemon=True)
    cli.start()
    wait_for(lambda: _copies_of(standby.pgdata), WAIT, 0.1, what="the copy running")
    clone_dir = standby.pgdata.with_name("pgdata.clone")
    wait_for(lambda: sum(1 for _ in clone_dir.rglob("*")) > 50, WAIT, 0.1, what="copy progress")
    # the host's agent dies half-way: the service, its keeper and the copy, not the database
    standby.proc.kill()
    keeper = standby.keeper()
    if keeper is not None:
        kill_tree(keeper)
    for pid in _copies_of(standby.pgdata):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
    cli.join(timeout=WAIT)
    assert result["out"].exit_code == 1, result["out"].output
    # the old copy is untouched and still serves
    assert marker.exists()
    assert standby.postmaster() == postmaster
    with standby.connect() as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
    # the node recovers: its agent again, streaming, and a reinit that completes
    standby.extra = dict(EXTRA)
    standby.start()
    wait_streaming(trio, standby.name)
    out = trio.cli("cluster", "nodes", "reinit", standby.name, "--yes").output
    assert "streaming" in out, out
    assert not marker.exists()
    assert not clone_dir.exists()


def test_a_removed_name_can_be_joined_again(trio: CliCluster) -> None:
    active = trio.active()
    victim = next(n for n in trio.nodes.values() if n is not active)
    name = victim.name
    wait_streaming(trio, name)
    history_before = trio.cli_json("cluster", "history")
    trio.cli("cluster", "nodes", "remove", name, "--yes")
    wait_for(lambda: victim.postmaster() is None, WAIT, 0.5, what="the removed database stopped")
    victim.cleanup()
    shutil.rmtree(victim.data_dir)
    fresh = trio.add(name, extra=EXTRA)
    trio.cli(
        "cluster",
        "join",
        active.address,
        "-c",
        str(fresh.config_path),
        "--node-name",
        name,
        "--ca-fingerprint",
        trio.ca_fingerprint,
        "--timeout",
        str(WAIT),
    )
    wait_streaming(trio, name)
    assert trio.view()[name]["state"] == "standby"
    # the new node is not removed by the old removal, and the history stayed
    holds_for(lambda: streaming(trio, name), 3.0, 0.5, what=f"{name} streaming, not removed again")
    assert (
        trio.cli_json("cluster", "history")["history"][: len(history_before["history"])]
        == (history_before["history"])
    )


def _freeze_stream(node: Node) -> int:
    """SIGSTOP the standby's WAL receiver: its position stops where it is."""
    with node.connect() as conn:
        row = conn.execute("SELECT pid FROM pg_stat_wal_receiver").fetchone()
    assert row is not None and row[0], f"{node.name} has no WAL receiver"
    os.kill(int(row[0]), signal.SIGSTOP)
    return int(row[0])


def test_manual_failover_when_every_standby_is_past_the_lag_limit(trio: CliCluster) -> None:
    old = trio.active()
    standbys = [n for n in trio.nodes.values() if n is not old]
    wait_streaming(trio, *(n.name for n in standbys))
    refused = trio.cli("cluster", "failover", "--to", standbys[0].name, "--yes", code=4)
    assert "switchover" in refused.output
    frozen = [_freeze_stream(n) for n in standbys]
    try:
        with old.connect() as conn:
            # Far more WAL than the sockets between them buffer: a receiver thawed after the
            # crash reads what was already in flight, and must stay past the limit even so.
            conn.execute("CREATE TABLE lost AS SELECT g FROM generate_series(1, 2000000) g")
            row = conn.execute("SELECT (pg_current_wal_lsn() - '0/0')::bigint").fetchone()
        assert row is not None
        written = int(row[0])

        def recorded() -> bool:
            status = old.cluster(trio.credentials()).get("status") or {}
            return int(status.get("position") or 0) >= written

        wait_for(recorded, WAIT, 0.5, what="the status key to record the active's position")
        old.crash()
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    target = standbys[0]

    def held_back() -> bool:
        return "lag_too_high" in str(trio.cli_json("cluster", "explain", target.name))

    wait_for(held_back, WAIT, 1.0, what=f"{target.name} held back by its lag")

    def lease_gone() -> bool:
        # the leader key as the target's loop last read it: the lease, not the probes
        return target.cluster(trio.credentials())["leader"] is None

    wait_for(lease_gone, WAIT, 0.5, what=f"{old.name}'s lease to expire")
    # several loops (loop_wait 1 s) with no lease held, in which a standby free to take over
    # would have
    holds_for(
        lambda: active_node(trio) is None,
        5.0,
        0.5,
        what="no standby past the lag limit taking over by itself",
    )
    out = trio.cli("cluster", "failover", "--to", target.name, "--yes").output
    assert "may lose" in out, out
    assert "failover done" in out, out
    probe = target.probe()
    assert probe is not None and probe["http_status"] == 200
    history = trio.cli_json("cluster", "history")["history"]
    assert history[-1]["node"] == target.name
    assert history[-1]["reason"] == "manual_failover"
