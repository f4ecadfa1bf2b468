"""The CA key off the members (issue 10, finding 4): sealed under the admin password in the
store, unsealed only for an admin's request, and a joiner that gets its certificate, never
the CA key (hacore/pki/sealed_ca.py, node_grant.py, hacore/cluster/ca_key.py, tls.py)."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from hacore import pki
from hacore.agent import revocation_store
from hacore.api import admin_secret
from hacore.api.errors import AuthenticationError, UnavailableError
from hacore.cluster import ca_key
from hacore.cluster.ticket import JoinRequest
from hacore.cluster.tls import (
    CA_PART,
    CaTicketPart,
    create_cluster_ca,
    ensure_node_material,
    grant_certificate,
    node_hosts,
)
from hacore.config.node import NodeConfig, load_config
from hacore.errors import HacoreError
from hacore.pki import node_grant, pem, revocation, sealed_ca
from hacore.testing.memory import MemoryConsensus

PASSWORD = "the-admin-password"
FAST = 100_000


def node_config(tmp_path: Path, name: str, host: str = "10.0.0.5") -> NodeConfig:
    return load_config(
        {
            "cluster": {"name": "test"},
            "node": {"name": name, "host": host, "data_dir": str(tmp_path / name)},
            "consensus": {"backend": "etcd", "endpoints": ["http://127.0.0.1:2379"]},
            "tls": {"enabled": True},
        }
    )


def store() -> MemoryConsensus:
    return MemoryConsensus(
        {"store": secrets.token_hex(4)}, namespace="ns", node_name="n1", ttl=5, retry_timeout=2
    )


def request_of(part: CaTicketPart, config: NodeConfig) -> JoinRequest:
    return JoinRequest(
        name=config.node.name,
        host=config.node.host,
        api_url=f"https://{config.node.host}:8008",
        version="1",
        empty=True,
        not_empty="",
        consensus_backend="etcd",
        managed=False,
        replication_backend="postgresql",
        extensions={CA_PART: part.request(config)},
    )


def private_keys_of(ca: pki.CaMaterial, directory: Path) -> list[Path]:
    """Every file under ``directory`` that holds the CA's private key, in any PEM form."""
    found = []
    for path in directory.rglob("*"):
        if not path.is_file():
            continue
        try:
            key = pem.parse_key(path.read_bytes(), str(path))
        except pki.TlsMaterialError:
            continue
        if key.public_key() == ca.key.public_key():
            found.append(path)
    return found


@pytest.fixture
def started(tmp_path: Path) -> tuple[NodeConfig, MemoryConsensus, pki.CaMaterial]:
    """An active after ``cluster start``: the CA key sealed into the store, off the disk."""
    active = node_config(tmp_path, "n1", "10.0.0.1")
    consensus = store()
    ca = create_cluster_ca(active, node_hosts(active))
    assert (tmp_path / "n1" / "pki" / "ca" / pki.CA_KEY).exists()
    assert ca_key.seal_clear_key(active, consensus, PASSWORD)
    assert private_keys_of(ca, tmp_path) == []
    return active, consensus, ca


def test_the_sealed_key_opens_with_the_password_only(tmp_path: Path) -> None:
    ca = pki.create_ca("test", tmp_path / "ca")
    data = sealed_ca.seal(ca, PASSWORD, iterations=FAST)
    assert b"PRIVATE KEY" not in data and pem.key_pem(ca.key) not in data
    assert sealed_ca.unseal(data, PASSWORD, ca.certificate).key.public_key() == (
        ca.key.public_key()
    )
    with pytest.raises(pki.TlsMaterialError, match="does not open"):
        sealed_ca.unseal(data, PASSWORD + "x", ca.certificate)
    other = pki.create_ca("test", tmp_path / "other")
    with pytest.raises(pki.TlsMaterialError, match="another CA"):
        sealed_ca.unseal(data, PASSWORD, other.certificate)
    again = sealed_ca.reseal(data, PASSWORD, "new-password", ca.certificate)
    assert sealed_ca.unseal(again, "new-password", ca.certificate).fingerprint == ca.fingerprint
    with pytest.raises(pki.TlsMaterialError):
        sealed_ca.unseal(again, PASSWORD, ca.certificate)


def test_half_way_through_a_password_change_either_password_opens(tmp_path: Path) -> None:
    """The admin-password change seals under both before the credential changes and under
    the new one alone after: a crash between leaves a key the accepted password opens."""
    ca = pki.create_ca("test", tmp_path / "ca")
    both = sealed_ca.seal_under(ca, [PASSWORD, "new-password"], iterations=FAST)
    assert sealed_ca.seal_count(both) == 2
    for password in (PASSWORD, "new-password"):
        assert sealed_ca.unseal(both, password, ca.certificate).fingerprint == ca.fingerprint
    with pytest.raises(pki.TlsMaterialError, match="does not open"):
        sealed_ca.unseal(both, "neither", ca.certificate)
    after = sealed_ca.seal(sealed_ca.unseal(both, "new-password", ca.certificate), "new-password")
    assert sealed_ca.seal_count(after) == 1
    with pytest.raises(pki.TlsMaterialError, match="does not open"):
        sealed_ca.unseal(after, PASSWORD, ca.certificate)


def test_a_joiner_gets_its_certificate_never_the_ca_key(
    tmp_path: Path, started: tuple[NodeConfig, MemoryConsensus, pki.CaMaterial]
) -> None:
    active, consensus, ca = started
    joiner = node_config(tmp_path, "n2", "10.0.0.2")
    part = CaTicketPart()
    request = request_of(part, joiner)
    assert part.grant(active, request) == {"tls": True}
    with admin_secret.presented(PASSWORD):
        granted = grant_certificate(active, consensus, request, None)
    assert "key" not in granted and "ca_key" not in granted
    assert "PRIVATE KEY" not in str(granted)
    part.accept(joiner, granted)
    node = pki.load_node_certificate(tmp_path / "n2" / "pki" / "node")
    assert pki.issued_by(node.certificate, ca.certificate)
    assert node.node_name == "n2" and set(node.hosts) == {"10.0.0.2", "127.0.0.1", "localhost"}
    assert revocation.names_distribution_point(node.certificate)
    assert (tmp_path / "n2" / "pki" / "node" / revocation.CRL_FILE).exists()
    assert not (tmp_path / "n2" / "pki" / "ca" / pki.CA_KEY).exists()
    assert private_keys_of(ca, tmp_path) == []
    # a restart keeps it: nothing to sign with, nothing needed
    assert ensure_node_material(joiner, node_hosts(joiner)) == node


def test_signing_needs_the_admin_password(
    tmp_path: Path, started: tuple[NodeConfig, MemoryConsensus, pki.CaMaterial]
) -> None:
    active, consensus, _ = started
    request = request_of(CaTicketPart(), node_config(tmp_path, "n2"))
    with pytest.raises(AuthenticationError, match="only the admin password unseals"):
        grant_certificate(active, consensus, request, None)
    with admin_secret.presented("a-wrong-password"), pytest.raises(UnavailableError):
        grant_certificate(active, consensus, request, None)


def test_a_request_for_another_name_is_refused(
    tmp_path: Path, started: tuple[NodeConfig, MemoryConsensus, pki.CaMaterial]
) -> None:
    active, consensus, _ = started
    with admin_secret.presented(PASSWORD):
        ca = ca_key.signing_ca(active, consensus)
    _, csr = node_grant.certificate_request("n1", ["10.0.0.2"])
    with pytest.raises(pki.TlsMaterialError, match="not for node n2"):
        node_grant.sign_request(ca, csr, "n2", ["10.0.0.2"])


def test_a_token_join_gets_the_certificate_issued_with_the_token_once(
    tmp_path: Path, started: tuple[NodeConfig, MemoryConsensus, pki.CaMaterial]
) -> None:
    active, consensus, ca = started
    token = secrets.token_urlsafe(32)
    with admin_secret.presented(PASSWORD):
        signing = ca_key.signing_ca(active, consensus)
    ca_key.issue_for_token(signing, consensus, token, "n2", ("10.0.0.2", "127.0.0.1"))
    stored = b"".join(kv.value for kv in consensus.get_prefix(ca_key.JOIN_CERT_PREFIX))
    assert b"ENCRYPTED PRIVATE KEY" in stored and b"BEGIN PRIVATE KEY" not in stored
    joiner = node_config(tmp_path, "n2", "10.0.0.2")
    part = CaTicketPart()
    request = request_of(part, joiner)
    granted = grant_certificate(active, consensus, request, token)  # no admin password
    assert "key" in granted
    part.accept(joiner, granted)
    node = pki.load_node_certificate(tmp_path / "n2" / "pki" / "node")
    assert pki.issued_by(node.certificate, ca.certificate) and node.node_name == "n2"
    # registered under its name: a removal of n2 revokes it
    assert node.certificate.serial_number in revocation_store.issued_serials(consensus, "n2")
    # once: the store no longer holds it
    assert consensus.get_prefix(ca_key.JOIN_CERT_PREFIX) == ()
    with pytest.raises(AuthenticationError):
        grant_certificate(active, consensus, request, token)


def test_a_clear_key_of_an_earlier_release_is_sealed_and_dropped(tmp_path: Path) -> None:
    active, other = node_config(tmp_path, "n1"), node_config(tmp_path, "n2")
    consensus = store()
    ca = create_cluster_ca(active, node_hosts(active))
    pki.store_ca(ca, tmp_path / "n2" / "pki" / "ca")  # as an earlier release's join left it
    assert not ca_key.drop_clear_key(other, consensus)  # nothing sealed yet: kept
    with admin_secret.presented(PASSWORD):
        assert ca_key.signing_ca(active, consensus).fingerprint == ca.fingerprint
    assert not (tmp_path / "n1" / "pki" / "ca" / pki.CA_KEY).exists()
    assert ca_key.drop_clear_key(other, consensus)
    assert private_keys_of(ca, tmp_path) == []
    with admin_secret.presented(PASSWORD):
        assert ca_key.signing_ca(other, consensus).fingerprint == ca.fingerprint


def test_a_revoked_certificate_stops_a_member_without_the_ca_key(
    tmp_path: Path, started: tuple[NodeConfig, MemoryConsensus, pki.CaMaterial]
) -> None:
    active, _, ca = started
    node = ensure_node_material(active, node_hosts(active))
    crl = revocation.build_crl(ca, [node.certificate.serial_number])
    revocation.install_crl(revocation.crl_path(node.ca_file), crl, ca.certificate)
    with pytest.raises(HacoreError, match="revoked"):
        ensure_node_material(active, node_hosts(active))
