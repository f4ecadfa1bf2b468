"""``cluster teardown`` and ``node uninstall`` on real 3-node clusters (etcd, PostgreSQL).

Teardown must take the standbys out first and the active last without any failover: a
writer keeps writing to the active until its own last step, no standby ever wins the
election (their logs), the fencing token and the history do not change (the command checks
both against the active and refuses to go on otherwise), and in the end no process of the
cluster runs and none of its ports is bound. A standby already dead (every process of it
SIGKILLed) is dropped without waiting for it. ``node uninstall`` removes only what hacore
created, and refuses a live member unless forced.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_fixtures import HACORE, WAIT, CliCluster, Node, formed_cluster, kill_tree
from row_writer import RowWriter

from hacore.cli.agent_unit import agent_unit
from hacore.testing.procs import port_open, wait_for
from hacore_plugins.postgresql.settings import default_bin_dir

pytestmark = [
    pytest.mark.slow,
    # three nodes formed, then taken down, on a shared two-core machine
    pytest.mark.timeout(900, method="signal"),
    pytest.mark.skipif(default_bin_dir() is None, reason="no PostgreSQL binaries installed"),
]


@pytest.fixture
def trio() -> Iterator[CliCluster]:
    yield from formed_cluster("etcd")


def run_teardown(cluster: CliCluster, *args: str) -> list[tuple[float, str]]:
    """``hacore cluster teardown --yes`` as an operator runs it; its lines, timestamped."""
    proc = subprocess.Popen(
        [HACORE, "cluster", "teardown", "--yes", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "HACORE_PROFILE": str(cluster.profile)},
    )
    assert proc.stdout is not None
    lines = [(time.monotonic(), line.rstrip("\n")) for line in proc.stdout]
    code = proc.wait(timeout=30)
    text = "\n".join(line for _, line in lines)
    assert code == 0, f"teardown exited {code}:\n{text}"
    return lines


def cluster_processes(root: Path) -> list[str]:
    """Every process whose command line names a path under the cluster's root."""
    found = []
    inside = str(root) + os.sep
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if any(inside in arg for arg in argv):
            found.append(f"{entry.name}: {' '.join(argv)[:150]}")
    return found


def node_ports(node: Node) -> list[int]:
    return [node.api_port, node.pg_port, *node.store.values()]


def assert_all_gone(nodes: list[Node], root: Path) -> None:
    for node in nodes:
        assert node.proc is not None
        wait_for(lambda n=node: not n.proc.alive(), WAIT, what=f"{node.name}'s service to exit")
    wait_for(
        lambda: not cluster_processes(root),
        60.0,
        what=f"no process left: {cluster_processes(root)}",
    )
    bound = [(n.name, p) for n in nodes for p in node_ports(n) if port_open("127.0.0.1", p)]
    assert not bound, f"ports still bound: {bound}"


def line_at(lines: list[tuple[float, str]], pattern: str) -> float:
    found = [at for at, line in lines if re.search(pattern, line)]
    assert found, f"no line matching {pattern!r} in:\n" + "\n".join(ln for _, ln in lines)
    return found[0]


def test_teardown_removes_the_standbys_then_the_active_without_a_failover(
    trio: CliCluster,
) -> None:
    active = trio.active()
    standbys = sorted((n for n in trio.nodes.values() if n is not active), key=lambda n: n.name)
    logs_before = {n.name: n.proc.log_path.stat().st_size for n in standbys if n.proc}
    with active.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS teardown (id bigint PRIMARY KEY)")
    writer = RowWriter(active.connect, "INSERT INTO teardown (id) VALUES (%s)", interval=0.05)
    writer.start()
    began = time.monotonic()
    try:
        lines = run_teardown(trio)
    finally:
        writer.stop()
    text = "\n".join(line for _, line in lines)
    first = line_at(lines, f"removing {standbys[0].name} \\(standby\\)")
    second = line_at(lines, f"removing {standbys[1].name} \\(standby\\)")
    last = line_at(lines, f"stopping {active.name}, the active and last node")
    assert began < first < second < last, text
    assert "no change of active during it" in text
    assert "did not" not in text and "still answers" not in text, text
    # the active took writes until its own step, during both removals
    failed = [(at, err) for at, err in writer.errors if at < last]
    assert not failed, f"the active refused writes before its turn: {failed[:3]}"
    assert any(at > second for at in writer.acked_at), "no write acknowledged after the removals"
    # no standby ever won the election (a promotion starts with it)
    for node in standbys:
        assert node.proc is not None
        with node.proc.log_path.open(errors="replace") as log:
            log.seek(logs_before[node.name])
            tail = log.read()
        assert "won the election" not in tail, f"{node.name} campaigned:\n{tail[-3000:]}"
        assert "this node was removed from cluster clitest" in tail
    assert_all_gone(list(trio.nodes.values()), trio.root)

    # node uninstall on each machine: what hacore created goes, nothing else
    units = trio.root / "systemd"
    units.mkdir()
    (units / "hacore-agent.service").write_text(agent_unit(active.config_path))
    (units / "other.service").write_text("[Service]\nExecStart=/bin/true agent run -c x.yaml\n")
    keep_parent = trio.root / "operator-notes.txt"
    keep_parent.write_text("not hacore's\n")
    foreign = standbys[1].data_dir / "operator-file"
    foreign.write_text("not hacore's either\n")
    assert trio.profile.is_file()
    for node in trio.nodes.values():
        out = uninstall(trio, node, "--systemd-dir", str(units))
        assert out.returncode == 0, out.stdout
    assert not active.data_dir.exists()
    assert not standbys[0].data_dir.exists()
    # a file hacore did not create is left, and so the directory holding it
    assert sorted(p.name for p in standbys[1].data_dir.iterdir()) == [
        ".hacore-created",
        "operator-file",
    ]
    assert keep_parent.read_text() == "not hacore's\n"
    assert all(n.config_path.is_file() for n in trio.nodes.values())
    assert sorted(p.name for p in units.iterdir()) == ["other.service"]
    assert not trio.profile.exists()


def uninstall(cluster: CliCluster, node: Node, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HACORE, "node", "uninstall", "-c", str(node.config_path), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HACORE_PROFILE": str(cluster.profile)},
    )


def test_teardown_with_a_standby_already_dead(trio: CliCluster) -> None:
    active = trio.active()
    dead, alive = sorted((n for n in trio.nodes.values() if n is not active), key=lambda n: n.name)
    store = dead.store_server()
    dead.crash()
    assert store is not None
    kill_tree(store)
    assert not cluster_processes(dead.data_dir)
    started = time.monotonic()
    lines = run_teardown(trio)
    text = "\n".join(line for _, line in lines)
    dropped = line_at(lines, f"removing {dead.name}: it does not answer")
    assert dropped < line_at(lines, f"removing {alive.name} \\(standby\\)"), text
    assert "no change of active during it" in text
    assert time.monotonic() - started < 300, text
    assert_all_gone([active, alive], trio.root)


def test_uninstall_refuses_a_member_unless_forced(trio: CliCluster) -> None:
    active = trio.active()
    victim = max((n for n in trio.nodes.values() if n is not active), key=lambda n: n.name)
    refused = uninstall(trio, victim)
    assert refused.returncode == 4, refused.stdout + refused.stderr
    assert f"{victim.name} is still a member of cluster clitest" in refused.stderr
    assert f"hacore cluster nodes remove {victim.name}" in refused.stderr
    assert "hacore cluster teardown" in refused.stderr
    assert victim.proc is not None and victim.proc.alive()
    assert victim.postmaster() is not None and victim.store_server() is not None
    assert (victim.data_dir / "cluster.json").is_file() and victim.ca_file.is_file()
    # no terminal to confirm at and no --yes: teardown refuses before touching anything
    refused_teardown = trio.cli("cluster", "teardown", code=2)
    assert "cluster teardown needs --yes when not run at a terminal" in refused_teardown.output
    assert set(trio.view()) == {"n1", "n2", "n3"}
    forced = uninstall(trio, victim, "-f", "--systemd-dir", str(trio.root / "none"))
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert f"node {victim.name} uninstalled" in forced.stdout
    wait_for(lambda: not victim.proc.alive(), 30.0, what=f"{victim.name}'s service gone")
    assert not cluster_processes(victim.data_dir)
    assert not [p for p in node_ports(victim) if port_open("127.0.0.1", p)]
    assert not victim.data_dir.exists()
    # the profile is the cluster's, and this machine shares it with the others: removed
    assert not trio.profile.exists()
    # the cluster lives on without it
    assert active.probe()["http_status"] == 200
    victim.proc.send_signal(signal.SIGKILL)
