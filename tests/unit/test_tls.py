"""The internal CA and node certificates: their properties, files, join transfer and reuse.

Chains are checked with cryptography's own X.509 path validation and with ``openssl verify
-x509_strict``; TLS behaviour with real handshakes between ``ssl`` contexts over memory BIOs.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import os
import pwd
import shutil
import ssl
import stat
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID

from hacore.errors import HacoreError
from hacore.pki import (
    CA_CERT,
    CA_KEY,
    NODE_CERT,
    NODE_KEY,
    CaMaterial,
    NodeCertificate,
    TlsMaterialError,
    ca_bundle_for_join,
    ca_from_join,
    create_ca,
    ensure_ca,
    ensure_node_certificate,
    fingerprint,
    install_for_user,
    issue_node_certificate,
    load_ca,
    load_ca_certificate,
    load_node_certificate,
    ssl_client_context,
    ssl_server_context,
    store_ca,
    trust_ca_certificate,
)
from hacore.pki.tls_files import write_atomic

HOSTS = ["127.0.0.1", "localhost", "10.1.2.3", "node-a.example.com", "::1"]
OPENSSL = shutil.which("openssl")


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pki") / "ca"


@pytest.fixture(scope="module")
def ca(ca_dir: Path) -> CaMaterial:
    return create_ca("prod", ca_dir)


@pytest.fixture(scope="module")
def node(ca: CaMaterial, tmp_path_factory: pytest.TempPathFactory) -> NodeCertificate:
    return issue_node_certificate(ca, "node-a", HOSTS, tmp_path_factory.mktemp("pki") / "a")


@pytest.fixture(scope="module")
def foreign_ca(tmp_path_factory: pytest.TempPathFactory) -> CaMaterial:
    return create_ca("prod", tmp_path_factory.mktemp("pki") / "foreign")


def _verifier_store(ca: CaMaterial) -> verification.PolicyBuilder:
    return verification.PolicyBuilder().store(verification.Store([ca.certificate]))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _years(delta: datetime.timedelta) -> float:
    return delta.total_seconds() / (365.25 * 86400)


# -------------------------------------------------------------------------------------------
# The CA


def test_ca_properties(ca: CaMaterial) -> None:
    cert = ca.certificate
    assert cert.subject.rfc4514_string() == "CN=hacore CA prod"
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca and constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature and not usage.value.key_encipherment
    assert 9.99 < _years(cert.not_valid_after_utc - cert.not_valid_before_utc) < 10.01
    assert cert.not_valid_before_utc < datetime.datetime.now(datetime.UTC)
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey)
    assert ca.key.curve.name == "secp256r1"
    assert ca.cluster_name == "prod"
    assert ca.cert_file is not None and ca.key_file is not None
    assert (ca.cert_file.name, ca.key_file.name) == (CA_CERT, CA_KEY)


def test_ca_needs_a_cluster_name(tmp_path: Path) -> None:
    with pytest.raises(TlsMaterialError, match="non-empty cluster name"):
        create_ca("  ", tmp_path / "ca")
    assert issubclass(TlsMaterialError, HacoreError)


def test_load_ca_gives_back_what_was_created(ca: CaMaterial, ca_dir: Path) -> None:
    loaded = load_ca(ca_dir)
    assert loaded == ca
    assert loaded.key.public_key() == ca.key.public_key()
    assert load_ca_certificate(ca_dir) == ca.certificate
    assert load_ca_certificate(ca_dir / CA_CERT) == ca.certificate


def test_load_ca_refuses_a_key_of_another_ca(
    ca: CaMaterial, foreign_ca: CaMaterial, tmp_path: Path
) -> None:
    assert foreign_ca.key_file is not None and ca.cert_file is not None
    (tmp_path / CA_CERT).write_bytes(ca.cert_file.read_bytes())
    (tmp_path / CA_KEY).write_bytes(foreign_ca.key_file.read_bytes())
    with pytest.raises(TlsMaterialError, match="does not belong to its certificate"):
        load_ca(tmp_path)
    with pytest.raises(TlsMaterialError, match=r"cannot read .*nothing.*No such file"):
        load_ca(tmp_path / "nothing")


# -------------------------------------------------------------------------------------------
# Node certificates


def test_node_certificate_verifies_against_the_ca(ca: CaMaterial, node: NodeCertificate) -> None:
    for subject in (
        verification.IPAddress(ipaddress.ip_address("127.0.0.1")),
        verification.IPAddress(ipaddress.ip_address("::1")),
        verification.DNSName("localhost"),
        verification.DNSName("node-a.example.com"),
    ):
        chain = _verifier_store(ca).build_server_verifier(subject).verify(node.certificate, [])
        assert chain == [node.certificate, ca.certificate]
    verified = _verifier_store(ca).build_client_verifier().verify(node.certificate, [])
    assert verified.chain == [node.certificate, ca.certificate]


def test_node_certificate_is_refused_for_other_hosts_and_by_other_cas(
    ca: CaMaterial, foreign_ca: CaMaterial, node: NodeCertificate
) -> None:
    wrong_host = _verifier_store(ca).build_server_verifier(verification.DNSName("other.example"))
    with pytest.raises(verification.VerificationError):
        wrong_host.verify(node.certificate, [])
    other = verification.IPAddress(ipaddress.ip_address("127.0.0.2"))
    with pytest.raises(verification.VerificationError):
        _verifier_store(ca).build_server_verifier(other).verify(node.certificate, [])
    with pytest.raises(verification.VerificationError):
        _verifier_store(foreign_ca).build_client_verifier().verify(node.certificate, [])


@pytest.mark.skipif(OPENSSL is None, reason="no openssl command")
def test_openssl_verifies_the_chain_strictly_for_both_purposes(
    ca: CaMaterial, node: NodeCertificate, foreign_ca: CaMaterial
) -> None:
    assert OPENSSL is not None
    for purpose in ("sslserver", "sslclient"):
        ok = subprocess.run(
            [OPENSSL, "verify", "-x509_strict", "-purpose", purpose, "-CAfile",
             str(ca.cert_file), str(node.cert_file)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert ok.returncode == 0, ok.stdout + ok.stderr
    refused = subprocess.run(
        [OPENSSL, "verify", "-CAfile", str(foreign_ca.cert_file), str(node.cert_file)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert refused.returncode != 0


def test_node_certificate_contents(ca: CaMaterial, node: NodeCertificate) -> None:
    cert = node.certificate
    assert node.node_name == "node-a"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("10.1.2.3"),
        ipaddress.ip_address("::1"),
    ]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "node-a.example.com"]
    assert node.hosts == ("127.0.0.1", "localhost", "10.1.2.3", "node-a.example.com", "::1")
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert 2 <= _years(cert.not_valid_after_utc - datetime.datetime.now(datetime.UTC)) <= 5
    assert cert.issuer == ca.certificate.subject
    assert node.ca_file.read_bytes() == ca.certificate_pem()
    assert (node.cert_file.name, node.key_file.name) == (NODE_CERT, NODE_KEY)
    assert load_node_certificate(node.cert_file.parent) == node


def test_node_certificate_never_outlives_its_ca(tmp_path: Path) -> None:
    short_ca = create_ca("short", tmp_path / "ca", valid_days=400)
    issued = issue_node_certificate(short_ca, "n1", ["127.0.0.1"], tmp_path / "n1")
    assert issued.certificate.not_valid_after_utc == short_ca.certificate.not_valid_after_utc
    expired = create_ca("old", tmp_path / "old", valid_days=0)
    with pytest.raises(TlsMaterialError, match="the cluster CA expired on"):
        issue_node_certificate(expired, "n1", ["127.0.0.1"], tmp_path / "n2")


@pytest.mark.parametrize(
    ("hosts", "message"),
    [
        ([], "at least one IP address or DNS name"),
        (["127.0.0.1", "not a host"], "'not a host' is neither an IP address nor a DNS name"),
        (["-bad.example"], "neither an IP address nor a DNS name"),
    ],
)
def test_bad_hosts_are_refused(
    ca: CaMaterial, tmp_path: Path, hosts: list[str], message: str
) -> None:
    with pytest.raises(TlsMaterialError, match=message):
        issue_node_certificate(ca, "n1", hosts, tmp_path / "n1")
    assert not (tmp_path / "n1").exists()


# -------------------------------------------------------------------------------------------
# Files


def test_file_and_directory_modes_do_not_depend_on_the_umask(tmp_path: Path) -> None:
    directory = tmp_path / "tls"
    directory.mkdir(mode=0o755)
    old = os.umask(0)
    try:
        made_ca = create_ca("modes", directory)
        issued = issue_node_certificate(made_ca, "n1", ["127.0.0.1"], directory)
    finally:
        os.umask(old)
    assert _mode(directory) == 0o700
    assert _mode(directory / CA_KEY) == 0o600
    assert _mode(directory / NODE_KEY) == 0o600
    assert _mode(directory / CA_CERT) == 0o644
    assert _mode(directory / NODE_CERT) == 0o644
    assert issued.ca_file == directory / CA_CERT
    assert sorted(p.name for p in directory.iterdir()) == [CA_CERT, CA_KEY, NODE_CERT, NODE_KEY]


def test_atomic_write_replaces_a_file_in_one_step(tmp_path: Path) -> None:
    target = tmp_path / "x.key"
    target.write_bytes(b"old")
    target.chmod(0o666)
    inode = target.stat().st_ino
    write_atomic(target, b"new", 0o600)
    assert target.read_bytes() == b"new"
    assert _mode(target) == 0o600
    assert target.stat().st_ino != inode  # renamed over, never rewritten in place
    assert [p.name for p in tmp_path.iterdir()] == ["x.key"]


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_install_for_user_gives_the_user_private_copies(
    node: NodeCertificate, tmp_path: Path
) -> None:
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres user")
    target = tmp_path / "pg-tls"
    files = install_for_user(
        [node.cert_file, node.key_file, node.ca_file], "postgres", directory=target
    )
    assert [p.name for p in files] == [NODE_CERT, NODE_KEY, CA_CERT]
    for path in (target, *files):
        info = path.stat()
        assert (info.st_uid, info.st_gid) == (user.pw_uid, user.pw_gid), path
    assert [_mode(p) for p in (target, *files)] == [0o700, 0o644, 0o600, 0o644]
    assert files[1].read_bytes() == node.key_file.read_bytes()
    with pytest.raises(TlsMaterialError, match="no such user"):
        install_for_user([node.cert_file], "no-such-user-hacore", directory=tmp_path / "x")


# -------------------------------------------------------------------------------------------
# Join


def test_join_bundle_round_trip(ca: CaMaterial, tmp_path: Path) -> None:
    wire = json.dumps(ca_bundle_for_join(ca))
    received = ca_from_join(json.loads(wire))
    assert received.certificate == ca.certificate
    assert received.key.public_key() == ca.key.public_key()
    assert received.cert_file is None
    stored = store_ca(received, tmp_path / "b")
    assert load_ca(tmp_path / "b") == stored
    assert stored.fingerprint == ca.fingerprint
    joiner = issue_node_certificate(stored, "node-b", ["127.0.0.2"], tmp_path / "b")
    subject = verification.IPAddress(ipaddress.ip_address("127.0.0.2"))
    # verified with the active's own copy of the CA: nothing about the CA changed
    chain = _verifier_store(ca).build_server_verifier(subject).verify(joiner.certificate, [])
    assert chain[-1] == ca.certificate


def test_join_bundle_is_checked(
    ca: CaMaterial, foreign_ca: CaMaterial, node: NodeCertificate
) -> None:
    good = ca_bundle_for_join(ca)
    with pytest.raises(TlsMaterialError, match="format"):
        ca_from_join({**good, "format": "other/9"})
    with pytest.raises(TlsMaterialError, match="has no ca_key"):
        ca_from_join({k: v for k, v in good.items() if k != "ca_key"})
    with pytest.raises(TlsMaterialError, match="not a PEM certificate"):
        ca_from_join({**good, "ca_certificate": "garbage"})
    with pytest.raises(TlsMaterialError, match="does not belong to its certificate"):
        ca_from_join({**good, "ca_key": ca_bundle_for_join(foreign_ca)["ca_key"]})
    with pytest.raises(TlsMaterialError, match="not a CA certificate"):
        ca_from_join(
            {
                **good,
                "ca_certificate": node.cert_file.read_text(),
                "ca_key": node.key_file.read_text(),
            }
        )


def test_a_joiner_trusts_a_presented_ca_only_by_its_fingerprint(
    ca: CaMaterial, foreign_ca: CaMaterial, node: NodeCertificate
) -> None:
    presented = ca.certificate_pem().decode()
    assert trust_ca_certificate(presented, ca.fingerprint) == ca.certificate
    # as an operator may paste it: openssl's output, lower case, without colons
    assert trust_ca_certificate(presented, f"sha256 Fingerprint={ca.fingerprint}".lower())
    assert trust_ca_certificate(presented, ca.fingerprint.replace(":", ""))
    with pytest.raises(TlsMaterialError, match="not the expected"):
        trust_ca_certificate(foreign_ca.certificate_pem(), ca.fingerprint)
    with pytest.raises(TlsMaterialError, match="not a CA certificate"):
        trust_ca_certificate(node.cert_file.read_bytes(), node.fingerprint)


# -------------------------------------------------------------------------------------------
# Idempotency


def test_ensure_ca_reuses_a_valid_ca(tmp_path: Path) -> None:
    first = ensure_ca("prod", tmp_path)
    before = (tmp_path / CA_KEY).stat()
    again = ensure_ca("prod", tmp_path)
    assert again == first
    assert (tmp_path / CA_KEY).stat().st_ino == before.st_ino  # not even rewritten


def test_ensure_ca_replaces_what_does_not_fit(tmp_path: Path) -> None:
    expiring = create_ca("prod", tmp_path / "a", valid_days=20)
    renewed = ensure_ca("prod", tmp_path / "a")
    assert renewed.fingerprint != expiring.fingerprint
    assert (
        _years(renewed.certificate.not_valid_after_utc - expiring.certificate.not_valid_after_utc)
        > 9
    )

    other = create_ca("staging", tmp_path / "b")
    assert ensure_ca("prod", tmp_path / "b").fingerprint != other.fingerprint

    (tmp_path / "c").mkdir()
    (tmp_path / "c" / CA_CERT).write_text("not a certificate")
    (tmp_path / "c" / CA_KEY).write_text("not a key")
    assert ensure_ca("prod", tmp_path / "c") == load_ca(tmp_path / "c")


def test_ensure_node_certificate_reuses_one_that_still_fits(ca: CaMaterial, tmp_path: Path) -> None:
    first = ensure_node_certificate(ca, "n1", ["127.0.0.1", "localhost"], tmp_path)
    assert ensure_node_certificate(ca, "n1", ["127.0.0.1", "localhost"], tmp_path) == first
    assert ensure_node_certificate(ca, "n1", ["LOCALHOST"], tmp_path) == first
    grown = ensure_node_certificate(ca, "n1", ["127.0.0.1", "10.0.0.7"], tmp_path)
    assert grown.fingerprint != first.fingerprint
    assert grown.hosts == ("127.0.0.1", "10.0.0.7")


def test_ensure_node_certificate_reissues_what_does_not_fit(
    ca: CaMaterial, foreign_ca: CaMaterial, tmp_path: Path
) -> None:
    hosts = ["127.0.0.1"]
    expiring = issue_node_certificate(ca, "n1", hosts, tmp_path, valid_days=10)
    renewed = ensure_node_certificate(ca, "n1", hosts, tmp_path)
    assert renewed.fingerprint != expiring.fingerprint
    assert (
        _years(renewed.certificate.not_valid_after_utc - expiring.certificate.not_valid_after_utc)
        > 2
    )

    renamed = ensure_node_certificate(ca, "n2", hosts, tmp_path)
    assert renamed.node_name == "n2"

    moved = ensure_node_certificate(foreign_ca, "n2", hosts, tmp_path)
    assert moved.fingerprint != renamed.fingerprint
    moved.certificate.verify_directly_issued_by(foreign_ca.certificate)
    assert moved.ca_file.read_bytes() == foreign_ca.certificate_pem()

    # a crash between writing the key and the certificate leaves a pair that does not match
    assert foreign_ca.key_file is not None
    shutil.copy(foreign_ca.key_file, tmp_path / NODE_KEY)
    with pytest.raises(TlsMaterialError, match="does not belong"):
        load_node_certificate(tmp_path)
    repaired = ensure_node_certificate(foreign_ca, "n2", hosts, tmp_path)
    assert load_node_certificate(tmp_path) == repaired


# -------------------------------------------------------------------------------------------
# TLS contexts, with real handshakes over memory buffers


def _handshake(
    client: ssl.SSLContext, server: ssl.SSLContext, server_hostname: str
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Both ends of a completed handshake; the SSLError of whichever side refuses."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    c_end = client.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    s_end = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for side, end in (("client", c_end), ("server", s_end)):
            if not done[side]:
                try:
                    end.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return c_end, s_end
    raise AssertionError(f"handshake stuck: {done}")


@pytest.fixture(scope="module")
def foreign_node(
    foreign_ca: CaMaterial, tmp_path_factory: pytest.TempPathFactory
) -> NodeCertificate:
    return issue_node_certificate(
        foreign_ca, "node-a", HOSTS, tmp_path_factory.mktemp("pki") / "foreign-node"
    )


def test_pinned_client_and_node_server_shake_hands(ca: CaMaterial, node: NodeCertificate) -> None:
    client, server = _handshake(
        ssl_client_context(ca.certificate, node), ssl_server_context(node, ca, True), "127.0.0.1"
    )
    assert client.version() in ("TLSv1.2", "TLSv1.3")
    peer = server.getpeercert()
    assert peer is not None and ("commonName", "node-a") in [rdn[0] for rdn in peer["subject"]]
    _handshake(ssl_client_context(ca), ssl_server_context(node, ca, False), "localhost")


def test_a_server_certificate_from_a_different_ca_is_rejected(
    ca: CaMaterial, foreign_node: NodeCertificate, foreign_ca: CaMaterial
) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        _handshake(
            ssl_client_context(ca), ssl_server_context(foreign_node, foreign_ca, False), "127.0.0.1"
        )


def test_hostnames_are_checked(ca: CaMaterial, node: NodeCertificate) -> None:
    with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
        _handshake(ssl_client_context(ca), ssl_server_context(node, ca, False), "127.0.0.2")
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        _handshake(ssl_client_context(ca), ssl_server_context(node, ca, False), "elsewhere.example")


def test_client_certificates_are_checked_against_the_ca(
    ca: CaMaterial, node: NodeCertificate, foreign_node: NodeCertificate
) -> None:
    requiring = ssl_server_context(node, ca, require_client_cert=True)
    with pytest.raises(
        ssl.SSLError, match=r"PEER_DID_NOT_RETURN_A_CERTIFICATE|CERTIFICATE_REQUIRED"
    ):
        _handshake(ssl_client_context(ca), requiring, "127.0.0.1")
    with pytest.raises(ssl.SSLError, match=r"certificate verify failed|UNKNOWN_CA|unknown ca"):
        _handshake(ssl_client_context(ca, foreign_node), requiring, "127.0.0.1")
    optional = ssl_server_context(node, ca, require_client_cert=False)
    _handshake(ssl_client_context(ca), optional, "127.0.0.1")
    with pytest.raises(ssl.SSLError, match=r"certificate verify failed|UNKNOWN_CA|unknown ca"):
        _handshake(ssl_client_context(ca, foreign_node), optional, "127.0.0.1")


def test_contexts_refuse_old_protocols(ca: CaMaterial, node: NodeCertificate) -> None:
    client = ssl_client_context(ca)
    assert client.check_hostname and client.verify_mode == ssl.CERT_REQUIRED
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old_client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old_client.load_verify_locations(cadata=ca.certificate_pem().decode())
        old_client.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        old_client.maximum_version = ssl.TLSVersion.TLSv1_1
        old_client.set_ciphers("ALL:@SECLEVEL=0")
        lax_server = ssl_server_context(node, ca, False)
        lax_server.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        lax_server.set_ciphers("ALL:@SECLEVEL=0")
        # the old client does speak TLS 1.1 to a server that allows it...
        assert _handshake(old_client, lax_server, "127.0.0.1")[0].version() == "TLSv1.1"
        # ...and gets nowhere with ours
        with pytest.raises(ssl.SSLError, match="UNSUPPORTED_PROTOCOL"):
            _handshake(old_client, ssl_server_context(node, ca, False), "127.0.0.1")
        old_server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        old_server.load_cert_chain(node.cert_file, node.key_file)
        old_server.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        old_server.maximum_version = ssl.TLSVersion.TLSv1_1
        old_server.set_ciphers("ALL:@SECLEVEL=0")
        with pytest.raises(ssl.SSLError, match=r"UNSUPPORTED_PROTOCOL|unsupported protocol"):
            _handshake(client, old_server, "127.0.0.1")


# -------------------------------------------------------------------------------------------
# Logs


@pytest.fixture
def every_log_record(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.DEBUG, logger="hacore"):
        yield caplog


def test_fingerprint_is_the_one_openssl_prints(ca: CaMaterial) -> None:
    if OPENSSL is None:
        pytest.skip("no openssl command")
    out = subprocess.run(
        [OPENSSL, "x509", "-noout", "-fingerprint", "-sha256", "-in", str(ca.cert_file)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.strip().split("=", 1)[1] == fingerprint(ca.certificate) == ca.fingerprint


def test_no_key_material_in_logs_or_reprs(
    tmp_path: Path, every_log_record: pytest.LogCaptureFixture
) -> None:
    made = ensure_ca("logs", tmp_path / "ca")
    ensure_ca("other", tmp_path / "ca")  # replaced: logged with a warning
    made = load_ca(tmp_path / "ca")
    joined = store_ca(ca_from_join(ca_bundle_for_join(made)), tmp_path / "b")
    issued = ensure_node_certificate(joined, "n1", ["127.0.0.1"], tmp_path / "b")
    ensure_node_certificate(joined, "n1", ["127.0.0.1", "localhost"], tmp_path / "b")
    text = "\n".join(r.getMessage() for r in every_log_record.records)
    assert made.fingerprint in text and issued.fingerprint in text
    secrets = [
        line
        for path in (tmp_path / "ca" / CA_KEY, tmp_path / "b" / NODE_KEY)
        for line in path.read_text().splitlines()
        if "-----" not in line
    ]
    assert secrets
    for shown in (text, repr(made), repr(issued), str(made), str(issued)):
        assert "PRIVATE KEY" not in shown
        assert not any(line in shown for line in secrets)
