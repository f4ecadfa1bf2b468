"""A joining node starts its fence keeper before its store join, not during the copy.

The keeper's start-up (a Python process importing hacore and the plugins it needs) took a few
tenths of a second of CPU right as the database copy began; on a two-core machine the copy
was that much slower (issue 15, target 3). It now starts at the store join, which mostly
waits on the store, and the agent takes it over. A join rolled back after that leaves no
keeper behind.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from cluster_fixtures import WAIT, CliCluster, formed_cluster, tree

from hacore.agent.keeper import PID_FILE
from hacore.backends.processes import read_proc
from hacore_plugins.postgresql.settings import default_bin_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(default_bin_dir() is None, reason="no PostgreSQL binaries installed"),
]


@pytest.fixture(scope="module")
def formed() -> Iterator[CliCluster]:
    yield from formed_cluster("etcd")


def started(pid_file: Path) -> int:
    """When the process in ``pid_file`` started, in clock ticks since boot."""
    entry = read_proc(int(pid_file.read_text().strip()))
    assert entry is not None, f"no process of {pid_file}"
    return entry.started


def keepers_of(config: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if "keeper" in argv and str(config) in argv:
            found.append(int(entry.name))
    return found


def test_a_joined_node_started_its_keeper_before_its_store_server(formed: CliCluster) -> None:
    for name in ("n2", "n3"):
        node = formed.nodes[name]
        keeper = started(node.data_dir / PID_FILE)
        store = started(node.data_dir / "store" / "etcd.pid")
        assert keeper <= store, f"{name}: keeper started {keeper - store} ticks after etcd"


def test_a_rolled_back_join_leaves_no_keeper(formed: CliCluster) -> None:
    active = formed.active()
    late = formed.add("late")
    files = tree(late.data_dir)
    # another program holds the port of this node's store server: its store join fails
    with socket.create_server(("127.0.0.1", late.store["client_port"])):
        formed.cli(
            "cluster",
            "join",
            active.address,
            "-c",
            str(late.config_path),
            "--node-name",
            "late",
            "--timeout",
            str(WAIT),
            code=1,
        )
    assert tree(late.data_dir) == files
    assert keepers_of(late.config_path.absolute()) == []
