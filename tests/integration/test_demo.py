"""The README's first command runs `hacore demo`: it must work and leave nothing running."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

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
    assert "is active: its /status answered 200" in out
    assert "100 of 100 rows" in out
    assert "streams from" in out and "again" in out
    assert _processes_mentioning(str(workdir)) == []
