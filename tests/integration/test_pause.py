"""Maintenance mode through the real CLI on a real 3-node cluster (agents, etcd, PostgreSQL).

One cluster, in order: ``cluster pause`` (shown by ``nodes list``, ``/status`` and
``/metrics``); the active's agent SIGKILLed, after which no standby takes over for well past
the lease's ttl while writes on the active go on; the agent started again, which is the
active again with no failover (same active in the history, the database never restarted);
``nodes restart --in-place`` on the paused active, which keeps it the active on the same
timeline; a clean stop (SIGTERM) and start of its agent, with the database left running;
``cluster resume``; and last a real failover when the active's agent is killed
again, proving the pause is really over.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from cluster_fixtures import TIMING, WAIT, CliCluster, Node, formed_cluster

from hacore.testing.procs import holds_for, wait_for
from hacore_plugins.postgresql.settings import default_bin_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(default_bin_dir() is None, reason="no PostgreSQL binaries installed"),
]

#: how long nobody may take over after the dead active's lease is gone: several ttl, with
#: a loop every loop_wait on each standby that would campaign if the pause were ignored
HOLD = 3 * TIMING["ttl"]


@pytest.fixture(scope="module")
def trio() -> Iterator[CliCluster]:
    yield from formed_cluster("etcd")


def streaming(cluster: CliCluster, name: str) -> bool:
    row = cluster.view().get(name)
    return row is not None and row["state"] == "standby" and row["replication"] == "streaming"


def serving(node: Node) -> bool:
    probe = node.probe()
    return probe is not None and probe["http_status"] == 200


def paused_metric(cluster: CliCluster, node: Node) -> float:
    resp = httpx.get(
        node.url + "/metrics", auth=cluster.credentials(), verify=node.ca_context(), timeout=10
    )
    resp.raise_for_status()
    for line in resp.text.splitlines():
        if line.startswith("hacore_paused{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no hacore_paused in {node.name}'s /metrics")


def write(node: Node, value: int) -> None:
    with node.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS pause_writes (id bigint PRIMARY KEY)")
        conn.execute("INSERT INTO pause_writes (id) VALUES (%s)", (value,))


def database(node: Node) -> tuple[str, int, bool]:
    """(postmaster start time, timeline, in recovery) of the node's database."""
    with node.connect() as conn:
        row = conn.execute(
            "SELECT pg_postmaster_start_time()::text, "
            "(SELECT timeline_id FROM pg_control_checkpoint()), pg_is_in_recovery()"
        ).fetchone()
    assert row is not None
    return str(row[0]), int(row[1]), bool(row[2])


def history(cluster: CliCluster) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = cluster.cli_json("cluster", "history")["history"]
    return entries


def test_pause_agent_restart_in_place_restart_resume(trio: CliCluster) -> None:
    active = trio.active()
    standbys = [n for n in trio.nodes.values() if n is not active]
    for node in standbys:
        wait_for(lambda n=node.name: streaming(trio, n), WAIT, 0.5, what=f"{node.name} streaming")
    before = history(trio)
    db_before = database(active)

    # -- pause, and every way it shows -----------------------------------------------------
    out = trio.cli("cluster", "pause", "--reason", "pause test", "--wait").output
    assert "cluster paused" in out and "pause test" in out, out
    assert "already paused" in trio.cli("cluster", "pause").output
    listed = trio.cli_json("cluster", "nodes", "list")
    assert listed["paused"] is True and listed["pause"]["reason"] == "pause test", listed
    assert "MAINTENANCE MODE" in trio.cli("cluster", "nodes", "list").output
    for node in trio.nodes.values():
        wait_for(lambda n=node: (n.probe() or {}).get("paused") is True, WAIT, 0.5)
        assert paused_metric(trio, node) == 1.0
    probe = active.probe()
    assert probe is not None and probe["state"] == "active" and probe["http_status"] == 200
    refused = trio.cli("cluster", "switchover", code=4)
    assert "paused" in refused.output, refused.output

    # -- the active's agent dies: nobody takes over, the database keeps writing --------------
    assert active.proc is not None
    active.proc.kill()

    def lease_gone() -> bool:
        # not "no leader": a standby ignoring the pause would take the key within a loop
        return all(n.cluster(trio.credentials())["leader"] != active.name for n in standbys)

    wait_for(lease_gone, WAIT, 0.5, what=f"{active.name}'s lease to expire")
    counter = iter(range(1_000_000))

    def nobody_took_over() -> bool:
        write(active, next(counter))  # raises if the database stopped taking writes
        for node in standbys:
            probe = node.probe()
            assert probe is not None and probe["state"] == "standby", probe
            assert probe["http_status"] != 200, probe
        return True

    # the lease is gone: unpaused, the best standby would campaign within one loop_wait
    holds_for(nobody_took_over, HOLD, 0.5, what="no standby taking over while paused")
    assert database(active)[2] is False, "the database is no longer the primary"

    # -- the agent comes back: active again, no failover -------------------------------------
    active.start()
    wait_for(lambda: serving(active), WAIT, 0.5, what=f"{active.name} active again")
    assert database(active) == db_before, "the database was restarted or promoted"
    assert history(trio) == before, "the history shows a change of active"
    write(active, next(counter))

    # -- an in-place restart of the paused active --------------------------------------------
    out = trio.cli("cluster", "nodes", "restart", active.name, "--in-place").output
    assert "active again" in out, out
    started, timeline, recovering = database(active)
    assert started != db_before[0], "the database was not restarted"
    assert (timeline, recovering) == (db_before[1], False), "not the same primary"
    wait_for(lambda: serving(active), WAIT, 0.5, what=f"{active.name} serving after restart")
    assert trio.active() is active
    assert history(trio) == before
    write(active, next(counter))

    # -- a clean stop (SIGTERM, as systemctl stop) hands nothing over either ------------------
    restarted = database(active)
    assert active.proc is not None
    active.proc.stop(signal.SIGTERM, timeout=90)
    # the stopping agent ended its session, so the leader key is gone at once: unpaused, a
    # standby would campaign within a loop_wait
    holds_for(nobody_took_over, 2 * TIMING["ttl"], 0.5, what="no takeover after a clean stop")
    active.start()
    wait_for(lambda: serving(active), WAIT, 0.5, what=f"{active.name} active after a clean stop")
    assert database(active) == restarted, "the database was stopped, restarted or promoted"
    assert history(trio) == before

    # -- resume: the pause is over, and a dead active is replaced again ------------------------
    out = trio.cli("cluster", "resume").output
    assert "cluster resumed" in out, out
    assert "not paused" in trio.cli("cluster", "resume").output
    for node in trio.nodes.values():
        wait_for(lambda n=node: (n.probe() or {}).get("paused") is False, WAIT, 0.5)
        assert paused_metric(trio, node) == 0.0
    assert "MAINTENANCE MODE" not in trio.cli("cluster", "nodes", "list").output
    for node in standbys:
        wait_for(lambda n=node.name: streaming(trio, n), WAIT, 0.5, what=f"{node.name} streaming")
    assert active.proc is not None
    active.proc.kill()
    wait_for(lambda: any(serving(n) for n in standbys), WAIT, 0.5, what="a standby taking over")
    new = next(n for n in standbys if serving(n))
    assert history(trio)[-1]["node"] == new.name

    def fenced() -> bool:
        # its agent is dead: the fence keeper stopped the old primary at its deadline
        try:
            return database(active)[2]
        except psycopg.Error:
            return True

    wait_for(fenced, WAIT, 0.5, what=f"{active.name}'s database fenced by its keeper")
