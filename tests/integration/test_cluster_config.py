"""The cluster-wide settings at runtime, through the real CLI on a real 3-node cluster
(agents, etcd, PostgreSQL).

One cluster, in order: the first active seeded the ``settings`` key from its node.yaml;
``cluster config set`` of a failover setting and a PostgreSQL parameter that reloads reaches
every agent's decision configuration (``cluster explain``) and every database (``SHOW``)
within a few loops, with no agent or database restart and no failover; a parameter that
needs a restart is reported as ``pending_restart`` on every node; an invalid change and a
change against a stale version are refused and leave the store key as it was; a timing
change is stored at once, reported as waiting for each agent's restart, and in force in a
standby's agent once it restarted; synchronous mode turned on names a synchronous standby,
turned off again the active waits for none.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cluster_fixtures import TIMING, WAIT, CliCluster, Node, formed_cluster

from hacore.testing.procs import wait_for
from hacore_plugins.postgresql.settings import default_bin_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(default_bin_dir() is None, reason="no PostgreSQL binaries installed"),
]

#: "within one loop" on every node, with room for a loaded machine
APPLIED_WITHIN = 10 * TIMING["loop_wait"] + 10.0


@pytest.fixture(scope="module")
def trio() -> Iterator[CliCluster]:
    yield from formed_cluster("etcd")


def streaming(cluster: CliCluster, name: str) -> bool:
    row = cluster.view().get(name)
    return row is not None and row["state"] == "standby" and row["replication"] == "streaming"


def show(cluster: CliCluster) -> dict[str, Any]:
    data: dict[str, Any] = cluster.cli_json("cluster", "config", "show")
    return data


def explained(cluster: CliCluster, node: Node) -> dict[str, Any]:
    resp = httpx.get(
        f"{node.url}/nodes/{node.name}/explain",
        auth=cluster.credentials(),
        verify=node.ca_context(),
        timeout=10,
    )
    resp.raise_for_status()
    data: dict[str, Any] = resp.json()
    return data


def shown(node: Node, parameter: str) -> str:
    with node.connect() as conn:
        row = conn.execute(f"SHOW {parameter}").fetchone()
    assert row is not None
    return str(row[0])


def started_at(node: Node) -> str:
    with node.connect() as conn:
        row = conn.execute("SELECT pg_postmaster_start_time()::text").fetchone()
    assert row is not None
    return str(row[0])


def test_settings_are_seeded_changed_at_runtime_and_refused_when_invalid(
    trio: CliCluster,
) -> None:
    active = trio.active()
    for node in trio.nodes.values():
        if node is not active:
            name = node.name
            wait_for(lambda n=name: streaming(trio, n), WAIT, 0.5, what=f"{name} streaming")

    # -- seeded by the first active from its node.yaml -------------------------------------
    seeded = show(trio)
    assert seeded["revision"] == 1 and seeded["by"] == "n1", seeded
    assert seeded["settings"]["timing"]["ttl"] == TIMING["ttl"]
    assert seeded["settings"]["failover"]["maximum_lag_on_failover"] is None
    assert "revision 1" in trio.cli("cluster", "config", "show").output
    history = trio.cli_json("cluster", "history")["history"]
    agents = {n.name: n.proc.pid for n in trio.nodes.values() if n.proc is not None}
    databases = {n.name: started_at(n) for n in trio.nodes.values()}
    assert all(shown(n, "work_mem") == "4MB" for n in trio.nodes.values())

    # -- a failover setting and a reloadable parameter, applied everywhere ----------------
    out = trio.cli(
        "cluster",
        "config",
        "set",
        "failover.maximum_lag_on_failover=1234567",
        "parameters.work_mem=16MB",
    ).output
    assert "revision 2 written" in out and "failover.maximum_lag_on_failover" in out, out
    assert "within one loop" in out, out
    for node in trio.nodes.values():
        wait_for(
            lambda n=node: explained(trio, n)["maximum_lag_on_failover"] == 1234567,
            APPLIED_WITHIN,
            0.5,
            what=f"{node.name}'s decision configuration to follow the store",
        )
        wait_for(
            lambda n=node: shown(n, "work_mem") == "16MB",
            APPLIED_WITHIN,
            0.5,
            what=f"work_mem reloaded on {node.name}",
        )
    assert {n.name: n.proc.pid for n in trio.nodes.values() if n.proc is not None} == agents
    assert {n.name: started_at(n) for n in trio.nodes.values()} == databases
    assert trio.active() is active
    assert trio.cli_json("cluster", "history")["history"] == history
    for node in trio.nodes.values():
        probe = node.probe() or {}
        assert probe.get("settings", {}).get("revision") == 2, probe
        assert probe.get("pending_restart") is False, probe

    assert not any(row["pending_restart"] for row in trio.view().values())

    # -- a parameter that needs a restart: reported, not restarted ------------------------
    trio.cli("cluster", "config", "set", "parameters.max_connections=120")
    for node in trio.nodes.values():
        wait_for(
            lambda n=node: (n.probe() or {}).get("pending_restart") is True,
            APPLIED_WITHIN,
            0.5,
            what=f"{node.name} to report pending_restart",
        )
        assert shown(node, "max_connections") != "120"
    wait_for(
        lambda: all(row["pending_restart"] for row in trio.view().values()),
        APPLIED_WITHIN,
        0.5,
        what="nodes list to show pending_restart on every node",
    )
    assert "pending restart: n1, n2, n3" in trio.cli("cluster", "nodes", "list").output
    assert {n.name: started_at(n) for n in trio.nodes.values()} == databases

    # -- refused changes leave the key as it was ------------------------------------------
    before = show(trio)
    assert before["revision"] == 3
    bad = trio.cli("cluster", "config", "set", "failover.synchronous_mode=sometimes", code=2)
    assert (
        "error: cluster settings: failover.synchronous_mode must be one of off, on, strict "
        '(got "sometimes")'
    ) in bad.output, bad.output
    unsafe = trio.cli("cluster", "config", "set", "timing.ttl=2", code=2)
    assert "timing is unsafe" in unsafe.output, unsafe.output
    owned = trio.cli("cluster", "config", "set", "parameters.port=6000", code=2)
    assert "postgresql parameter 'port' is set by hacore per node" in owned.output, owned.output
    assert show(trio) == before

    stale = httpx.put(
        f"{active.url}/cluster/config",
        json={"settings": before["settings"], "version": seeded["version"]},
        auth=trio.credentials(),
        verify=active.ca_context(),
        timeout=10,
    )
    assert stale.status_code == 409, stale.text
    assert "changed meanwhile (revision 3" in stale.json()["error"], stale.text
    assert show(trio) == before

    # -- config edit: checked, shown as a diff, written after the confirmation ---------------
    invalid = {"EDITOR": "sed -i 's/ttl: 6.0/ttl: -1/'"}
    refused = trio.cli("cluster", "config", "edit", "--yes", code=2, env=invalid)
    assert (
        "error: the edited settings: timing.ttl must be a number of seconds > 0 (got -1)"
        in refused.output
    ), refused.output
    assert before["settings"]["checks"]["check_fail_fast"] is False  # the fixture's node.yaml
    flip = {"EDITOR": "sed -i 's/check_fail_fast: false/check_fail_fast: true/'"}
    unconfirmed = trio.cli("cluster", "config", "edit", code=2, env=flip)
    assert "pass --yes to confirm" in unconfirmed.output, unconfirmed.output
    assert show(trio) == before
    edited = trio.cli("cluster", "config", "edit", "--yes", env=flip).output
    assert "-  check_fail_fast: false\n+  check_fail_fast: true" in edited, edited
    assert "revision 4 written: checks.check_fail_fast" in edited, edited
    assert show(trio)["settings"]["checks"]["check_fail_fast"] is True

    # -- timing waits for each agent's restart ----------------------------------------------
    out = trio.cli("cluster", "config", "set", "timing.loop_wait=0.5").output
    assert "next restart: timing.loop_wait" in out, out

    def restart_pending(node: Node) -> Any:
        return ((node.probe() or {}).get("settings") or {}).get("restart_pending")

    for node in trio.nodes.values():
        wait_for(
            lambda n=node: restart_pending(n) == ["timing.loop_wait"],
            APPLIED_WITHIN,
            0.5,
            what=f"{node.name} to report timing.loop_wait waiting for a restart",
        )
    standby = next(n for n in trio.nodes.values() if n is not active)
    assert standby.proc is not None
    standby.proc.stop(signal.SIGTERM, timeout=90)
    standby.start()
    wait_for(lambda: streaming(trio, standby.name), WAIT, 0.5, what=f"{standby.name} back")
    wait_for(lambda: restart_pending(standby) == [], WAIT, 0.5, what="the timing applied")
    assert restart_pending(active) == ["timing.loop_wait"]
    assert trio.active() is active

    # -- synchronous mode, turned on and off at runtime -------------------------------------
    def sync_standbys() -> list[str]:
        status = active.cluster(trio.credentials())["status"] or {}
        names: list[str] = status.get("sync_standbys", [])
        return names

    trio.cli("cluster", "config", "set", "failover.synchronous_mode=on")
    wait_for(lambda: len(sync_standbys()) == 1, WAIT, 0.5, what="a synchronous standby named")
    assert sync_standbys()[0] in shown(active, "synchronous_standby_names")
    for node in trio.nodes.values():
        wait_for(
            lambda n=node: explained(trio, n)["synchronous_mode"] == "on",
            APPLIED_WITHIN,
            0.5,
            what=f"{node.name} to decide with synchronous_mode on",
        )
    trio.cli("cluster", "config", "set", "failover.synchronous_mode=off")
    wait_for(
        lambda: sync_standbys() == [] and shown(active, "synchronous_standby_names") == "",
        APPLIED_WITHIN,
        0.5,
        what="the active to wait for no standby any more",
    )
    assert trio.active() is active
