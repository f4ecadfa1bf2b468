"""``cluster join`` asks its agent for the join before it looks for keyring backends.

Finding them imports and tries every installed backend: the CLI does it while the join runs
(the profile is saved at its end), but not before the request, whose every millisecond the
join waits for. One empty node's real agent service; the join is asked of an address where
nothing listens, so the agent refuses it at once (exit status 3) and nothing changes.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from cluster_fixtures import CliCluster, make_root

from hacore.api.client import ApiClient
from hacore.cli import cluster_join
from hacore.testing.procs import free_port
from hacore_plugins.postgresql.settings import default_bin_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(default_bin_dir() is None, reason="no PostgreSQL binaries installed"),
]


@pytest.fixture
def lone() -> Iterator[CliCluster]:
    root = make_root()
    cluster = CliCluster(root, "etcd")
    try:
        yield cluster
    finally:
        cluster.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def test_the_join_is_asked_for_before_the_keyring_search_starts(
    lone: CliCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = lone.add("k1")
    release = threading.Event()
    # the search, held until the test ends: if it started before the request, it still runs
    monkeypatch.setattr(cluster_join, "_find_keyring", lambda: release.wait(60))
    searching: list[bool] = []
    ask = ApiClient.join_ticket

    def asked(self: ApiClient, request: dict[str, Any]) -> dict[str, Any]:
        if request.get("action") == "join":
            threads = threading.enumerate()
            searching.append(any(t.name == "keyring" and t.is_alive() for t in threads))
        return ask(self, request)

    monkeypatch.setattr(ApiClient, "join_ticket", asked)
    nowhere = f"127.0.0.1:{free_port()}"
    try:
        result = lone.cli(
            "cluster", "join", nowhere, "-c", str(node.config_path), "--node-name", "k1",
            "--username", "admin", "--ca-fingerprint", "AA",
            code=None, env={"HACORE_PASSWORD": "not-used"},
        )  # fmt: skip
    finally:
        release.set()
    assert result.exit_code == 3, result.output
    assert searching == [False]
