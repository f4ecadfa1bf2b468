"""The cluster's certificate revocation list (CRL): which node certificates no server accepts.

Removal revokes by certificate **serial**, never by node name: a removed name may join again
with a new certificate, which must work, while every certificate the removed node ever held
(its current one and any older one left in a backup) must not. The CRL is signed by the
cluster CA, so OpenSSL (PostgreSQL's ``ssl_crl_file``) accepts it, and is valid until the CA
expires: a CRL past its ``nextUpdate`` makes OpenSSL refuse *every* client, and no node may
be required to re-sign it on a timer for the cluster to keep working.

The file lives beside the node certificate (``pki/node/crl.pem``), where every server
configured from the node's TLS files finds it; :func:`ensure_crl_file` writes an empty one
before any server is started, because etcd refuses every connection when its CRL file is
missing.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from hacore.pki import pem
from hacore.pki.ca import BACKDATE, CaMaterial
from hacore.pki.errors import TlsMaterialError
from hacore.pki.tls_files import CERT_MODE, write_atomic

CRL_FILE = "crl.pem"
#: the CRL distribution point every node certificate names: a *relative* ``file:`` URL, so a
#: server that fetches CRLs only from the URL in the certificate it checks (Java's, hence the
#: managed ZooKeeper) reads the ``crl.pem`` in its own working directory, whatever the node's
#: data directory. Software that ignores distribution points (OpenSSL, Go) is not affected.
DISTRIBUTION_POINT = f"file:{CRL_FILE}"


def crl_path(ca_file: Path) -> Path:
    """The CRL beside a node's copy of the CA certificate (``TlsFiles.ca_file``)."""
    return Path(ca_file).parent / CRL_FILE


def distribution_points() -> x509.CRLDistributionPoints:
    """The extension that names :data:`DISTRIBUTION_POINT` (full name, all reasons)."""
    point = x509.DistributionPoint(
        full_name=[x509.UniformResourceIdentifier(DISTRIBUTION_POINT)],
        relative_name=None,
        reasons=None,
        crl_issuer=None,
    )
    return x509.CRLDistributionPoints([point])


def names_distribution_point(cert: x509.Certificate) -> bool:
    """Whether ``cert`` names :data:`DISTRIBUTION_POINT` (certificates issued before it was
    added do not: a Java server checking revocation refuses those)."""
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return False
    wanted = x509.UniformResourceIdentifier(DISTRIBUTION_POINT)
    return any(wanted in (point.full_name or ()) for point in points)


def build_crl(ca: CaMaterial, serials: Iterable[int]) -> bytes:
    """A PEM CRL signed by ``ca`` listing ``serials``, valid until the CA expires."""
    start = pem.now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(max(start - BACKDATE, ca.certificate.not_valid_before_utc))
        .next_update(ca.certificate.not_valid_after_utc)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    for serial in sorted(set(serials)):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(start - datetime.timedelta(seconds=1))
            .build()
        )
    crl = builder.sign(ca.key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.PEM)


def parse_crl(data: bytes, ca_certificate: x509.Certificate) -> x509.CertificateRevocationList:
    """``data`` as a CRL, refused unless ``ca_certificate`` signed it: a CRL is taken from the
    store, and a forged one could revoke a live member (or be garbage that every server
    then rejects)."""
    try:
        crl = x509.load_pem_x509_crl(data)
    except ValueError:
        raise TlsMaterialError("the revocation list is not a PEM CRL") from None
    if crl.issuer != ca_certificate.subject or not crl.is_signature_valid(
        ca_certificate.public_key()  # type: ignore[arg-type]
    ):
        raise TlsMaterialError("the revocation list is not signed by the cluster CA")
    return crl


def revoked_serials(data: bytes, ca_certificate: x509.Certificate) -> frozenset[int]:
    return frozenset(r.serial_number for r in parse_crl(data, ca_certificate))


def is_revoked(cert: x509.Certificate, crl_file: Path, ca_certificate: x509.Certificate) -> bool:
    """Whether the CRL at ``crl_file`` lists ``cert`` (no file, or a bad one: not revoked)."""
    try:
        return cert.serial_number in revoked_serials(crl_file.read_bytes(), ca_certificate)
    except (OSError, TlsMaterialError):
        return False


def install_crl(path: Path, data: bytes, ca_certificate: x509.Certificate) -> bool:
    """Write ``data`` (checked against the CA) to ``path`` unless it is already there;
    True when the file changed."""
    parse_crl(data, ca_certificate)
    try:
        if path.read_bytes() == data:
            return False
    except OSError:
        pass
    write_atomic(path, data, CERT_MODE)
    return True


def ensure_crl_file(ca: CaMaterial, directory: Path) -> Path:
    """``directory/crl.pem`` as it is if it is a CRL of ``ca``, else an empty one."""
    path = Path(directory) / CRL_FILE
    try:
        parse_crl(path.read_bytes(), ca.certificate)
    except (OSError, TlsMaterialError):
        write_atomic(path, build_crl(ca, ()), CERT_MODE)
    return path
