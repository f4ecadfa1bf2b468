"""The managed ZooKeeper's revocation checks, without a server
(hacore_plugins/zookeeper/revocation.py; the refusals themselves are in
tests/integration/test_zookeeper_revocation.py and test_zookeeper_tls.py)."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hacore import pki
from hacore.backends.records import TlsFiles
from hacore.errors import ManagedStoreError
from hacore.pki import pem
from hacore.pki import revocation as pki_revocation
from hacore_plugins.zookeeper import revocation
from hacore_plugins.zookeeper import server as zk
from hacore_plugins.zookeeper.managed import ZooKeeperManagedStore


@pytest.fixture
def ca(tmp_path: Path) -> pki.CaMaterial:
    return pki.create_ca("zkcrl", tmp_path / "ca")


def node_files(ca: pki.CaMaterial, tmp_path: Path, name: str = "n1") -> TlsFiles:
    cert = pki.ensure_node_certificate(ca, name, ["127.0.0.1"], tmp_path / name)
    return TlsFiles(ca_file=cert.ca_file, cert_file=cert.cert_file, key_file=cert.key_file)


def old_style_files(ca: pki.CaMaterial, directory: Path) -> TlsFiles:
    """A node certificate as hacore issued it before the distribution point was added."""
    directory.mkdir(parents=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(ca.key, hashes.SHA256())
    )
    (directory / "node.crt").write_bytes(pem.cert_pem(cert))
    (directory / "ca.crt").write_bytes(ca.certificate_pem())
    return TlsFiles(
        ca_file=directory / "ca.crt",
        cert_file=directory / "node.crt",
        key_file=directory / "node.key",
    )


def test_node_certificates_name_the_relative_crl(ca: pki.CaMaterial, tmp_path: Path) -> None:
    files = node_files(ca, tmp_path)
    cert = pem.read_certificate(files.cert_file)
    points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [p.full_name for p in points] == [[x509.UniformResourceIdentifier("file:crl.pem")]]
    assert revocation.certificate_names_crl(files)
    assert not revocation.certificate_names_crl(old_style_files(ca, tmp_path / "old"))
    assert not revocation.certificate_names_crl(None)


def test_crl_checks_are_configured_for_clients_and_quorum() -> None:
    def lines(check: bool) -> list[str]:
        return zk.ServerTls(Path("/k.pem"), Path("/ca.crt"), "127.0.0.1", 1, check).config_lines()

    assert {"ssl.crl=true", "ssl.quorum.crl=true"} <= set(lines(True))
    assert not [line for line in lines(False) if "crl" in line]


def test_the_link_follows_the_nodes_crl(ca: pki.CaMaterial, tmp_path: Path) -> None:
    files = node_files(ca, tmp_path)
    work = tmp_path / "store"
    work.mkdir()
    link = revocation.link_crl(files, work)
    assert link == work / "crl.pem" and link.is_symlink()
    assert Path(os.readlink(link)) == pki_revocation.crl_path(files.ca_file).resolve()
    # what the agent installs later is what the link shows
    revoked = pki_revocation.build_crl(ca, [42])
    pki_revocation.install_crl(pki_revocation.crl_path(files.ca_file), revoked, ca.certificate)
    assert link.read_bytes() == revoked
    assert revocation.link_crl(files, work) == link


def test_no_crl_no_server(ca: pki.CaMaterial, tmp_path: Path) -> None:
    files = node_files(ca, tmp_path)
    pki_revocation.crl_path(files.ca_file).unlink()
    with pytest.raises(ManagedStoreError, match="no revocation list"):
        revocation.link_crl(files, tmp_path)
    assert not (tmp_path / "crl.pem").exists()


def _store(tmp_path: Path, tls: TlsFiles) -> ZooKeeperManagedStore:
    settings = {"client_port": 2181, "peer_port": 2888, "election_port": 3888}
    return ZooKeeperManagedStore(
        settings, name="old", host="127.0.0.1", data_dir=tmp_path / "zk", tls=tls
    )


def test_a_certificate_without_the_crl_cannot_join_a_checking_ensemble(
    ca: pki.CaMaterial, tmp_path: Path
) -> None:
    store = _store(tmp_path, old_style_files(ca, tmp_path / "old"))
    spec = {
        "name": "old",
        "server_id": 2,
        "servers": ["server.1=127.0.0.1:2889:3889:participant"],
        "super_password": "x",
        "tls": True,
        "clients": {"1": "127.0.0.1:2182"},
        "check_crl": True,
    }
    with pytest.raises(ManagedStoreError, match="name no revocation list"):
        store.join(spec)
    assert not store.data_dir.exists()
