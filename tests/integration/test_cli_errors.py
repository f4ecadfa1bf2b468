"""Bad input at the command line: one clear line on stderr, exit status 2, nothing else (and
a store that does not answer: the same one line, with status 3, "cannot be reached")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hacore.testing.procs import free_port


def hacore(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hacore.cli", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def node_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "node.yaml"
    closed = free_port()
    path.write_text(
        f"node: {{name: a, host: 127.0.0.1, data_dir: {tmp_path}}}\n"
        f'consensus: {{backend: etcd, endpoints: ["http://127.0.0.1:{closed}"]}}\n'
    )
    return path


def one_error_line(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert result.returncode == code, result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize("backend", ["etcd", "zookeeper"])
def test_unreachable_store_is_one_line(tmp_path: Path, backend: str) -> None:
    port = free_port()
    store = (
        f"{{backend: etcd, endpoints: ['http://127.0.0.1:{port}']}}"
        if backend == "etcd"
        else f"{{backend: zookeeper, hosts: ['127.0.0.1:{port}']}}"
    )
    path = tmp_path / "node.yaml"
    path.write_text(
        f"node: {{name: a, host: 127.0.0.1, data_dir: {tmp_path}}}\nconsensus: {store}\n"
    )
    line = one_error_line(hacore("config", "check", "-c", str(path)), code=3)
    assert f"127.0.0.1:{port}" in line
    assert "within 1" in line


def test_unknown_backend_lists_registered_ones(node_yaml: Path) -> None:
    line = one_error_line(
        hacore("config", "check", "-c", str(node_yaml), "--options", "consensus.backend=etdc")
    )
    assert "unknown consensus backend 'etdc'" in line
    for name in ("etcd", "memory", "zookeeper"):
        assert name in line


def test_malformed_option_string(node_yaml: Path) -> None:
    line = one_error_line(hacore("config", "check", "-c", str(node_yaml), "--options", "k1=;=v"))
    assert 'cannot parse "k1=;=v"' in line


def test_unsafe_timing(node_yaml: Path) -> None:
    line = one_error_line(
        hacore("config", "check", "-c", str(node_yaml), "--options", "timing.ttl=2")
    )
    assert "loop_wait + 2 * retry_timeout + safety_margin" in line
    assert "ttl = 2" in line


def test_valid_config_without_connecting(node_yaml: Path) -> None:
    result = hacore("config", "check", "-c", str(node_yaml), "--no-connect")
    assert result.returncode == 0, result.stderr
    assert "configuration valid (node a)" in result.stdout
