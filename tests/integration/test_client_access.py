"""An application reaches the active's database through a real HAProxy, as
docs/postgresql.md ("Applications") and docs/haproxy.md tell an operator to set it up.

A 2-node loopback cluster (managed etcd, TLS) whose nodes list ``127.0.0.0/31`` in
``replication.clients``. An application role is created on the active; a client WITHOUT a
client certificate (scram over TLS, the chain checked against the cluster CA) connects through
HAProxy configured by ``hacore cluster haproxy-config``, writes rows, and after a switchover the
same client, reconnecting, reaches the new active and sees them. Before this setting existed
the members' rows wanted a node certificate from every TCP client, so the connection was
refused. A client from 127.0.0.2 (loopback too, but outside the listed network) is refused.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from cluster_fixtures import PG_PARAMETERS, WAIT, CliCluster, Node, make_root

from hacore.testing.procs import ServerProcess, free_port, wait_for
from hacore_plugins.postgresql.settings import default_bin_dir

HAPROXY = shutil.which("haproxy")
BIN = default_bin_dir()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(BIN is None, reason="no PostgreSQL binaries installed"),
    pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed"),
]

APP_PASSWORD = "app-secret-42"
#: 127.0.0.0 and 127.0.0.1: HAProxy's connections (from 127.0.0.1) match, 127.0.0.2's do not
CLIENTS = [{"network": "127.0.0.0/31", "method": "scram-sha-256"}]


def _add(cluster: CliCluster, name: str) -> Node:
    node = Node(name, cluster.root, cluster.backend, cluster.namespace)
    node.extra = {
        "replication": {
            "backend": "postgresql",
            "port": node.pg_port,
            "parameters": PG_PARAMETERS,
            "clients": CLIENTS,
        }
    }
    cluster.nodes[name] = node
    return node.start()


@pytest.fixture(scope="module")
def formed() -> Iterator[CliCluster]:
    cluster = CliCluster(make_root(), "etcd")
    try:
        first = _add(cluster, "n1")
        out = cluster.cli(
            "cluster", "start", "-c", str(first.config_path), "--timeout", str(WAIT)
        ).output
        found = re.search(r"cluster CA fingerprint \(SHA-256\): ([0-9A-F:]+)", out)
        assert found, out
        second = _add(cluster, "n2")
        cluster.cli(
            "cluster",
            "join",
            first.address,
            "-c",
            str(second.config_path),
            "--node-name",
            "n2",
            "--ca-fingerprint",
            found.group(1),
            "--timeout",
            str(WAIT),
        )
        yield cluster
    finally:
        cluster.cleanup()
        shutil.rmtree(cluster.root, ignore_errors=True)


def app_connect(host: str, port: int, ca_file: str, **extra: Any) -> psycopg.Connection[Any]:
    """The application's connection: a password, TLS with the server checked against the
    cluster CA, and no client certificate (``sslcert`` names no file)."""
    return psycopg.connect(
        host=host,
        port=port,
        user="app",
        password=APP_PASSWORD,
        dbname="appdb",
        sslmode="verify-ca",
        sslrootcert=ca_file,
        sslcert="/nonexistent/no-client-cert.crt",
        sslkey="/nonexistent/no-client-cert.key",
        connect_timeout=3,
        autocommit=True,
        **extra,
    )


def where(front: int, ca_file: str) -> tuple[int, bool]:
    with app_connect("127.0.0.1", front, ca_file) as conn:
        row = conn.execute("SELECT inet_server_port(), pg_is_in_recovery()").fetchone()
    assert row is not None
    return int(row[0]), bool(row[1])


def lands_on(front: int, node: Node, ca_file: str) -> bool:
    try:
        return all(where(front, ca_file) == (node.pg_port, False) for _ in range(3))
    except psycopg.OperationalError:
        return False


@contextlib.contextmanager
def relay_from(source: str, port: int) -> Iterator[int]:
    """A TCP relay on a free loopback port whose connections to 127.0.0.1:``port`` leave
    from ``source``: how one host can be a client from another address."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def serve() -> None:
        while not stop.is_set():
            try:
                inbound, _ = listener.accept()
            except OSError:
                return
            outbound = socket.create_connection(("127.0.0.1", port), source_address=(source, 0))
            for a, b in ((inbound, outbound), (outbound, inbound)):
                threading.Thread(target=pump, args=(a, b), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        listener.close()


def test_an_application_reaches_the_active_through_haproxy(formed: CliCluster) -> None:
    active = formed.active()
    standby = next(n for n in formed.nodes.values() if n is not active)
    assert BIN is not None
    # the recipe of docs/postgresql.md ("Application roles"), on the active
    recipe = subprocess.run(
        [str(BIN / "psql"), "-h", str(active.data_dir / "replication" / "run"),
         "-p", str(active.pg_port), "-U", "postgres", "-v", "ON_ERROR_STOP=1"],
        input=f"CREATE ROLE app LOGIN PASSWORD '{APP_PASSWORD}';\n"
        "CREATE DATABASE appdb OWNER app;\n",
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert recipe.returncode == 0, recipe.stderr
    with active.connect() as conn:
        rules = conn.execute(
            "SELECT type, database, user_name, address, netmask, auth_method, options, error"
            " FROM pg_hba_file_rules WHERE address = '127.0.0.0'"
        ).fetchall()
    assert rules == [("hostssl", ["all"], ["all"], "127.0.0.0", "255.255.255.254",
                      "scram-sha-256", None, None)]  # fmt: skip

    def replicated() -> bool:
        with standby.connect() as conn:
            row = conn.execute("SELECT rolpassword FROM pg_authid WHERE rolname = 'app'").fetchone()
        return row is not None and str(row[0]).startswith("SCRAM-SHA-256$")

    wait_for(replicated, WAIT, 0.3, what="the app role (scram) on the standby")

    ca_file = formed.root / "haproxy-ca.crt"
    front = free_port()
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
    config = formed.root / "haproxy.cfg"
    config.write_text(text)
    checked = subprocess.run(
        [str(HAPROXY), "-c", "-f", str(config)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    proc = ServerProcess(
        "haproxy", [str(HAPROXY), "-db", "-f", str(config)], formed.root / "haproxy.log"
    ).start()
    ca = str(ca_file)
    try:
        wait_for(lambda: lands_on(front, active, ca), WAIT, 0.3, what="HAProxy → active")
        with app_connect("127.0.0.1", front, ca) as conn:
            tls = conn.execute(
                "SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            ).fetchone()
            assert tls == (True, None), tls
            conn.execute("CREATE TABLE orders (id int PRIMARY KEY, note text)")
            conn.execute("INSERT INTO orders SELECT g, 'before' FROM generate_series(1, 50) g")
        wait_for(
            lambda: formed.view()[standby.name]["replication"] == "streaming",
            WAIT,
            what=f"{standby.name} streaming before the switchover",
        )
        formed.cli("cluster", "switchover", "--to", standby.name, "--timeout", str(WAIT))
        wait_for(lambda: lands_on(front, standby, ca), WAIT, 0.3, what="HAProxy → new active")
        with app_connect("127.0.0.1", front, ca) as conn:
            conn.execute("INSERT INTO orders VALUES (51, 'after')")
            count = conn.execute("SELECT count(*) FROM orders").fetchone()
            assert count == (51,), count
            assert conn.execute("SELECT inet_server_port()").fetchone() == (standby.pg_port,)
    except TimeoutError:
        pytest.fail(f"the application did not get through HAProxy:\n{proc.log_tail()}")
    finally:
        proc.stop(signal.SIGTERM)


def test_a_client_outside_the_listed_networks_is_refused(formed: CliCluster) -> None:
    active = formed.active()
    ca = str(active.ca_file)
    with app_connect("127.0.0.1", active.pg_port, ca) as conn:
        assert conn.execute("SELECT inet_client_addr()::text").fetchone() == ("127.0.0.1/32",)
    with (
        relay_from("127.0.0.2", active.pg_port) as port,
        pytest.raises(psycopg.OperationalError) as info,
    ):
        app_connect("127.0.0.1", port, ca).close()
    assert 'no pg_hba.conf entry for host "127.0.0.2", user "app"' in str(info.value)
