"""The CRL and the signed member records (hacore/pki/revocation.py, record_identity.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from hacore import pki
from hacore.cluster.ticket import JoinRequest
from hacore.cluster.tls import CA_PART, CaTicketPart, grant_certificate, node_hosts
from hacore.config.node import NodeConfig, load_config
from hacore.pki import record_identity, revocation
from hacore.pki.errors import TlsMaterialError
from hacore.testing.memory import MemoryConsensus


@pytest.fixture
def ca(tmp_path: Path) -> pki.CaMaterial:
    return pki.create_ca("revtest", tmp_path / "ca")


def node(ca: pki.CaMaterial, tmp_path: Path, name: str) -> pki.NodeCertificate:
    return pki.ensure_node_certificate(ca, name, ["127.0.0.1"], tmp_path / name)


def test_crl_lists_serials_and_lives_as_long_as_the_ca(ca: pki.CaMaterial) -> None:
    data = revocation.build_crl(ca, [5, 7, 5])
    assert revocation.revoked_serials(data, ca.certificate) == {5, 7}
    crl = x509.load_pem_x509_crl(data)
    assert crl.next_update_utc == ca.certificate.not_valid_after_utc


def test_a_crl_of_another_ca_is_refused(ca: pki.CaMaterial, tmp_path: Path) -> None:
    other = pki.create_ca("revtest", tmp_path / "other")
    data = revocation.build_crl(other, [1])
    with pytest.raises(TlsMaterialError):
        revocation.revoked_serials(data, ca.certificate)
    with pytest.raises(TlsMaterialError):
        revocation.install_crl(tmp_path / "crl.pem", data, ca.certificate)
    assert not (tmp_path / "crl.pem").exists()


def test_node_directory_gets_an_empty_crl(ca: pki.CaMaterial, tmp_path: Path) -> None:
    material = node(ca, tmp_path, "n1")
    path = revocation.crl_path(material.ca_file)
    assert revocation.revoked_serials(path.read_bytes(), ca.certificate) == frozenset()


def test_a_revoked_certificate_is_reissued(ca: pki.CaMaterial, tmp_path: Path) -> None:
    first = node(ca, tmp_path, "n1")
    assert node(ca, tmp_path, "n1").certificate == first.certificate
    path = revocation.crl_path(first.ca_file)
    revocation.install_crl(
        path, revocation.build_crl(ca, [first.certificate.serial_number]), ca.certificate
    )
    second = node(ca, tmp_path, "n1")
    assert second.certificate.serial_number != first.certificate.serial_number


def signed_extra(material: pki.NodeCertificate, name: str, host: str) -> dict[str, object]:
    extra: dict[str, object] = {"replication": {"host": host, "port": 5432}}
    extra["identity"] = record_identity.sign(
        material.certificate, material.key, name, host, "https://x:8008", extra
    )
    return extra


def test_a_record_signed_by_its_node_is_believed(ca: pki.CaMaterial, tmp_path: Path) -> None:
    material = node(ca, tmp_path, "n1")
    extra = signed_extra(material, "n1", "10.0.0.1")
    why = record_identity.why_not_believed(
        "n1", "10.0.0.1", "https://x:8008", extra, ca.certificate, frozenset()
    )
    assert why is None


@pytest.mark.parametrize(
    ("name", "host", "revoke", "reason"),
    [
        ("n2", "10.0.0.1", False, "names 'n1'"),
        ("n1", "10.0.0.66", False, "signature does not match"),
        ("n1", "10.0.0.1", True, "revoked"),
    ],
)
def test_a_record_is_not_believed(
    ca: pki.CaMaterial, tmp_path: Path, name: str, host: str, revoke: bool, reason: str
) -> None:
    material = node(ca, tmp_path, "n1")
    extra = signed_extra(material, "n1", "10.0.0.1")
    revoked = frozenset({material.certificate.serial_number}) if revoke else frozenset()
    why = record_identity.why_not_believed(
        name, host, "https://x:8008", extra, ca.certificate, revoked
    )
    assert why is not None and reason in why, why


def test_a_record_signed_under_another_ca_or_unsigned_is_not_believed(
    ca: pki.CaMaterial, tmp_path: Path
) -> None:
    other = pki.create_ca("revtest", tmp_path / "other")
    material = node(other, tmp_path, "n1")
    extra = signed_extra(material, "n1", "10.0.0.1")
    why = record_identity.why_not_believed(
        "n1", "10.0.0.1", "https://x:8008", extra, ca.certificate, frozenset()
    )
    assert why is not None and "not from the cluster CA" in why
    why = record_identity.why_not_believed(
        "n1", "10.0.0.1", "https://x:8008", {}, ca.certificate, frozenset()
    )
    assert why == "the record is not signed"


def test_a_join_ticket_carries_the_crl_and_a_revoked_certificate_is_not_kept(
    tmp_path: Path,
) -> None:
    """A disk joined again under its old name: the certificate the cluster revoked when it
    was removed must not be kept by ``ensure_node_certificate``."""
    active, joiner = node_config(tmp_path, "n1"), node_config(tmp_path, "n2")
    ca = pki.create_ca("test", active.node.data_dir / "pki" / "ca")
    pki.ensure_node_certificate(ca, "n1", ["10.0.0.5"], active.node.data_dir / "pki" / "node")
    old = pki.ensure_node_certificate(
        ca, "n2", node_hosts(joiner), joiner.node.data_dir / "pki" / "node"
    )
    revocation.install_crl(
        active.node.data_dir / "pki" / "node" / revocation.CRL_FILE,
        revocation.build_crl(ca, [old.certificate.serial_number]),
        ca.certificate,
    )
    part = CaTicketPart()
    request = JoinRequest(
        name="n2",
        host="10.0.0.5",
        api_url="https://10.0.0.5:8008",
        version="1",
        empty=True,
        not_empty="",
        consensus_backend="etcd",
        managed=False,
        replication_backend="postgresql",
        extensions={CA_PART: part.request(joiner)},
    )
    assert part.grant(active, request) == {"tls": True}
    consensus = MemoryConsensus(
        {"store": "revtest"}, namespace="ns", node_name="n1", ttl=5, retry_timeout=2
    )
    granted = grant_certificate(active, consensus, request, None)
    assert "crl" in granted
    part.accept(joiner, granted)
    new = pki.load_node_certificate(joiner.node.data_dir / "pki" / "node")
    assert new.certificate.serial_number != old.certificate.serial_number
    crl = revocation.crl_path(new.ca_file).read_bytes()
    assert revocation.revoked_serials(crl, ca.certificate) == {old.certificate.serial_number}


def node_config(tmp_path: Path, name: str) -> NodeConfig:
    return load_config(
        {
            "cluster": {"name": "test"},
            "node": {"name": name, "host": "10.0.0.5", "data_dir": str(tmp_path / name)},
            "consensus": {"backend": "etcd", "endpoints": ["http://127.0.0.1:2379"]},
            "tls": {"enabled": True},
        }
    )
