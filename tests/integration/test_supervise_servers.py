"""Issue 9, defect 3: a managed store member that dies is restarted by its own agent.

Real ``hacore agent run`` processes and a real 3-member managed etcd, formed with the CLI
(:func:`cluster_fixtures.formed_cluster`). SIGKILL of one standby's member: its agent starts
it again, ``nodes list`` and ``/metrics`` say so while it is down, and the store has three
healthy members again. SIGKILL of two members (the active's among them, so the store loses
its quorum and the active may fence): both come back without a human, and the cluster returns
to exactly one active.
"""

from __future__ import annotations

import os
import re
import signal
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cluster_fixtures import WAIT, CliCluster, Node, formed_cluster

from hacore.cli import common as cli_common
from hacore.testing.procs import wait_for
from hacore_plugins.postgresql.settings import default_bin_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(default_bin_dir() is None, reason="no PostgreSQL binaries installed"),
]


@pytest.fixture(scope="module")
def formed() -> Iterator[CliCluster]:
    yield from formed_cluster("etcd")


def store_health(cluster: CliCluster, node: Node) -> dict[str, bool]:
    """The store's servers as the node's agent lists them: name -> voting and healthy."""
    members = node.cluster(cluster.credentials())["store_members"] or []
    return {m["name"]: bool(m["voting"] and m["healthy"]) for m in members}


def all_healthy(cluster: CliCluster, via: Node) -> bool:
    return store_health(cluster, via) == {name: True for name in cluster.nodes}


def metrics(cluster: CliCluster, node: Node) -> dict[str, float]:
    """The node's managed-server metrics, ``name{labels}`` -> value."""
    resp = httpx.get(
        node.url + "/metrics", auth=cluster.credentials(), verify=node.ca_context(), timeout=10
    )
    resp.raise_for_status()
    found = {}
    for line in resp.text.splitlines():
        match = re.match(r"(hacore_managed_server_\w+\{[^}]*\}) (\S+)$", line)
        if match:
            found[match.group(1)] = float(match.group(2))
    return found


def up_metric(node: Node) -> str:
    return f'hacore_managed_server_up{{node="{node.name}",server="etcd"}}'


def restarts_metric(node: Node) -> str:
    return f'hacore_managed_server_restarts_total{{node="{node.name}",server="etcd"}}'


def servers_row(cluster: CliCluster, name: str) -> list[dict[str, Any]]:
    servers: list[dict[str, Any]] = cluster.view()[name]["servers"]
    return servers


def kill_member(node: Node) -> int:
    pid = node.store_server()
    assert pid is not None, f"{node.name} runs no store server"
    os.kill(pid, signal.SIGKILL)
    return pid


def restarted(node: Node, old: int) -> int | None:
    pid = node.store_server()
    return pid if pid is not None and pid != old else None


def test_a_killed_standby_member_is_restarted_and_reported(formed: CliCluster) -> None:
    active = formed.active()
    standby = next(n for n in formed.nodes.values() if n is not active)
    wait_for(lambda: all_healthy(formed, active), WAIT, interval=0.5, what="a healthy store")
    assert metrics(formed, standby)[up_metric(standby)] == 1.0
    assert servers_row(formed, standby.name)[0]["up"] is True

    # Plain SIGKILL: the agent starts it again by itself.
    old = kill_member(standby)
    wait_for(lambda: restarted(standby, old), WAIT, interval=0.2, what="the member restarted")
    wait_for(lambda: all_healthy(formed, active), WAIT, interval=0.5, what="3 healthy members")
    # counted once its start returned (the new pid exists a moment earlier)
    wait_for(
        lambda: metrics(formed, standby)[restarts_metric(standby)] >= 1.0,
        WAIT,
        interval=0.5,
        what="the restart counted in the metrics",
    )
    assert metrics(formed, standby)[up_metric(standby)] == 1.0

    # SIGKILL while its client port is held by someone else: every restart fails, backs off,
    # and the member is reported down everywhere until the port is free again.
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        old = kill_member(standby)

        def hold_port() -> bool:
            holder.bind(("127.0.0.1", standby.store["client_port"]))
            return True

        wait_for(hold_port, 10, interval=0.01, what="the killed member's client port")
        holder.listen()
        if restarted(standby, old):
            pytest.fail("the member was restarted before the test could hold its port")

        def reported_down() -> bool:
            row = servers_row(formed, standby.name)[0]
            down = metrics(formed, standby)[up_metric(standby)] == 0.0
            return down and row["up"] is False and row["attempt"] >= 2

        wait_for(reported_down, WAIT, interval=0.5, what="the dead member reported")
        row = servers_row(formed, standby.name)[0]
        assert "etcd server down" in row["detail"] and "already in use" in row["detail"], row
        check = formed.cli_json("cluster", "nodes", "get", standby.name)["checks"]["store_server"]
        assert check["ok"] is False and "etcd server down" in check["detail"], check
        # the table, wide enough that rich does not wrap the cell
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(cli_common.console, "width", 400)
            text = formed.cli("cluster", "nodes", "list").output
        line = next(line for line in text.splitlines() if f" {standby.name} " in line)
        assert "etcd server down" in line, text
        # reported only: the standby stays healthy, the active stays active
        assert formed.view()[standby.name]["healthy"] is True
        assert formed.active() is active
    finally:
        holder.close()
    wait_for(lambda: standby.store_server(), WAIT, interval=0.2, what="the member restarted")
    wait_for(lambda: all_healthy(formed, active), WAIT, interval=0.5, what="3 healthy members")
    wait_for(
        lambda: servers_row(formed, standby.name)[0]["up"] is True,
        WAIT,
        interval=0.5,
        what="the member reported up",
    )
    assert metrics(formed, standby)[up_metric(standby)] == 1.0
    assert formed.active() is active


def test_two_killed_members_come_back_and_the_cluster_has_one_active(formed: CliCluster) -> None:
    active = formed.active()
    standby = next(n for n in formed.nodes.values() if n is not active)
    wait_for(lambda: all_healthy(formed, active), WAIT, interval=0.5, what="a healthy store")
    olds = {node.name: kill_member(node) for node in (active, standby)}
    # The store has lost its quorum: the active may fence (that is correct); its agent and
    # the standby's start their members again, and nobody touches anything.
    for node in (active, standby):
        wait_for(
            lambda node=node: restarted(node, olds[node.name]),  # type: ignore[misc]
            WAIT,
            interval=0.2,
            what=f"{node.name}'s member restarted",
        )
    wait_for(lambda: all_healthy(formed, active), WAIT, interval=0.5, what="3 healthy members")

    def one_active() -> bool:
        codes = {}
        for name, node in formed.nodes.items():
            answer = node.probe("/status")
            codes[name] = None if answer is None else answer["http_status"]
        assert list(codes.values()).count(200) <= 1, f"two actives: {codes}"
        return list(codes.values()).count(200) == 1

    wait_for(one_active, WAIT, interval=0.5, what="exactly one active again")
    status = formed.cli_json("cluster", "status")
    assert status["active"] in formed.nodes
    for node in formed.nodes.values():
        wait_for(
            lambda node=node: metrics(formed, node)[up_metric(node)] == 1.0,  # type: ignore[misc]
            WAIT,
            interval=0.5,
            what=f"{node.name}'s member reported up",
        )
    view = formed.view()
    assert [row["state"] for row in view.values()].count("active") == 1, view
