"""Node certificates: one per node, signed by the cluster CA, used both as server and client.

A node's certificate names every address and DNS name peers use to reach it, so hostname
checks stay on everywhere. The node directory also gets a copy of the CA certificate, so a
server configured from it (etcd, PostgreSQL) finds its cert, key and trust anchor together.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hacore.pki import pem, revocation
from hacore.pki.ca import BACKDATE, CA_CERT, RENEW_BEFORE, CaMaterial
from hacore.pki.errors import TlsMaterialError
from hacore.pki.tls_files import CERT_MODE, KEY_MODE, private_dir, write_atomic

log = logging.getLogger(__name__)

NODE_CERT = "node.crt"
NODE_KEY = "node.key"
NODE_VALID_DAYS = 3 * 365
_DNS_NAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.?)+$")

SubjectName = x509.IPAddress | x509.DNSName
PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey


@attrs.frozen
class NodeCertificate:
    """A node's certificate and key on disk, with the CA certificate written beside them."""

    certificate: x509.Certificate
    key: pem.SigningKey = attrs.field(repr=False, eq=False)
    cert_file: Path
    key_file: Path
    ca_file: Path

    @property
    def node_name(self) -> str:
        return pem.common_name(self.certificate) or ""

    @property
    def fingerprint(self) -> str:
        return pem.fingerprint(self.certificate)

    @property
    def hosts(self) -> tuple[str, ...]:
        """Every IP address and DNS name the certificate is valid for."""
        return tuple(_host_text(name) for name in _alt_names(self.certificate))


def subject_names(hosts: Sequence[str]) -> tuple[SubjectName, ...]:
    """``hosts`` as SAN entries, IP addresses recognised as such, duplicates dropped."""
    names: list[SubjectName] = []
    for raw in hosts:
        host = str(raw).strip()
        try:
            name: SubjectName = x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
        except ValueError:
            if not _DNS_NAME.match(host):
                raise TlsMaterialError(f"{raw!r} is neither an IP address nor a DNS name") from None
            name = x509.DNSName(host.rstrip(".").lower())
        if name not in names:
            names.append(name)
    if not names:
        raise TlsMaterialError("a node certificate needs at least one IP address or DNS name")
    return tuple(names)


def _alt_names(cert: x509.Certificate) -> tuple[SubjectName, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(n for n in san if isinstance(n, x509.IPAddress | x509.DNSName))


def _host_text(name: SubjectName) -> str:
    return str(name.value)


def issue_node_certificate(
    ca: CaMaterial,
    node_name: str,
    hosts: Sequence[str],
    directory: Path,
    *,
    valid_days: int = NODE_VALID_DAYS,
) -> NodeCertificate:
    """A new key and certificate for ``node_name``, signed by ``ca``, written to ``directory``.

    The certificate is valid for every one of ``hosts`` (IP addresses and DNS names), for both
    TLS server and client use, and never outlives the CA.
    """
    key = pem.new_key()
    certificate = sign_node_certificate(
        ca, node_name, hosts, key.public_key(), valid_days=valid_days
    )
    return store_node_certificate(ca.certificate, certificate, key, directory)


def sign_node_certificate(
    ca: CaMaterial,
    node_name: str,
    hosts: Sequence[str],
    public_key: PublicKey,
    *,
    valid_days: int = NODE_VALID_DAYS,
) -> x509.Certificate:
    """The certificate of ``node_name`` for ``public_key`` (the node's key may be elsewhere:
    a joiner's certificate request), valid for ``hosts``, signed by ``ca``."""
    if not node_name or not node_name.strip():
        raise TlsMaterialError("a node certificate needs a non-empty node name")
    names = subject_names(hosts)
    start = pem.now()
    ca_end = ca.certificate.not_valid_after_utc
    if ca_end <= start:
        raise TlsMaterialError(f"the cluster CA expired on {ca_end:%Y-%m-%d}: renew it first")
    end = min(start + datetime.timedelta(days=valid_days), ca_end)
    if end - start < RENEW_BEFORE:
        log.warning("the cluster CA expires on %s: node certificates are short-lived", ca_end)
    return (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hacore"),
                    x509.NameAttribute(NameOID.COMMON_NAME, node_name),
                ]
            )
        )
        .issuer_name(ca.certificate.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(start - BACKDATE, ca.certificate.not_valid_before_utc))
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
        .add_extension(revocation.distribution_points(), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )


def store_node_certificate(
    ca_certificate: x509.Certificate,
    certificate: x509.Certificate,
    key: pem.SigningKey,
    directory: Path,
) -> NodeCertificate:
    """``certificate`` and its ``key`` written to ``directory``, the CA certificate beside
    them (key first: a crash between the two leaves a pair that does not match, which
    :func:`load_node_certificate` refuses)."""
    if not pem.key_matches(certificate, key):
        raise TlsMaterialError("the node key does not belong to its certificate")
    directory = private_dir(directory)
    ca_file = write_atomic(directory / CA_CERT, pem.cert_pem(ca_certificate), CERT_MODE)
    key_file = write_atomic(directory / NODE_KEY, pem.key_pem(key), KEY_MODE)
    cert_file = write_atomic(directory / NODE_CERT, pem.cert_pem(certificate), CERT_MODE)
    issued = NodeCertificate(certificate, key, cert_file, key_file, ca_file)
    log.info(
        "installed the certificate of node %s for %s (fingerprint %s, CA %s)",
        issued.node_name,
        ", ".join(issued.hosts),
        issued.fingerprint,
        pem.fingerprint(ca_certificate),
    )
    return issued


def load_node_certificate(directory: Path) -> NodeCertificate:
    directory = Path(directory)
    cert_file, key_file = directory / NODE_CERT, directory / NODE_KEY
    loaded = NodeCertificate(
        pem.read_certificate(cert_file),
        pem.read_key(key_file),
        cert_file,
        key_file,
        directory / CA_CERT,
    )
    if not pem.key_matches(loaded.certificate, loaded.key):
        raise TlsMaterialError(f"the node key in {directory} does not belong to its certificate")
    return loaded


def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """Whether ``ca`` signed ``cert`` (names and signature both checked)."""
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def why_not_reusable(
    node: NodeCertificate, ca: CaMaterial, node_name: str, hosts: Sequence[str]
) -> str | None:
    """The reason ``node`` cannot serve as ``node_name`` at ``hosts`` under ``ca``, if any."""
    if not issued_by(node.certificate, ca.certificate):
        return "it was not signed by the cluster CA"
    try:
        local_ca = pem.read_certificate(node.ca_file)
    except TlsMaterialError as err:
        return str(err)
    if local_ca != ca.certificate:
        return f"{node.ca_file} is not the cluster CA"
    if node.node_name != node_name:
        return f"it names node {node.node_name!r}"
    missing = [n for n in subject_names(hosts) if n not in _alt_names(node.certificate)]
    if missing:
        return f"it does not cover {', '.join(_host_text(n) for n in missing)}"
    if node.certificate.not_valid_before_utc > pem.now():
        return "it is not valid yet"
    if pem.expires_within(node.certificate, RENEW_BEFORE):
        return f"it expires on {node.certificate.not_valid_after_utc:%Y-%m-%d}"
    if revocation.is_revoked(node.certificate, revocation.crl_path(node.ca_file), ca.certificate):
        return "the cluster revoked it (the node was removed)"
    return None


def ensure_node_certificate(
    ca: CaMaterial, node_name: str, hosts: Sequence[str], directory: Path
) -> NodeCertificate:
    """The node certificate in ``directory`` if it still fits, else a newly issued one.

    It fits when ``ca`` signed it, it names ``node_name``, covers every one of ``hosts`` and
    is more than 30 days from expiry and not revoked; a restart therefore keeps the
    certificate that peers may already have seen, and a new address, a new CA or a removal
    (the node joins again under its name) gets a new one. The CRL file beside it is made
    (empty) if missing, since servers configured with it refuse everyone without it.
    """
    try:
        existing = load_node_certificate(directory)
    except TlsMaterialError as err:
        log.info("issuing a certificate for node %s: %s", node_name, err)
        issued = issue_node_certificate(ca, node_name, hosts, directory)
        revocation.ensure_crl_file(ca, directory)
        return issued
    problem = why_not_reusable(existing, ca, node_name, hosts)
    revocation.ensure_crl_file(ca, directory)
    if problem is None:
        return existing
    log.info(
        "re-issuing the certificate of node %s (fingerprint %s): %s",
        node_name,
        existing.fingerprint,
        problem,
    )
    return issue_node_certificate(ca, node_name, hosts, directory)
