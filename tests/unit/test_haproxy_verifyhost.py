"""``verifyhost`` in the printed HAProxy configuration: only when every member has a DNS name,
its host or one of its ``node.dns_names`` read from the certificate it serves (a node
certificate names ``node.host`` as given, and HAProxy matches DNS names only), checked by a
real HAProxy against TLS servers holding real node certificates."""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import attrs
import pytest

from hacore import pki
from hacore.cli.haproxy import with_certificate_name
from hacore.client.profile import Profile
from hacore.cluster.haproxy import HaproxyOptions, HaproxyServer, pick_dns_name, render
from hacore.testing.procs import ServerProcess, free_port, wait_for

HAPROXY = shutil.which("haproxy")


def _server(name: str, host: str, api_port: int = 8008) -> HaproxyServer:
    return HaproxyServer(name=name, host=host, db_host=host, db_port=5432, api_port=api_port)


def test_verifyhost_only_when_every_member_has_a_dns_name() -> None:
    options = HaproxyOptions(cluster="prod", ca_file="/etc/hacore/ca.crt", manager_port=443)
    named = render(options, [_server("n1", "db1.example.com"), _server("n2", "db2.example.com")])
    assert "server n1 db1.example.com:5432 check port 8008 verifyhost db1.example.com" in named
    assert "server n2 db2.example.com:443 check port 8008 verifyhost db2.example.com" in named
    mixed = render(options, [_server("n1", "db1.example.com"), _server("n2", "10.0.0.12")])
    assert "verifyhost" not in mixed
    plain = render(HaproxyOptions(cluster="prod"), [_server("n1", "db1.example.com")])
    assert "verifyhost" not in plain  # no TLS check, nothing to verify


def test_verifyhost_with_dns_names_of_members_at_addresses() -> None:
    """Members reached at IP addresses whose certificates carry node.dns_names: verifyhost
    names them; one member without a name leaves verifyhost out, and the file says why."""
    options = HaproxyOptions(cluster="prod", ca_file="/etc/hacore/ca.crt")
    one = attrs.evolve(_server("n1", "10.0.0.11"), dns_name="db1.example.com")
    two = attrs.evolve(_server("n2", "10.0.0.12"), dns_name="db2.example.com")
    named = render(options, [one, two])
    assert "server n1 10.0.0.11:5432 check port 8008 verifyhost db1.example.com" in named
    assert "server n2 10.0.0.12:5432 check port 8008 verifyhost db2.example.com" in named
    assert "not checked" not in named
    mixed = render(options, [one, _server("n3", "10.0.0.13")])
    assert "verifyhost db" not in mixed
    assert "# certificate names not checked: no DNS name for n3 (node.dns_names)" in mixed


def test_the_name_picked_from_a_certificate() -> None:
    assert pick_dns_name("10.0.0.11", ["localhost", "db1.example.com", "db1"]) == "db1.example.com"
    assert pick_dns_name("db1", ["db1.example.com", "db1", "localhost"]) == "db1"
    assert pick_dns_name("10.0.0.11", ["localhost"]) is None
    assert pick_dns_name("10.0.0.11", []) is None


class _Status(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b'{"role": "active"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def _tls_status_server(context: ssl.SSLContext) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _states(sock_path: Path, backend: str) -> dict[str, str]:
    """``show servers state``: each server's srv_op_state (2 up, 0 down)."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.connect(str(sock_path))
        conn.sendall(f"show servers state {backend}\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    states = {}
    for line in data.decode().splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[0].isdigit():
            states[fields[3]] = fields[5]
    return states


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[pki.CaMaterial, int, int]]:
    """Two agents' TLS ports: n1's certificate names ``localhost``, n2's only 127.0.0.1."""
    ca = pki.create_ca("verifyhost", tmp_path / "ca")
    named = pki.issue_node_certificate(ca, "n1", ["localhost"], tmp_path / "n1")
    address_only = pki.issue_node_certificate(ca, "n2", ["127.0.0.1"], tmp_path / "n2")
    one = _tls_status_server(pki.ssl_server_context(named, ca, require_client_cert=False))
    two = _tls_status_server(pki.ssl_server_context(address_only, ca, require_client_cert=False))
    try:
        yield ca, one.server_address[1], two.server_address[1]
    finally:
        for server in (one, two):
            server.shutdown()
            server.server_close()


@pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed")
def test_haproxy_checks_the_certificate_name(
    tmp_path: Path, servers: tuple[pki.CaMaterial, int, int]
) -> None:
    """Both members' hosts are names (``localhost``), so verifyhost is emitted: the agent whose
    certificate names it is up, the one whose certificate names an address only is down."""
    ca, port_one, port_two = servers
    stats = tmp_path / "admin.sock"
    members = [
        HaproxyServer("n1", "localhost", "127.0.0.1", free_port(), port_one),
        HaproxyServer("n2", "localhost", "127.0.0.1", free_port(), port_two),
    ]
    options = HaproxyOptions(
        cluster="vh",
        bind=f"127.0.0.1:{free_port()}",
        ca_file=str(ca.cert_file),
        inter=0.2,
        stats_socket=str(stats),
    )
    text = render(options, members)
    assert text.count("verifyhost localhost") == 2
    (tmp_path / "haproxy.cfg").write_text(text)
    proc = ServerProcess(
        "haproxy", [str(HAPROXY), "-db", "-f", str(tmp_path / "haproxy.cfg")], tmp_path / "log"
    ).start()

    def settled() -> dict[str, str] | None:
        if not stats.exists():
            return None
        states = _states(stats, "vh_postgresql_active")
        return states if states.get("n1") == "2" else None

    try:
        wait_for(lambda: settled() is not None, timeout=30, interval=0.2, what="n1 up")
        wait_for(
            lambda: all(_states(stats, "vh_postgresql_active")["n2"] == "0" for _ in range(5)),
            timeout=30,
            interval=0.3,
            what="n2 down",
        )
    except TimeoutError:
        pytest.fail(f"unexpected server states:\n{proc.log_tail()}")
    finally:
        proc.stop(signal.SIGTERM)


@pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed")
def test_dns_names_read_from_the_certificates_pass_haproxy_checks(tmp_path: Path) -> None:
    """Two members reached at 127.0.0.1 whose certificates carry a DNS name (as node.dns_names
    puts it there): the CLI reads each name from the certificate the member serves, the
    printed file checks it with verifyhost, and a real HAProxy marks both servers up. A
    member whose certificate has no such name gets none."""
    ca = pki.create_ca("dnsnames", tmp_path / "ca")
    profile = Profile("dnsnames", "admin", "x", ca_certificate=ca.certificate_pem().decode())
    certs = {
        "n1": pki.issue_node_certificate(
            ca, "n1", ["127.0.0.1", "db1.example.test", "localhost"], tmp_path / "n1"
        ),
        "n2": pki.issue_node_certificate(
            ca, "n2", ["127.0.0.1", "db2.example.test", "localhost"], tmp_path / "n2"
        ),
        "n3": pki.issue_node_certificate(ca, "n3", ["127.0.0.1", "localhost"], tmp_path / "n3"),
    }
    running = {
        name: _tls_status_server(pki.ssl_server_context(cert, ca, require_client_cert=False))
        for name, cert in certs.items()
    }
    stats = tmp_path / "admin.sock"
    try:
        members = {
            name: with_certificate_name(
                profile,
                HaproxyServer(name, "127.0.0.1", "127.0.0.1", free_port(), s.server_address[1]),
            )
            for name, s in running.items()
        }
        assert members["n1"].dns_name == "db1.example.test"
        assert members["n2"].dns_name == "db2.example.test"
        assert members["n3"].dns_name is None
        options = HaproxyOptions(
            cluster="dn",
            bind=f"127.0.0.1:{free_port()}",
            ca_file=str(ca.cert_file),
            inter=0.2,
            stats_socket=str(stats),
        )
        assert "verifyhost" not in render(options, list(members.values()))
        text = render(options, [members["n1"], members["n2"]])
        assert "verifyhost db1.example.test" in text and "verifyhost db2.example.test" in text
        (tmp_path / "haproxy.cfg").write_text(text)
        proc = ServerProcess(
            "haproxy", [str(HAPROXY), "-db", "-f", str(tmp_path / "haproxy.cfg")], tmp_path / "log"
        ).start()
        try:
            wait_for(
                lambda: (
                    stats.exists()
                    and _states(stats, "dn_postgresql_active") == {"n1": "2", "n2": "2"}
                ),
                timeout=30,
                interval=0.2,
                what="both servers up",
            )
        except TimeoutError:
            pytest.fail(f"unexpected server states:\n{proc.log_tail()}")
        finally:
            proc.stop(signal.SIGTERM)
    finally:
        for server in running.values():
            server.shutdown()
            server.server_close()
