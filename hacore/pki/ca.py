"""The cluster's internal certificate authority.

``cluster start`` creates it once; every node that joins receives a copy of the certificate and
key (:func:`ca_bundle_for_join` / :func:`ca_from_join`) and signs its own node certificate with
it, so anything that trusts the CA keeps working whichever node is active.
"""

from __future__ import annotations

import datetime
import hmac
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from hacore.pki import pem
from hacore.pki.errors import TlsMaterialError
from hacore.pki.tls_files import CERT_MODE, KEY_MODE, private_dir, write_atomic

log = logging.getLogger(__name__)

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CA_VALID_DAYS = 3650
#: Material closer than this to its expiry is replaced by the ``ensure_*`` functions.
RENEW_BEFORE = datetime.timedelta(days=30)
#: Backdating covers a joiner whose clock is a little behind the active's.
BACKDATE = datetime.timedelta(hours=1)
JOIN_FORMAT = "hacore-ca/1"


@attrs.frozen
class CaMaterial:
    """The CA certificate and its key; the file paths are set once it is on disk."""

    certificate: x509.Certificate
    key: pem.SigningKey = attrs.field(repr=False, eq=False)
    cert_file: Path | None = None
    key_file: Path | None = None

    @property
    def cluster_name(self) -> str:
        name = pem.common_name(self.certificate) or ""
        return name.removeprefix(ca_common_name(""))

    @property
    def fingerprint(self) -> str:
        return pem.fingerprint(self.certificate)

    def certificate_pem(self) -> bytes:
        return pem.cert_pem(self.certificate)


def ca_common_name(cluster_name: str) -> str:
    return f"hacore CA {cluster_name}"


def create_ca(cluster_name: str, directory: Path, *, valid_days: int = CA_VALID_DAYS) -> CaMaterial:
    """A new CA for ``cluster_name``, written to ``directory`` (replacing any CA there)."""
    if not cluster_name or not cluster_name.strip():
        raise TlsMaterialError("a cluster CA needs a non-empty cluster name")
    key = pem.new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ca_common_name(cluster_name))])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    start = pem.now()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - BACKDATE)
        .not_valid_after(start + datetime.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    ca = store_ca(CaMaterial(certificate, key), directory)
    log.info("created the CA of cluster %s (fingerprint %s)", cluster_name, ca.fingerprint)
    return ca


def store_ca(ca: CaMaterial, directory: Path) -> CaMaterial:
    """``ca`` written to ``directory`` (key first, so a crash never leaves a cert without it)."""
    directory = private_dir(directory)
    key_file = write_atomic(directory / CA_KEY, pem.key_pem(ca.key), KEY_MODE)
    cert_file = write_atomic(directory / CA_CERT, ca.certificate_pem(), CERT_MODE)
    return attrs.evolve(ca, cert_file=cert_file, key_file=key_file)


def load_ca(directory: Path) -> CaMaterial:
    directory = Path(directory)
    cert_file, key_file = directory / CA_CERT, directory / CA_KEY
    ca = CaMaterial(pem.read_certificate(cert_file), pem.read_key(key_file), cert_file, key_file)
    check_ca(ca, str(directory))
    return ca


def load_ca_certificate(path: Path) -> x509.Certificate:
    """The CA certificate alone (``path``: the file or its directory), for a client."""
    path = Path(path)
    return pem.read_certificate(path / CA_CERT if path.is_dir() else path)


def trust_ca_certificate(pem_text: str | bytes, expected_fingerprint: str) -> x509.Certificate:
    """The CA certificate a node presented, accepted only if its fingerprint is the expected one.

    This bootstraps trust before a join: the joiner has no CA yet, so it fetches the CA
    certificate over an unverified connection and compares it with the fingerprint the
    operator copied from ``cluster start``; from then on every connection is pinned to it.
    """
    data = pem_text.encode("ascii", errors="replace") if isinstance(pem_text, str) else pem_text
    cert = pem.parse_certificate(data, "the presented CA certificate")
    wanted = _normalise_fingerprint(expected_fingerprint)
    if not hmac.compare_digest(_normalise_fingerprint(pem.fingerprint(cert)), wanted):
        raise TlsMaterialError(
            f"the presented CA certificate has fingerprint {pem.fingerprint(cert)}, "
            f"not the expected {expected_fingerprint.strip()}"
        )
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise TlsMaterialError("the presented certificate is not a CA certificate")
    return cert


def _normalise_fingerprint(text: str) -> str:
    text = text.strip().upper().removeprefix("SHA256:").removeprefix("SHA256 FINGERPRINT=")
    return text.replace(":", "").replace(" ", "")


def check_ca(ca: CaMaterial, what: str) -> None:
    """Raise unless ``ca`` is a CA certificate with its own key."""
    try:
        constraints = ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.value.ca:
        raise TlsMaterialError(f"the certificate in {what} is not a CA certificate")
    if not pem.key_matches(ca.certificate, ca.key):
        raise TlsMaterialError(f"the CA key in {what} does not belong to its certificate")


def ensure_ca(cluster_name: str, directory: Path) -> CaMaterial:
    """The CA in ``directory`` if it is this cluster's and not about to expire, else a new one.

    A new CA invalidates every node certificate signed by the old one: each node must receive
    it and re-issue its certificate (``ensure_node_certificate`` does that on its own).
    """
    try:
        ca = load_ca(directory)
    except TlsMaterialError as err:
        log.info("creating a new CA in %s: %s", directory, err)
        return create_ca(cluster_name, directory)
    problem = None
    if ca.cluster_name != cluster_name:
        problem = f"it belongs to cluster {ca.cluster_name!r}"
    elif pem.expires_within(ca.certificate, RENEW_BEFORE):
        problem = f"it expires on {ca.certificate.not_valid_after_utc:%Y-%m-%d}"
    if problem is None:
        return ca
    log.warning("replacing the CA in %s (fingerprint %s): %s", directory, ca.fingerprint, problem)
    return create_ca(cluster_name, directory)


def ca_bundle_for_join(ca: CaMaterial) -> dict[str, str]:
    """What the join ticket carries: the CA certificate and key as PEM text.

    It holds the CA's private key: send it only over the authenticated TLS channel of the join
    and never log it.
    """
    return {
        "format": JOIN_FORMAT,
        "ca_certificate": ca.certificate_pem().decode("ascii"),
        "ca_key": pem.key_pem(ca.key).decode("ascii"),
    }


def ca_from_join(bundle: Mapping[str, Any]) -> CaMaterial:
    """The CA a join ticket carried, checked; :func:`store_ca` puts it on disk."""
    if bundle.get("format") != JOIN_FORMAT:
        raise TlsMaterialError(
            f"the join ticket's CA is in format {bundle.get('format')!r}, expected {JOIN_FORMAT}"
        )
    fields = {}
    for name in ("ca_certificate", "ca_key"):
        value = bundle.get(name)
        if not isinstance(value, str) or not value:
            raise TlsMaterialError(f"the join ticket has no {name}")
        fields[name] = value.encode("ascii", errors="replace")
    ca = CaMaterial(
        pem.parse_certificate(fields["ca_certificate"], "the join ticket's CA certificate"),
        pem.parse_key(fields["ca_key"], "the join ticket's CA key"),
    )
    check_ca(ca, "the join ticket")
    if pem.expires_within(ca.certificate, datetime.timedelta(0)):
        raise TlsMaterialError("the join ticket's CA certificate has expired")
    return ca
