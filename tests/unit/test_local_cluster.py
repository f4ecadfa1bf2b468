"""The local-cluster scaffold: the node configuration it writes, pid files, kill_tree."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

from hacore.backends.processes import process_table
from hacore.config.node import load_config
from hacore.testing.local_cluster import LocalNode, kill_tree, managed_store_ports, pid_in
from hacore.testing.procs import pid_alive, wait_for


def test_the_node_configuration_has_the_node_s_layout_and_loads(tmp_path: Path) -> None:
    node = LocalNode("n1", tmp_path, "zookeeper", store=managed_store_ports("zookeeper"))
    raw = node.write_config(
        cluster="c",
        namespace="ns",
        checks={"check_fail_fast": False},
        replication={"parameters": {"fsync": "off"}},
        extra={"tls": {"enabled": False}},
    )
    assert yaml.safe_load(node.config_path.read_text()) == raw
    assert list(raw) == ["cluster", "node", "checks", "consensus", "replication", "tls"]
    assert raw["node"] == {
        "name": "n1",
        "host": "127.0.0.1",
        "api_port": node.api_port,
        "data_dir": str(tmp_path / "n1"),
    }
    assert raw["consensus"] == {"backend": "zookeeper", "managed": True, **node.store}
    assert set(node.store) == {"client_port", "peer_port", "election_port"}
    assert raw["replication"] == {
        "backend": "postgresql",
        "port": node.pg_port,
        "parameters": {"fsync": "off"},
    }
    config = load_config(raw)
    assert config.node.data_dir == node.data_dir
    assert node.address == f"127.0.0.1:{node.api_port}"


def test_a_given_consensus_section_replaces_the_managed_member(tmp_path: Path) -> None:
    node = LocalNode("n1", tmp_path)
    consensus = {"backend": "etcd", "endpoints": ["http://127.0.0.1:2379"]}
    assert node.node_config(cluster="c", namespace="ns", consensus=consensus)["consensus"] == (
        consensus
    )


def _exited_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_pid_in_reads_a_number_or_json_and_only_a_live_process(tmp_path: Path) -> None:
    path = tmp_path / "x.pid"
    assert pid_in(path) is None
    path.write_text(f"{os.getpid()}\n/data\n")
    assert pid_in(path) == os.getpid()
    path.write_text(json.dumps({"pid": os.getpid()}))
    assert pid_in(path) == os.getpid()
    path.write_text(f"{_exited_pid()}\n")
    assert pid_in(path) is None
    path.write_text("not a pid")
    assert pid_in(path) is None


def test_kill_tree_kills_the_session_a_process_leads_and_its_children() -> None:
    """A shell in a session of its own, an orphan left in its session (as Syncthing's
    monitor leaves the real Syncthing) and a child in a session of its own: all of them go."""
    script = "(sleep 300 &); setsid sleep 301 & wait"
    leader = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    found: set[int] = set()

    def members() -> set[int]:
        return {
            e.pid
            for e in process_table()
            if e.alive and (e.sid == leader.pid or e.ppid == leader.pid)
        }

    try:
        wait_for(lambda: len(found.union(members())) >= 3, 10, what="the shell's two sleeps")
        found = members()
        kill_tree(leader.pid)
        leader.wait(timeout=10)
        wait_for(lambda: not any(pid_alive(p) for p in found), 10, what="every member to die")
        assert pid_alive(os.getpid())
    finally:
        for pid in found | members():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        leader.wait(timeout=10)
