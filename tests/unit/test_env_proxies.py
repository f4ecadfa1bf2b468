"""Proxies from the environment never see node-to-node or local calls.

httpx honours ``HTTP_PROXY``/``ALL_PROXY`` for loopback addresses too: with a proxy set,
``cluster start`` would send the bootstrap token and the admin password to it, and the agent
Syncthing's API key. Each client hacore builds is pointed at a local server here while the
environment names a proxy that records whoever connects to it.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
from collections.abc import Iterator

import attrs
import pytest

from hacore.api.client import ApiClient
from hacore_plugins.etcd.client import EtcdClient
from hacore_plugins.etcd.managed import _healthy
from hacore_plugins.syncthing.api import SyncthingApi

ANSWERS = {
    "/status": {"active": True},
    "/rest/system/ping": {"ping": "pong"},
    "/health": {"health": "true"},
}


@attrs.define
class Local:
    url: str
    headers: list[dict[str, str]]


@attrs.define
class Proxy:
    url: str
    connections: list[str]


@pytest.fixture
def local() -> Iterator[Local]:
    seen: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(dict(self.headers))
            body = json.dumps(ANSWERS.get(self.path, {})).encode()
            self.send_response(200 if self.path in ANSWERS else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Local(f"http://127.0.0.1:{server.server_address[1]}", seen)
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Proxy]:
    """A "proxy" that accepts, records and hangs up; named by every proxy variable."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    connections: list[str] = []
    stopping = threading.Event()

    def accept() -> None:
        while not stopping.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(1)
                try:
                    connections.append(conn.recv(4096).decode(errors="replace"))
                except OSError:
                    connections.append("")

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, url)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    try:
        yield Proxy(url, connections)
    finally:
        stopping.set()
        thread.join(timeout=5)
        listener.close()


def test_the_agent_api_client_ignores_proxies(local: Local, proxy: Proxy) -> None:
    with ApiClient(local.url, ("admin", "the-admin-password"), timeout=5) as client:
        assert client.status() == {"active": True}
    assert proxy.connections == []
    assert local.headers[-1]["Authorization"].startswith("Basic ")


def test_the_syncthing_client_ignores_proxies(local: Local, proxy: Proxy) -> None:
    api = SyncthingApi(local.url, "the-api-key", timeout=5)
    try:
        assert api.ping()
    finally:
        api.close()
    assert proxy.connections == []
    assert local.headers[-1]["X-API-Key"] == "the-api-key"


def test_the_etcd_clients_ignore_proxies(local: Local, proxy: Proxy) -> None:
    assert _healthy(local.url, False)
    client = EtcdClient([local.url], timeout=5)
    try:
        assert client.new_http().get(f"{local.url}/health", timeout=5).json() == ANSWERS["/health"]
    finally:
        client.close()
    assert proxy.connections == []
