"""``cluster start`` leaves no CLI profile that does not work (a finding of issue 14): a start
that fails gives the previous profile back, and a start whose command is interrupted (SIGTERM
once the node has its CA) while the agent finishes it by itself leaves a profile with the
node's ``https`` URL and the cluster CA, which the next command uses as it is.

One node, through the real CLI (etcd, PostgreSQL): the failed start is resumed by the
interrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator

import pytest
from cluster_fixtures import HACORE, WAIT, CliCluster, make_root

from hacore.cluster.bootstrap_token import TOKEN_FILE
from hacore.testing.procs import wait_for
from hacore_plugins.postgresql.settings import default_bin_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600, method="signal"),
    pytest.mark.skipif(default_bin_dir() is None, reason="no PostgreSQL binaries installed"),
]

PREVIOUS = {
    "cluster": "other",
    "username": "someone",
    "password": "theirs",
    "nodes": [{"name": "x1", "api_url": "https://192.0.2.1:8008"}],
    "ca_certificate": None,
}


@pytest.fixture
def single() -> Iterator[CliCluster]:
    cluster = CliCluster(make_root(), "etcd")
    try:
        yield cluster
    finally:
        cluster.cleanup()
        if not os.environ.get("HACORE_KEEP_TEST_DIRS"):
            shutil.rmtree(cluster.root, ignore_errors=True)


def test_a_failed_or_interrupted_start_leaves_no_profile_that_does_not_work(
    single: CliCluster,
) -> None:
    node = single.add("n1")
    config = str(node.config_path)
    single.profile.write_text(json.dumps(PREVIOUS))
    single.profile.chmod(0o600)

    # a start that fails (after the CA step): the store's client port is taken
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", node.store["client_port"]))
        blocker.listen()
        failed = single.cli("cluster", "start", "-c", config, "--timeout", str(WAIT), code=1)
    assert "already in use" in failed.output, failed.output
    assert "no CLI profile was kept" in failed.output, failed.output
    assert "run hacore cluster start again" in failed.output, failed.output
    assert json.loads(single.profile.read_text()) == PREVIOUS
    assert node.ca_file.is_file()  # the failure came after the node made its CA

    # run again (it resumes), and interrupted once the CA step is done: the agent goes on
    proc = subprocess.Popen(
        [HACORE, "cluster", "start", "-c", config, "--timeout", str(WAIT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "HACORE_PROFILE": str(single.profile), "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "[ok] cluster CA" in line:
            break
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    output = "".join(lines) + rest
    assert proc.returncode != 0, output
    assert "[ok] this node is active" not in output, "not interrupted before the end"
    # done once the service ended the start: the bootstrap token goes, the API takes the
    # cluster's credentials (a moment after /status says active)
    token = node.data_dir / TOKEN_FILE
    wait_for(lambda: not token.exists(), WAIT, what="n1 to finish the start by itself")
    assert (node.probe() or {}).get("active") is True
    profile = json.loads(single.profile.read_text())
    assert profile["cluster"] == "clitest"
    assert [n["api_url"] for n in profile["nodes"]] == [node.url], profile["nodes"]
    assert profile["ca_certificate"] == node.ca_file.read_text()
    assert single.cli_json("cluster", "status")["active"] == "n1"
