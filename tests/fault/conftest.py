"""Fixtures of the fault tests: one network of three hosts and one cluster on it per module.

Everything is skipped, with the reason, where network namespaces cannot be made (not root,
no ``ip``/``nft``) or the servers are missing. Namespaces, veths and the bridge left by a
crashed earlier run are removed first; this run's are removed at the end whatever happens.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from fault_cluster import VERDICTS, FaultCluster
from netns import Network, cleanup_stale, unavailable_reason

from hacore_plugins.postgresql.settings import default_bin_dir


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "fault tests need root (network namespaces)"
    if default_bin_dir() is None:
        return "no PostgreSQL binaries installed"
    if shutil.which("etcd") is None:
        return "no etcd binary on PATH"
    return unavailable_reason()


@pytest.fixture(scope="session")
def fault_network() -> Iterator[Network]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    cleanup_stale()
    with Network(3) as net:
        yield net


@pytest.fixture(scope="module")
def cluster(
    fault_network: Network, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultCluster]:
    """A formed cluster; each test leaves it whole again (one active, two streaming standbys)."""
    fault_network.heal()
    cluster = FaultCluster(fault_network)
    try:
        cluster.form()
        yield cluster
    finally:
        fault_network.heal()
        cluster.cleanup(keep_logs=tmp_path_factory.mktemp("fault-logs"))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The checker's numbers of every scenario that ran, whatever its outcome."""
    if VERDICTS:
        terminalreporter.section("fault checker")
        for line in VERDICTS:
            terminalreporter.write_line(line)
