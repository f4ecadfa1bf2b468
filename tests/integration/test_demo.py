"""The README's first command runs `hacore demo`: it must work, show what it claims, and leave
nothing running.

The cluster demo runs the sample manager (examples/sample-manager, installed by
``scripts/setup``) on the cluster; its claims are checked twice: the demo raises when one
does not hold, and this test reads them back from its output and from the disks it leaves.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from hacore.backends.records import ClusterView
from hacore.config.node import load_config
from hacore.demo.cluster import AFTER, BLUEPRINT, NAMES
from hacore.demo.manager import FAILOVER_REASON, STEPS
from hacore.plugins.registry import load_plugins

HACORE = [sys.executable, "-m", "hacore.cli"]


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["etcd", "zookeeper"])
def test_store_demo_fails_over_and_cleans_up(backend: str, tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [*HACORE, "demo", "--store-only", "--backend", backend, "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "bootstrapped a one-member" in out
    assert out.count("joined the store") == 2
    assert "took over" in out
    assert "still accepts writes with 2 of its 3 members" in out
    assert _processes_mentioning(str(workdir)) == []


def test_demo_rejects_an_unknown_backend() -> None:
    result = subprocess.run(
        [*HACORE, "demo", "--backend", "nope"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "'nope' is not one of 'etcd', 'zookeeper'" in result.stderr


@pytest.mark.slow
def test_cluster_demo_fails_over_and_cleans_up() -> None:
    """The README's first command: start + 2 joins, a host death, the old node back."""
    # Short, and outside pytest's 0700 tmp dirs: the postgres user must enter it, and a
    # Unix socket path holds at most 107 bytes.
    workdir = Path(tempfile.mkdtemp(prefix="hcdemo-"))
    try:
        _run_cluster_demo(workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run_cluster_demo(workdir: Path) -> None:
    result = subprocess.run(
        [*HACORE, "demo", "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.count("$ hacore cluster join") == 2
    assert "100 of 100 rows" in out
    assert _processes_mentioning(str(workdir)) == []

    [(new, took)] = re.findall(r"(node\d) is active: its /status answered 200 ([\d.]+)s", out)
    old, standby = "node1", next(n for n in NAMES if n not in ("node1", new))
    assert new != old and float(took) < 60
    assert f"{old} streams from {new} again" in out

    # Services: on the active only, before the crash, after it, and after the old node is back.
    assert out.count(f"api and worker run on {old} only") == 1
    assert out.count(f"api and worker run on {new} only") == 2

    # Files: the first upload reached both standbys, the one after the failover reached the
    # other survivor and then the old node; the disks the demo leaves say so too.
    for name in NAMES[1:]:
        assert f"blueprint.yaml is on {name}'s disk" in out
    assert f"after-failover.txt is on {standby}'s disk" in out
    assert f"after-failover.txt is on {old}'s disk" in out
    for name in NAMES:
        resources = workdir / name / "resources"
        assert (resources / "blueprint.yaml").read_bytes() == BLUEPRINT
        assert (resources / "after-failover.txt").read_bytes() == AFTER

    # Workflows: the resumable one carried on where it stopped, the other one failed.
    resumed = _steps(out, "install-app (resumable): succeeded on " + new)
    k = sum(1 for node in resumed.values() if node == old)
    assert list(resumed) == list(range(1, STEPS + 1)), "every step once, none skipped"
    assert list(resumed.values()) == [old] * k + [new] * (STEPS - k) and 3 <= k < STEPS
    failed = _steps(out, f"nightly-backup (not resumable): failed: {FAILOVER_REASON}")
    assert list(failed) == list(range(1, len(failed) + 1)) and 3 <= len(failed) < STEPS
    assert set(failed.values()) == {old}


def _steps(out: str, header: str) -> dict[int, str]:
    """Step -> node from the ``  nodeX ran steps 1 2 3`` lines under the workflow's header."""
    lines = out.splitlines()
    [start] = [i for i, line in enumerate(lines) if header in line]
    found: dict[int, str] = {}
    for line in lines[start + 1 :]:
        match = re.fullmatch(r"  (node\d) ran steps? ([\d ]+)", line)
        if match is None:
            break
        for step in map(int, match.group(2).split()):
            assert step not in found, f"step {step} ran twice: {line}"
            found[step] = match.group(1)
    return found


def test_the_installed_sample_manager_leaves_other_clusters_alone() -> None:
    """scripts/setup installs the demo's sample manager into the environment, so every agent
    there loads its plugin: it must act only where node.yaml configures it."""
    plugin = load_plugins().pm.get_plugin("sample_manager")
    assert plugin is not None, "scripts/setup installs examples/sample-manager"
    bare = {"node": {"name": "a", "host": "127.0.0.1"}, "consensus": {"backend": "memory"}}
    config = load_config(bare)
    assert plugin.hacore_health_checks(config=config) == []
    # Acting here would fail: without a postgresql replication section it has no database.
    plugin.hacore_after_promote(config=config, view=ClusterView(leader=None))

    manager = load_config(
        {
            **bare,
            "replication": {"backend": "postgresql", "port": 5432},
            "plugins": {"settings": {"sample_manager": {}}},
        }
    )
    [check] = plugin.hacore_health_checks(config=manager)
    assert check.name == "sample-manager-api"
