"""TLS wiring below the agent service: the API's plain-HTTP policy, how a joiner comes to
trust the cluster CA, and the join ticket's CA part.

Real API servers on loopback ports and real certificates from :mod:`hacore.pki`; the agent
behind the API is a small facade, since what is tested is the transport and the trust.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest

from hacore import pki
from hacore.agent.snapshot import NodeSnapshot
from hacore.agent.tls_paths import tls_files
from hacore.agent.vocabulary import NodeState
from hacore.api.auth import hash_password
from hacore.api.client import ApiClient
from hacore.api.errors import ConflictError, HttpsRequiredError, UnavailableError
from hacore.api.facade import AgentFacade
from hacore.api.server import ApiServer, PlainHttp
from hacore.client.profile import Profile
from hacore.cluster import join as joining
from hacore.cluster.errors import JoinRefusedError
from hacore.cluster.requests import JoinCommand, NodeRequest
from hacore.cluster.ticket import JoinRequest
from hacore.cluster.tls import CA_PART, CaTicketPart, grant_certificate, node_hosts
from hacore.config.node import ApiAuth, ApiSettings, NodeConfig, load_config
from hacore.testing.memory import MemoryConsensus
from hacore.testing.procs import free_port

USER, PASSWORD = "admin", "the-api-password"
AUTH = (USER, PASSWORD)
SETTINGS = ApiSettings(auth=ApiAuth(USER, hash_password(PASSWORD, iterations=1000)))
PROBES = ("/status", "/api/v3.1/status", "/standby", "/health", "/liveness", "/readiness")


class Facade(AgentFacade):
    """An active node that holds a CA (or none)."""

    def __init__(self, ca: pki.CaMaterial | None) -> None:
        self.ca = ca
        self.joins: list[dict[str, Any]] = []

    def snapshot(self) -> NodeSnapshot:
        return NodeSnapshot(
            node_name="n1",
            version="1",
            state=NodeState.ACTIVE,
            is_active=True,
            healthy=True,
            leader="n1",
            last_loop_at=time.monotonic(),
        )

    def cluster(self) -> dict[str, Any]:
        return {"leader": "n1", "members": []}

    def cluster_ca(self) -> dict[str, Any] | None:
        if self.ca is None:
            return None
        return {
            "cluster": "test",
            "fingerprint": self.ca.fingerprint,
            "ca_certificate": self.ca.certificate_pem().decode(),
        }

    def start_cluster(self, options: dict[str, Any]) -> dict[str, Any]:
        return {}

    def join_ticket(self, request: dict[str, Any]) -> dict[str, Any]:
        self.joins.append(request)
        return {"granted": True}

    def remove_node(self, name: str) -> dict[str, Any]:
        return {}

    def switchover(self, to: str | None) -> dict[str, Any]:
        return {}


@attrs.frozen
class Material:
    ca: pki.CaMaterial
    node: pki.NodeCertificate

    def server_context(self) -> ssl.SSLContext:
        return pki.ssl_server_context(self.node, self.ca, require_client_cert=False)

    def client_context(self) -> ssl.SSLContext:
        return pki.ssl_client_context(self.ca.certificate)


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    root = tmp_path_factory.mktemp("pki")
    ca = pki.create_ca("test", root / "ca")
    node = pki.issue_node_certificate(ca, "n1", ["127.0.0.1", "localhost"], root / "node")
    return Material(ca, node)


@pytest.fixture()
def server(material: Material) -> Iterator[ApiServer]:
    with ApiServer(
        Facade(material.ca), SETTINGS, ssl_context=material.server_context(), plain=PlainHttp.PROBES
    ) as api:
        yield api


def plain(api: ApiServer) -> str:
    return f"http://127.0.0.1:{api.port}"


# ---- the API: HTTPS, and what plain HTTP still gets ----


def test_https_serves_everything_plain_http_only_open_probes(
    server: ApiServer, material: Material
) -> None:
    assert server.url == f"https://127.0.0.1:{server.port}"
    with ApiClient(server.url, AUTH, verify=material.client_context()) as client:
        assert client.cluster()["leader"] == "n1"
        assert client.cluster_ca()["fingerprint"] == material.ca.fingerprint
    for path in PROBES:
        resp = httpx.get(plain(server) + path, timeout=5)
        assert resp.status_code == (503 if path == "/standby" else 200), path
        assert resp.json()["node"] == "n1"
    for method, path in (("GET", "/cluster"), ("GET", "/metrics"), ("POST", "/switchover")):
        resp = httpx.request(method, plain(server) + path, auth=AUTH, timeout=5)
        assert resp.status_code == 403
        assert resp.json()["error"] == (
            f"this agent serves its API over HTTPS only: use {server.url}{path} (plain HTTP "
            "answers only the load-balancer probes that need no credentials)"
        )
    with ApiClient(plain(server), AUTH) as client, pytest.raises(HttpsRequiredError):
        client.cluster()


def test_plain_probes_that_need_credentials_are_refused_too(
    server: ApiServer, material: Material
) -> None:
    server.set_settings(attrs.evolve(SETTINGS, status_requires_auth=True))
    assert httpx.get(plain(server) + "/status", auth=AUTH, timeout=5).status_code == 403
    resp = httpx.get(server.url + "/status", auth=AUTH, verify=material.client_context())
    assert resp.status_code == 200


def test_plain_all_serves_everything_while_a_node_bootstraps(
    server: ApiServer, material: Material
) -> None:
    server.set_tls(material.server_context(), PlainHttp.ALL)
    assert httpx.get(plain(server) + "/cluster", auth=AUTH, timeout=5).status_code == 200
    resp = httpx.get(server.url + "/cluster", auth=AUTH, verify=material.client_context())
    assert resp.status_code == 200
    server.set_tls(None, PlainHttp.PROBES)  # back to plain HTTP: everything, no TLS
    assert server.url.startswith("http://")
    assert httpx.get(plain(server) + "/cluster", auth=AUTH, timeout=5).status_code == 200


def test_a_tls_client_of_a_plain_server_fails_at_once() -> None:
    with ApiServer(Facade(None), SETTINGS) as api:
        began = time.monotonic()
        with pytest.raises(httpx.TransportError):
            httpx.get(f"https://127.0.0.1:{api.port}/status", verify=False, timeout=20)
        # hung, it would wait for its 20 s timeout
        assert time.monotonic() - began < 10
        # and plain HTTP is served as before
        assert httpx.get(f"http://127.0.0.1:{api.port}/status", timeout=5).status_code == 200


def test_a_silent_or_closed_connection_does_not_stop_the_server(server: ApiServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)):
        pass
    silent = socket.create_connection(("127.0.0.1", server.port))
    try:
        assert httpx.get(plain(server) + "/status", timeout=5).status_code == 200
    finally:
        silent.close()


# ---- the joiner: trust before credentials ----


def command(address: str, **trust: str) -> JoinCommand:
    node = NodeRequest(None, None, {}, USER, PASSWORD)
    return JoinCommand(node, address, **trust)


def test_the_joiner_pins_the_ca_whose_fingerprint_it_was_given(
    server: ApiServer, material: Material
) -> None:
    address = f"127.0.0.1:{server.port}"
    for fingerprint in (material.ca.fingerprint, material.ca.fingerprint.replace(":", "").lower()):
        ca = joining.trusted_ca(command(address, ca_fingerprint=fingerprint), tls=True)
        assert ca == material.ca.certificate
    by_file = command(address, ca_certificate=material.ca.certificate_pem().decode())
    ca = joining.trusted_ca(by_file, tls=True)
    with joining.find_active(joining.with_scheme(address, True), AUTH, joining.pinned(ca)) as c:
        assert c.base_url == server.url
        assert c.cluster()["leader"] == "n1"


def test_the_joiner_refuses_another_ca_or_none(server: ApiServer, tmp_path: Path) -> None:
    address = f"127.0.0.1:{server.port}"
    other = pki.create_ca("test", tmp_path / "other")
    with pytest.raises(JoinRefusedError) as info:
        joining.trusted_ca(command(address, ca_fingerprint=other.fingerprint), tls=True)
    message = str(info.value)
    assert f"not the expected {other.fingerprint}" in message
    assert message.endswith("nothing was changed")
    pem = other.certificate_pem().decode()
    with pytest.raises(JoinRefusedError, match="is not trusted"):
        joining.trusted_ca(command(address, ca_certificate=pem), tls=True)
    with pytest.raises(JoinRefusedError, match=r"--ca-fingerprint FP .*hacore cluster ca"):
        joining.trusted_ca(command(address), tls=True)
    with pytest.raises(JoinRefusedError, match=r"tls\.enabled: false"):
        joining.trusted_ca(command(address), tls=False)


def test_a_pinned_client_refuses_a_node_of_another_ca(
    server: ApiServer, material: Material, tmp_path: Path
) -> None:
    other = pki.create_ca("test", tmp_path / "other")
    client = ApiClient(server.url, AUTH, verify=joining.pinned(other.certificate))
    with client, pytest.raises(Exception, match="CERTIFICATE_VERIFY_FAILED"):
        client.status()


def test_a_tls_joiner_refuses_a_plain_node_and_an_absent_one() -> None:
    facade = Facade(None)
    with ApiServer(facade, SETTINGS) as api:
        address = f"127.0.0.1:{api.port}"
        with pytest.raises(JoinRefusedError, match="does not serve its API over TLS"):
            joining.trusted_ca(command(address, ca_fingerprint="AB"), tls=True)
        assert joining.trusted_ca(command(address), tls=False) is None
    assert facade.joins == []
    with pytest.raises(UnavailableError, match="cannot reach the hacore agent"):
        joining.trusted_ca(command(f"127.0.0.1:{free_port()}"), tls=True)


def test_with_scheme() -> None:
    assert joining.with_scheme("10.0.0.1", True) == "https://10.0.0.1:8008"
    assert joining.with_scheme("http://10.0.0.1:9000", True) == "https://10.0.0.1:9000"
    assert joining.with_scheme("https://[::1]:9000/", False) == "http://[::1]:9000"


# ---- the ticket's CA part ----


def node_config(tmp_path: Path, name: str, tls: bool = True) -> NodeConfig:
    return load_config(
        {
            "cluster": {"name": "test"},
            "node": {"name": name, "host": "10.0.0.5", "data_dir": str(tmp_path / name)},
            "consensus": {"backend": "etcd", "endpoints": ["http://127.0.0.1:2379"]},
            "tls": {"enabled": tls},
        }
    )


def join_request(config: NodeConfig, part: CaTicketPart | None = None) -> JoinRequest:
    return JoinRequest(
        name=config.node.name,
        host=config.node.host,
        api_url="https://10.0.0.5:8008",
        version="1",
        empty=True,
        not_empty="",
        consensus_backend="etcd",
        managed=False,
        replication_backend="postgresql",
        extensions={CA_PART: (part or CaTicketPart()).request(config)},
    )


def test_the_ca_part_gives_the_joiner_a_certificate_for_its_own_key(tmp_path: Path) -> None:
    part = CaTicketPart()
    active, joiner = node_config(tmp_path, "n1"), node_config(tmp_path, "n2")
    ca = pki.create_ca("test", active.node.data_dir / "pki" / "ca")
    pki.ensure_node_certificate(ca, "n1", ["10.0.0.5"], active.node.data_dir / "pki" / "node")
    request = join_request(joiner, part)
    assert part.grant(active, request) == {"tls": True}
    consensus = MemoryConsensus(
        {"store": "tlswiring"}, namespace="ns", node_name="n1", ttl=5, retry_timeout=2
    )
    granted = grant_certificate(active, consensus, request, None)
    assert "PRIVATE KEY" not in str(granted)  # neither the CA key nor the node's
    part.accept(joiner, granted)
    files = tls_files(joiner)
    assert files is not None
    assert files.ca_file.read_bytes() == ca.certificate_pem()
    assert (files.key_file.stat().st_mode & 0o777) == 0o600
    node = pki.load_node_certificate(files.cert_file.parent)
    assert pki.issued_by(node.certificate, ca.certificate)
    assert node.node_name == "n2" and set(node.hosts) == {"10.0.0.5", "127.0.0.1", "localhost"}
    assert pki.load_ca_certificate(joiner.node.data_dir / "pki" / "ca") == ca.certificate
    assert not (joiner.node.data_dir / "pki" / "ca" / pki.CA_KEY).exists()


def test_the_ca_part_refuses_a_joiner_whose_tls_differs(tmp_path: Path) -> None:
    part = CaTicketPart()
    tls_on, tls_off = node_config(tmp_path, "n1"), node_config(tmp_path, "n2", tls=False)
    pki.create_ca("test", tls_on.node.data_dir / "pki" / "ca")
    with pytest.raises(ConflictError, match=r"n2 has tls\.enabled: false but this cluster runs"):
        part.grant(tls_on, join_request(tls_off))
    with pytest.raises(ConflictError, match=r"n1 has tls\.enabled: true"):
        part.grant(tls_off, join_request(tls_on))
    assert part.grant(tls_off, join_request(node_config(tmp_path, "n3", tls=False))) == {}
    assert tls_files(tls_off) is None


def test_node_hosts_skip_wildcards_and_duplicates(tmp_path: Path) -> None:
    config = node_config(tmp_path, "n1")
    assert node_hosts(config, ("0.0.0.0", "10.0.0.5", "db.example")) == (
        "10.0.0.5",
        "db.example",
        "127.0.0.1",
        "localhost",
    )


# ---- the CLI profile ----


def test_the_profile_verifies_with_its_ca_and_old_profiles_still_load(
    server: ApiServer, material: Material
) -> None:
    pem = material.ca.certificate_pem().decode()
    profile = Profile("test", USER, PASSWORD, (("n1", server.url),), ca_certificate=pem)
    assert Profile.from_json(profile.to_json()) == profile
    with profile.client(server.url, timeout=5) as client:
        assert client.cluster()["leader"] == "n1"
    old = Profile.from_json({"cluster": "test", "username": USER, "password": PASSWORD})
    assert old.ca_certificate is None and old.verify() is True
