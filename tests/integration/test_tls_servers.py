"""Real servers running on the cluster CA's material.

Node A creates the CA; node B "joins": it receives the CA through the join bundle (serialised
to JSON and back, as on the wire) and signs its own certificate. Then an HTTPS server, a
two-member etcd with client and peer TLS, and PostgreSQL with ``ssl=on`` run on that material,
and clients that trust only the CA reach them. Every process is stopped by its pid.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pwd
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import attrs
import httpx
import psycopg
import pytest

from hacore.pki import (
    CaMaterial,
    NodeCertificate,
    ca_bundle_for_join,
    ca_from_join,
    create_ca,
    install_for_user,
    issue_node_certificate,
    ssl_client_context,
    ssl_server_context,
    store_ca,
)
from hacore.testing.procs import ServerProcess, free_port, wait_for
from hacore_plugins.etcd.backend import EtcdConsensus
from hacore_plugins.etcd.managed import DEFAULT_BINARY as ETCD
from hacore_plugins.postgresql.settings import default_bin_dir

pytestmark = pytest.mark.slow

WAIT = 60.0


@attrs.frozen
class Cluster:
    ca: CaMaterial
    node_a: NodeCertificate
    node_b: NodeCertificate
    foreign: NodeCertificate


def join(
    active_ca: CaMaterial, directory: Path, node_name: str, hosts: list[str]
) -> NodeCertificate:
    """What a joiner does with the CA part of its join ticket."""
    ticket = json.loads(json.dumps({"ca": ca_bundle_for_join(active_ca)}))
    own_ca = store_ca(ca_from_join(ticket["ca"]), directory)
    return issue_node_certificate(own_ca, node_name, hosts, directory)


@pytest.fixture(scope="session")
def tls_root() -> Iterator[Path]:
    # traversable by the postgres user, unlike pytest's 0700 temp dirs
    root = Path(tempfile.mkdtemp(prefix="hacore-tls-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster(tls_root: Path) -> Cluster:
    ca = create_ca("it", tls_root / "a")
    node_a = issue_node_certificate(ca, "node-a", ["127.0.0.1", "localhost"], tls_root / "a")
    node_b = join(ca, tls_root / "b", "node-b", ["127.0.0.2", "127.0.0.1", "localhost"])
    other = create_ca("it", tls_root / "other")
    foreign = issue_node_certificate(other, "node-a", ["127.0.0.1", "localhost"], tls_root / "o")
    return Cluster(ca, node_a, node_b, foreign)


# -------------------------------------------------------------------------------------------
# (a) HTTPS servers: the client keeps trusting whichever node serves


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = self.server.node_name.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def https_server(host: str, node: NodeCertificate, context: ssl.SSLContext) -> Iterator[str]:
    httpd = ThreadingHTTPServer((host, free_port(host)), _Hello)
    httpd.node_name = node.node_name  # type: ignore[attr-defined]
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"https://{host}:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def test_a_client_trusting_the_ca_reaches_every_node(tls_root: Path) -> None:
    ca = create_ca("failover", tls_root / "fa")
    node_a = issue_node_certificate(ca, "node-a", ["127.0.0.1", "localhost"], tls_root / "fa")
    client = httpx.Client(verify=ssl_client_context(ca.certificate), timeout=10)
    with client:
        with https_server("127.0.0.1", node_a, ssl_server_context(node_a, ca, False)) as url_a:
            assert client.get(f"{url_a}/").text == "node-a"
            port = url_a.rsplit(":", 1)[1]
            assert client.get(f"https://localhost:{port}/").text == "node-a"

        # B joins after the client was made: same client, same context, no new certificate
        node_b = join(ca, tls_root / "fb", "node-b", ["127.0.0.2"])
        assert node_b.ca_file.read_bytes() == ca.certificate_pem()
        with https_server("127.0.0.2", node_b, ssl_server_context(node_b, ca, False)) as url_b:
            assert client.get(f"{url_b}/").text == "node-b"

        # and a server whose certificate another CA signed is refused
        other = create_ca("failover", tls_root / "fo")
        stranger = issue_node_certificate(other, "node-a", ["127.0.0.1"], tls_root / "fo")
        with (
            https_server("127.0.0.1", stranger, ssl_server_context(stranger, other, False)) as bad,
            pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"),
        ):
            client.get(f"{bad}/")


def test_a_context_requiring_client_certificates_admits_only_the_cas(cluster: Cluster) -> None:
    """The pki contexts themselves, on a minimal server: hacore's agent API asks for no client
    certificate (its callers log in; tests/integration/test_cluster_tls.py covers it), the
    store servers do, with the same CA (etcd below)."""
    server_context = ssl_server_context(cluster.node_b, cluster.ca, require_client_cert=True)
    with https_server("127.0.0.2", cluster.node_b, server_context) as url:
        as_node_a = ssl_client_context(cluster.ca, cluster.node_a)
        assert httpx.get(f"{url}/", verify=as_node_a, timeout=10).text == "node-b"
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/", verify=ssl_client_context(cluster.ca), timeout=10)
        as_stranger = ssl_client_context(cluster.ca, cluster.foreign)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/", verify=as_stranger, timeout=10)
        # the server still serves its own after the refusals
        assert httpx.get(f"{url}/", verify=as_node_a, timeout=10).text == "node-b"


# -------------------------------------------------------------------------------------------
# (b) etcd: client and peer traffic on the cluster CA


def _etcd_member(
    home: Path, name: str, node: NodeCertificate, ports: tuple[int, int], members: str, token: str
) -> ServerProcess:
    client_url, peer_url = (f"https://127.0.0.1:{port}" for port in ports)
    tls = {"cert-file": node.cert_file, "key-file": node.key_file, "trusted-ca-file": node.ca_file}
    argv = [
        ETCD,
        "--name", name,
        "--data-dir", str(home / "data"),
        "--logger=zap",
        "--log-outputs=stderr",
        "--listen-client-urls", client_url,
        "--advertise-client-urls", client_url,
        "--listen-peer-urls", peer_url,
        "--initial-advertise-peer-urls", peer_url,
        "--initial-cluster", members,
        "--initial-cluster-token", token,
        "--initial-cluster-state", "new",
        "--client-cert-auth",
        "--peer-client-cert-auth",
        *[f"--{flag}={path}" for flag, path in tls.items()],
        *[f"--peer-{flag}={path}" for flag, path in tls.items()],
    ]  # fmt: skip
    (home / "data").mkdir(mode=0o700, parents=True)
    return ServerProcess(name, argv, home / "etcd.log", cwd=home)


@pytest.fixture(scope="session")
def etcd_pair(cluster: Cluster, tls_root: Path) -> Iterator[list[str]]:
    if not os.access(ETCD, os.X_OK):
        pytest.skip(f"no etcd binary at {ETCD}")
    ports = {name: (free_port(), free_port()) for name in ("etcd-a", "etcd-b")}
    members = ",".join(f"{name}=https://127.0.0.1:{p[1]}" for name, p in ports.items())
    token = f"hacore-tls-{uuid.uuid4().hex}"
    servers = [
        _etcd_member(tls_root / name, name, node, ports[name], members, token)
        for name, node in (("etcd-a", cluster.node_a), ("etcd-b", cluster.node_b))
    ]
    try:
        for server in servers:
            server.start()
        endpoints = [f"https://127.0.0.1:{p[0]}" for p in ports.values()]
        context = ssl_client_context(cluster.ca, cluster.node_a)

        def healthy() -> bool:
            for server in servers:
                if not server.alive():
                    raise RuntimeError(f"{server.name} exited:\n{server.log_tail()}")
            return all(
                httpx.get(f"{e}/health", verify=context, timeout=5).json().get("health") == "true"
                for e in endpoints
            )

        wait_for(healthy, WAIT, interval=0.2, what="the TLS etcd pair to be healthy")
        yield endpoints
    finally:
        for server in servers:
            server.stop()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_etcd_serves_clients_and_peers_over_the_cluster_ca(
    cluster: Cluster, etcd_pair: list[str]
) -> None:
    endpoint_a, endpoint_b = etcd_pair
    context = ssl_client_context(cluster.ca, cluster.node_a)
    with httpx.Client(verify=context, timeout=10) as client:
        put = client.post(
            f"{endpoint_a}/v3/kv/put", json={"key": _b64("tls/probe"), "value": _b64("via A")}
        )
        put.raise_for_status()
        # written on A, read on B: the peers replicated it over peer TLS
        found = client.post(f"{endpoint_b}/v3/kv/range", json={"key": _b64("tls/probe")})
        found.raise_for_status()
        [kv] = found.json()["kvs"]
        assert base64.b64decode(kv["value"]) == b"via A"

    # the etcd engineer's backend, configured with the node's files
    backend = EtcdConsensus(
        {
            "endpoints": etcd_pair,
            "ca_file": str(cluster.node_b.ca_file),
            "cert_file": str(cluster.node_b.cert_file),
            "key_file": str(cluster.node_b.key_file),
        },
        namespace=f"/tls-{uuid.uuid4().hex[:8]}",
        node_name="node-b",
        ttl=10,
        retry_timeout=10,
    )
    with backend:
        assert backend.put("greeting", b"over mutual TLS")
        got = backend.get("greeting")
        assert got is not None and got.value == b"over mutual TLS"


def test_etcd_refuses_clients_without_a_certificate_from_the_ca(
    cluster: Cluster, etcd_pair: list[str]
) -> None:
    body = {"key": _b64("tls/probe")}
    url = f"{etcd_pair[0]}/v3/kv/range"
    with pytest.raises(httpx.TransportError):
        httpx.post(url, json=body, verify=ssl_client_context(cluster.ca), timeout=10)
    with pytest.raises(httpx.TransportError):
        httpx.post(
            url, json=body, verify=ssl_client_context(cluster.ca, cluster.foreign), timeout=10
        )
    with pytest.raises(httpx.TransportError):
        httpx.post(url.replace("https", "http"), json=body, timeout=10)
    # a client that does not trust the cluster CA refuses the server
    stranger_ca = ssl.create_default_context()
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.post(url, json=body, verify=stranger_ca, timeout=10)


# -------------------------------------------------------------------------------------------
# (c) PostgreSQL with ssl=on and a key owned by postgres


@attrs.frozen
class Postgres:
    port: int
    server_files: tuple[Path, ...]


def _pg_user() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return None


def _stop_postmaster(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)  # fast shutdown
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def postgres(cluster: Cluster, tls_root: Path) -> Iterator[Postgres]:
    bin_dir = default_bin_dir()
    user = _pg_user()
    if bin_dir is None or user is None or os.geteuid() != 0:
        pytest.skip("needs root, a postgres user and PostgreSQL binaries")
    home = tls_root / "pg"
    home.mkdir(mode=0o755)
    os.chown(home, user.pw_uid, user.pw_gid)
    pgdata = home / "data"
    as_postgres: dict[str, Any] = {"user": user.pw_uid, "group": user.pw_gid, "cwd": home}
    subprocess.run(
        [bin_dir / "initdb", "-D", pgdata, "-U", "postgres", "-A", "trust", "-E", "UTF8",
         "--locale=C", "--no-sync"],
        check=True, capture_output=True, **as_postgres,
    )  # fmt: skip
    (pgdata / "pg_hba.conf").write_text(
        "local all postgres trust\nhostssl all postgres 127.0.0.1/32 cert map=nodes\n"
    )
    (pgdata / "pg_ident.conf").write_text("nodes node-a postgres\n")
    node = cluster.node_b
    server_files = install_for_user(
        [node.cert_file, node.key_file, node.ca_file], "postgres", directory=home / "tls"
    )
    cert_file, key_file, ca_file = server_files
    port = free_port()
    settings = {
        "port": port,
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": str(home),
        "shared_buffers": "16MB",
        "max_connections": 10,
        "fsync": "off",
        "ssl": "on",
        "ssl_cert_file": cert_file,
        "ssl_key_file": key_file,
        "ssl_ca_file": ca_file,
    }
    argv = [str(bin_dir / "postgres"), "-D", str(pgdata)]
    for name, value in settings.items():
        argv += ["-c", f"{name}={value}"]
    with open(home / "postgres.log", "wb") as log:
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **as_postgres
        )
    try:

        def accepting() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"postgres exited:\n{(home / 'postgres.log').read_text()}")
            with psycopg.connect(host=str(home), port=port, user="postgres", dbname="postgres"):
                return True

        wait_for(accepting, WAIT, interval=0.1, what="PostgreSQL to accept connections")
        yield Postgres(port, server_files)
    finally:
        _stop_postmaster(proc)


def _connect(pg: Postgres, **options: Any) -> psycopg.Connection[Any]:
    settings = {"host": "127.0.0.1", "user": "postgres", "dbname": "postgres", **options}
    return psycopg.connect(port=pg.port, connect_timeout=10, **settings)


def test_postgresql_over_tls_with_verify_full(cluster: Cluster, postgres: Postgres) -> None:
    user = _pg_user()
    assert user is not None
    _, key_file, ca_file = postgres.server_files
    key_stat = key_file.stat()
    assert (key_stat.st_uid, key_stat.st_mode & 0o777) == (user.pw_uid, 0o600)
    assert ca_file.read_bytes() == cluster.ca.certificate_pem()

    node = cluster.node_a
    options = {
        "sslmode": "verify-full",
        "sslrootcert": str(node.ca_file),
        "sslcert": str(node.cert_file),
        "sslkey": str(node.key_file),
    }
    with _connect(postgres, **options) as conn:
        ssl_row = conn.execute(
            "SELECT ssl, version, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone()
    assert ssl_row is not None
    assert ssl_row[0] is True and ssl_row[1] in ("TLSv1.2", "TLSv1.3")
    assert "CN=node-a" in ssl_row[2]


def test_postgresql_refuses_what_the_ca_did_not_vouch_for(
    cluster: Cluster, postgres: Postgres
) -> None:
    node = cluster.node_a
    trusted = {"sslmode": "verify-full", "sslrootcert": str(node.ca_file)}
    with pytest.raises(psycopg.OperationalError, match="certificate"):
        _connect(postgres, **trusted)  # no client certificate
    with pytest.raises(psycopg.OperationalError):
        _connect(
            postgres,
            **trusted,
            sslcert=str(cluster.foreign.cert_file),
            sslkey=str(cluster.foreign.key_file),
        )
    # the server's certificate (node B's, signed after the join) is checked against the host name
    with pytest.raises(psycopg.OperationalError, match="does not match host name"):
        _connect(
            postgres,
            **trusted,
            sslcert=str(node.cert_file),
            sslkey=str(node.key_file),
            hostaddr="127.0.0.1",
            host="elsewhere.example",
        )
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        _connect(
            postgres,
            sslmode="verify-full",
            sslrootcert=str(cluster.foreign.ca_file),
            sslcert=str(node.cert_file),
            sslkey=str(node.key_file),
        )
    with pytest.raises(psycopg.OperationalError, match=r"no pg_hba\.conf entry"):
        _connect(postgres, sslmode="disable")
    # node B's certificate is valid but not mapped to a database role
    with pytest.raises(psycopg.OperationalError, match="certificate authentication failed"):
        _connect(
            postgres,
            **trusted,
            sslcert=str(cluster.node_b.cert_file),
            sslkey=str(cluster.node_b.key_file),
        )
