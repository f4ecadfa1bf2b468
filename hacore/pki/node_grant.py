"""Node certificates granted by the active, so that a joining node never holds the CA key.

The joiner makes its own key and sends a certificate request with its join request; the
active (which unsealed the CA key for that request, hacore/pki/sealed_ca.py) signs it for the
joiner's name and addresses and answers the certificate, with the CA certificate and the CRL,
in the join ticket (:func:`grant_json`). A join by single-use token has no admin password to
unseal with at ticket time: the active issues that node's key and certificate when the admin
asks for the token, and the ticket carries both (:func:`grant_json` with ``key``).

A member then keeps its certificate for as long as it is valid: without the CA key it cannot
re-issue one for a new address or before expiry (:func:`why_unusable` tells what must stop it,
:func:`why_renew` what only deserves a warning).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from hacore.pki import pem, revocation
from hacore.pki.ca import RENEW_BEFORE, CaMaterial
from hacore.pki.certs import (
    NodeCertificate,
    PublicKey,
    issued_by,
    sign_node_certificate,
    subject_names,
)
from hacore.pki.errors import TlsMaterialError

GRANT_FORMAT = "hacore-node-grant/1"


def certificate_request(node_name: str, hosts: Sequence[str]) -> tuple[pem.SigningKey, str]:
    """A new key for ``node_name`` and a request (PEM) for a certificate naming ``hosts``."""
    key = pem.new_key()
    names = subject_names(hosts)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_name)]))
        .add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def sign_request(
    ca: CaMaterial, request_pem: str, node_name: str, required_hosts: Sequence[str]
) -> x509.Certificate:
    """``request_pem`` signed for ``node_name``: the request must be signed by its own key and
    name that node; the certificate names the hosts it asks for and ``required_hosts`` (the
    address the active lets in), whatever the request says."""
    try:
        csr = x509.load_pem_x509_csr(request_pem.encode("ascii", errors="replace"))
    except ValueError:
        raise TlsMaterialError("the certificate request is not a PEM request") from None
    if not csr.is_signature_valid:
        raise TlsMaterialError("the certificate request is not signed by its own key")
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or names[0].value != node_name:
        raise TlsMaterialError(f"the certificate request is not for node {node_name}")
    try:
        asked = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        hosts = [str(n.value) for n in asked if isinstance(n, x509.IPAddress | x509.DNSName)]
    except x509.ExtensionNotFound:
        hosts = []
    public = csr.public_key()
    if not isinstance(public, PublicKey):
        raise TlsMaterialError("the certificate request has an unsupported key type")
    return sign_node_certificate(ca, node_name, [*required_hosts, *hosts], public)


def grant_json(
    ca_certificate: x509.Certificate,
    certificate: x509.Certificate,
    *,
    key: pem.SigningKey | None = None,
    crl: bytes | None = None,
) -> dict[str, Any]:
    """What the join ticket's ``ca`` part carries: never the CA key."""
    granted: dict[str, Any] = {
        "format": GRANT_FORMAT,
        "ca_certificate": pem.cert_pem(ca_certificate).decode("ascii"),
        "certificate": pem.cert_pem(certificate).decode("ascii"),
    }
    if key is not None:
        granted["key"] = pem.key_pem(key).decode("ascii")
    if crl is not None:
        granted["crl"] = crl.decode("ascii")
    return granted


@attrs.frozen
class Grant:
    """A checked grant: the CA certificate, this node's certificate and key, the CRL."""

    ca_certificate: x509.Certificate
    certificate: x509.Certificate
    key: pem.SigningKey = attrs.field(repr=False, eq=False)
    crl: bytes | None = None


def ca_certificate_of(granted: Mapping[str, Any]) -> x509.Certificate:
    """The CA certificate a grant carries (the joiner compares it with the one it pinned)."""
    if granted.get("format") != GRANT_FORMAT:
        raise TlsMaterialError(
            f"the join ticket's certificate is in format {granted.get('format')!r}, expected "
            f"{GRANT_FORMAT} (is the active running another hacore version?)"
        )
    text = granted.get("ca_certificate")
    if not isinstance(text, str):
        raise TlsMaterialError("the join ticket carries no CA certificate")
    return pem.parse_certificate(text.encode("ascii", errors="replace"), "the ticket's CA")


def accept_grant(
    granted: Mapping[str, Any], node_name: str, own_key: pem.SigningKey | None
) -> Grant:
    """The grant checked: the certificate is the CA's, names this node, is valid now, and
    belongs to the key it comes with (or to ``own_key``, the one this node requested it for)."""
    ca = ca_certificate_of(granted)
    text = granted.get("certificate")
    if not isinstance(text, str):
        raise TlsMaterialError("the join ticket carries no node certificate")
    cert = pem.parse_certificate(text.encode("ascii", errors="replace"), "the ticket's certificate")
    key = own_key
    if isinstance(granted.get("key"), str):
        key = pem.parse_key(str(granted["key"]).encode("ascii"), "the ticket's node key")
    if key is None:
        raise TlsMaterialError("the join ticket's certificate comes without its key")
    if not pem.key_matches(cert, key):
        raise TlsMaterialError("the join ticket's certificate is not for this node's key")
    problem = _why_not_valid(cert, ca, node_name)
    if problem is not None:
        raise TlsMaterialError(f"the join ticket's certificate is unusable: {problem}")
    crl = granted.get("crl")
    data = crl.encode("ascii") if isinstance(crl, str) else None
    if data is not None:
        revocation.parse_crl(data, ca)
    return Grant(ca, cert, key, data)


def _why_not_valid(cert: x509.Certificate, ca: x509.Certificate, node_name: str) -> str | None:
    if not issued_by(cert, ca):
        return "it was not signed by the cluster CA"
    if pem.common_name(cert) != node_name:
        return f"it names node {pem.common_name(cert)!r}"
    now = pem.now()
    if cert.not_valid_before_utc > now:
        return "it is not valid yet"
    if cert.not_valid_after_utc <= now:
        return f"it expired on {cert.not_valid_after_utc:%Y-%m-%d}"
    return None


def why_unusable(node: NodeCertificate, ca: x509.Certificate, node_name: str) -> str | None:
    """Why ``node`` cannot serve at all (not the CA's, another name, not valid now, revoked)."""
    problem = _why_not_valid(node.certificate, ca, node_name)
    if problem is not None:
        return problem
    try:
        local_ca = pem.read_certificate(node.ca_file)
    except TlsMaterialError as err:
        return str(err)
    if local_ca != ca:
        return f"{node.ca_file} is not the cluster CA"
    if revocation.is_revoked(node.certificate, revocation.crl_path(node.ca_file), ca):
        return "the cluster revoked it (the node was removed)"
    return None


def why_renew(node: NodeCertificate, hosts: Sequence[str]) -> str | None:
    """What a usable certificate lacks (an address, time): a warning, not a stop."""
    covered = set(node.hosts)
    missing = [str(n.value) for n in subject_names(hosts) if str(n.value) not in covered]
    if missing:
        return f"it does not cover {', '.join(missing)}"
    if pem.expires_within(node.certificate, RENEW_BEFORE):
        return f"it expires on {node.certificate.not_valid_after_utc:%Y-%m-%d}"
    return None


def store_grant_crl(grant: Grant, directory: Path) -> None:
    """The CRL of the grant beside the node certificate (servers refuse everyone without)."""
    if grant.crl is not None:
        revocation.install_crl(
            Path(directory) / revocation.CRL_FILE, grant.crl, grant.ca_certificate
        )
