"""``hacore cluster haproxy-config`` run by a real HAProxy in front of a real cluster; and an
operator's ``pg_basebackup`` over a member's Unix socket.

A 3-node loopback cluster (managed etcd, TLS) is formed through the CLI. The generated file
passes ``haproxy -c``; HAProxy run with it sends a PostgreSQL connection to the active's
database, and after a switchover to the new active's. The check goes over TLS against the
cluster CA with no ``verifyhost`` (node certificates name IP addresses only): a wrong check
marks every server down, and no connection would get through.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator

import psycopg
import pytest
from cluster_fixtures import WAIT, CliCluster, Node, formed_cluster

from hacore.testing.procs import ServerProcess, free_port, wait_for
from hacore_plugins.postgresql.settings import default_bin_dir

HAPROXY = shutil.which("haproxy")
BIN = default_bin_dir()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(BIN is None, reason="no PostgreSQL binaries installed"),
]

APP_PASSWORD = "app-secret-42"


@pytest.fixture(scope="module")
def formed() -> Iterator[CliCluster]:
    yield from formed_cluster("etcd")


def through(front: int, node: Node) -> tuple[int, bool]:
    """Connect through HAProxy (TLS passed through to PostgreSQL, the chain checked against
    the cluster CA, a node certificate as the client's): the server's port and whether it is
    a standby."""
    pki = node.data_dir / "pki" / "node"
    with psycopg.connect(
        host="127.0.0.1",
        port=front,
        user="app",
        password=APP_PASSWORD,
        dbname="postgres",
        sslmode="verify-ca",
        sslrootcert=str(pki / "ca.crt"),
        sslcert=str(pki / "node.crt"),
        sslkey=str(pki / "node.key"),
        connect_timeout=3,
    ) as conn:
        row = conn.execute("SELECT inet_server_port(), pg_is_in_recovery()").fetchone()
    assert row is not None
    return int(row[0]), bool(row[1])


def lands_on(front: int, node: Node, client: Node) -> bool:
    """Several fresh connections in a row all reach ``node``'s database, writable."""
    return all(through(front, client) == (node.pg_port, False) for _ in range(5))


@pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed")
def test_generated_haproxy_config_follows_the_active(formed: CliCluster) -> None:
    active = formed.active()
    with active.connect() as conn:
        conn.execute(f"CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}'")
    front = free_port()
    ca_file = formed.root / "haproxy-ca.crt"
    text = formed.cli(
        "cluster",
        "haproxy-config",
        "--bind",
        f"127.0.0.1:{front}",
        "--ca-file",
        str(ca_file),
        "--write-ca",
        "--inter",
        "0.5",
    ).stdout
    assert ca_file.read_text() == active.ca_file.read_text()
    for node in formed.nodes.values():
        assert f"server {node.name} 127.0.0.1:{node.pg_port} check port {node.api_port}" in text
    assert "http-check send meth GET uri /status" in text
    assert "http-check expect status 200" in text
    assert f"check-ssl verify required ca-file {ca_file}" in text
    assert "on-marked-down shutdown-sessions" in text
    assert "verifyhost" not in text
    config = formed.root / "haproxy.cfg"
    config.write_text(text)
    checked = subprocess.run(
        [str(HAPROXY), "-c", "-f", str(config)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    proc = ServerProcess(
        "haproxy", [str(HAPROXY), "-db", "-f", str(config)], formed.root / "haproxy.log"
    ).start()
    try:
        client = active
        wait_for(lambda: lands_on(front, active, client), WAIT, 0.3, what="HAProxy → active")
        target = next(n for n in formed.nodes.values() if n is not active)
        wait_for(
            lambda: formed.view()[target.name]["replication"] == "streaming",
            WAIT,
            what=f"{target.name} streaming before the switchover",
        )
        formed.cli("cluster", "switchover", "--to", target.name, "--timeout", str(WAIT))
        wait_for(lambda: lands_on(front, target, client), WAIT, 0.3, what="HAProxy → new active")
    except TimeoutError:
        pytest.fail(f"HAProxy did not send traffic to the active:\n{proc.log_tail()}")
    finally:
        proc.stop(signal.SIGTERM)


def test_pg_basebackup_over_the_unix_socket_on_a_member(formed: CliCluster) -> None:
    """As root on a member, as docs/postgresql.md shows: the local replication row lets it in
    (peer, through the ident map), and the copy verifies."""
    assert BIN is not None
    node = formed.active()
    target = formed.root / "base"
    result = subprocess.run(
        [
            str(BIN / "pg_basebackup"),
            "-h",
            str(node.data_dir / "replication" / "run"),
            "-p",
            str(node.pg_port),
            "-U",
            "postgres",
            "-D",
            str(target),
            "-X",
            "stream",
            "-c",
            "fast",
            "--no-password",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    verified = subprocess.run(
        [str(BIN / "pg_verifybackup"), str(target)], capture_output=True, text=True, timeout=300
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
