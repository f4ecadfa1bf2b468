"""The etcd client's plain POSTs (hacore_plugins/etcd/gateway_http.py): kept-alive sockets
reused, one the server closed while idle replaced before it fails a call, and each failure
told apart (refused, timed out, not JSON) so the client tries the next endpoint."""

from __future__ import annotations

import http.server
import json
import re
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from hacore.pki.ca import create_ca
from hacore.pki.certs import issue_node_certificate
from hacore.pki.contexts import ssl_client_context, ssl_server_context
from hacore_plugins.etcd.client import EtcdClient, TryElsewhere
from hacore_plugins.etcd.gateway_http import GatewayError, GatewayHttp


@attrs.define
class Server:
    url: str
    #: the client port of every request, in order: one per TCP connection used
    ports: list[int]
    #: requests whose headers and bodies were seen
    seen: list[tuple[dict[str, str], dict[str, object]]]
    httpd: http.server.ThreadingHTTPServer


@pytest.fixture
def server() -> Iterator[Server]:
    ports: list[int] = []
    seen: list[tuple[dict[str, str], dict[str, object]]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            ports.append(self.client_address[1])
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((dict(self.headers), body))
            if self.path == "/slow":
                time.sleep(1.0)
            answer = b"not json" if self.path == "/garbage" else json.dumps({"echo": body}).encode()
            status = 503 if self.path == "/unavailable" else 200
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            if self.path == "/close":
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(answer)
            if self.path in ("/close", "/then-close"):
                self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield Server(f"http://127.0.0.1:{httpd.server_address[1]}", ports, seen, httpd)
    finally:
        httpd.shutdown()
        httpd.server_close()


def post(gateway: GatewayHttp, url: str, path: str = "/v3/kv/range", timeout: float = 5.0):  # type: ignore[no-untyped-def]
    return gateway.post(
        url, path, {"key": "eA=="}, {"X-Test": "1"}, connect_timeout=1.0, timeout=timeout
    )


def test_calls_share_one_kept_alive_connection(server: Server) -> None:
    gateway = GatewayHttp(ssl.create_default_context())
    try:
        answers = [post(gateway, server.url) for _ in range(5)]
    finally:
        gateway.close()
    assert [a.data for a in answers] == [{"echo": {"key": "eA=="}}] * 5
    assert all(a.status == 200 for a in answers)
    assert len(set(server.ports)) == 1, server.ports
    headers, _ = server.seen[0]
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Test"] == "1"


def test_a_connection_the_server_closed_while_idle_is_replaced(server: Server) -> None:
    gateway = GatewayHttp(ssl.create_default_context())
    try:
        # answered as kept alive, then closed by the server (its idle timeout, a restart)
        post(gateway, server.url, "/then-close")
        time.sleep(0.2)
        assert post(gateway, server.url).data == {"echo": {"key": "eA=="}}
    finally:
        gateway.close()
    assert len(set(server.ports)) == 2, server.ports


def test_a_server_that_says_close_gets_a_new_connection(server: Server) -> None:
    gateway = GatewayHttp(ssl.create_default_context())
    try:
        post(gateway, server.url, "/close")
        post(gateway, server.url)
        post(gateway, server.url)
    finally:
        gateway.close()
    assert len(set(server.ports)) == 2, server.ports


def test_failures_are_told_apart(server: Server) -> None:
    gateway = GatewayHttp(ssl.create_default_context())
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        refused_url = f"http://127.0.0.1:{unused.getsockname()[1]}"
    try:
        with pytest.raises(GatewayError) as refused:
            post(gateway, refused_url)
        assert refused.value.unreachable
        with pytest.raises(GatewayError) as slow:
            post(gateway, server.url, "/slow", timeout=0.2)
        assert slow.value.timed_out and not slow.value.unreachable
        with pytest.raises(GatewayError, match="not JSON"):
            post(gateway, server.url, "/garbage")
        assert post(gateway, server.url, "/unavailable").status == 503
    finally:
        gateway.close()


def test_the_etcd_client_goes_to_the_next_endpoint_on_a_failure(server: Server) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{unused.getsockname()[1]}"
    with EtcdClient([dead, server.url], timeout=2.0) as client:
        assert client.request("/v3/kv/range", {"key": "eA=="}) == {"echo": {"key": "eA=="}}
        assert client.candidates()[-1] == dead
        headers, _ = server.seen[-1]
        assert headers["Grpc-Metadata-hasleader"] == "true"
        with pytest.raises(TryElsewhere, match="HTTP 503"):
            client.post_once(server.url, "/unavailable", {}, client.attempt_timeout(1.0))


@attrs.frozen
class TlsServer:
    url: str
    client: ssl.SSLContext


@pytest.fixture
def refusing_tls_server(tmp_path: Path) -> Iterator[TlsServer]:
    """A TLS server that wants client certificates: the first connection loses the alert
    that says so (the server resets it right after the handshake, as when the client's
    request reaches a socket the server has already closed); later ones get it intact."""
    ca = create_ca("gateway", tmp_path / "ca")
    node = issue_node_certificate(ca, "server", ["127.0.0.1"], tmp_path / "server")
    lenient = ssl_server_context(node, ca, require_client_cert=False)
    strict = ssl_server_context(node, ca, require_client_cert=True)
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        first = True
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            try:
                with (lenient if first else strict).wrap_socket(raw, server_side=True) as tls:
                    if first:
                        tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except (OSError, ssl.SSLError):
                pass
            first = False

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield TlsServer(f"https://127.0.0.1:{listener.getsockname()[1]}", ssl_client_context(ca))
    finally:
        stop.set()
        listener.close()
        thread.join(5)


def test_a_lost_tls_alert_is_read_again_on_a_connection_that_sends_nothing(
    refusing_tls_server: TlsServer,
) -> None:
    gateway = GatewayHttp(refusing_tls_server.client)
    try:
        with pytest.raises(GatewayError) as err:
            post(gateway, refusing_tls_server.url)
    finally:
        gateway.close()
    assert "refused this client's TLS" in str(err.value), str(err.value)
    assert re.search("CERTIFICATE_REQUIRED", str(err.value)), str(err.value)
