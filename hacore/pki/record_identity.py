"""Member records signed by the node they describe, so that whoever can write to the store
cannot make the members let a host into the database or the file sync.

An agent with TLS adds ``extra["identity"]`` to its record: its node certificate and a
signature, with its node key, over the fields others act on (name, host, API URL, the
replication address and the file-sync identity). A reader believes the record when the
certificate was signed by the cluster CA, is not revoked, names the record's node and the
signature matches; only believed records become ``pg_hba`` rows and file-sync peers.
The rest (role, health, position) is not signed: members trust each other with it, and the
store itself refuses a removed node's certificate.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from hacore.pki import pem
from hacore.pki.certs import (
    NODE_CERT,
    NODE_KEY,
    NodeCertificate,
    issued_by,
    load_node_certificate,
)
from hacore.pki.errors import TlsMaterialError

IDENTITY = "identity"
#: what is signed of ``extra``
SIGNED_EXTRA = ("replication", "filesync")


def payload(name: str, host: str, api_url: str, extra: Mapping[str, Any]) -> bytes:
    fields = {
        "name": name,
        "host": host,
        "api_url": api_url,
        **{key: extra.get(key) for key in SIGNED_EXTRA},
    }
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def sign(
    cert: x509.Certificate,
    key: pem.SigningKey,
    name: str,
    host: str,
    api_url: str,
    extra: Mapping[str, Any],
) -> dict[str, str]:
    data = payload(name, host, api_url, extra)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        signature = key.sign(data, ec.ECDSA(hashes.SHA256()))
    else:
        signature = key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return {
        "certificate": pem.cert_pem(cert).decode("ascii"),
        "signature": base64.b64encode(signature).decode("ascii"),
    }


def certificate_problem(
    cert: x509.Certificate, name: str, ca: x509.Certificate, revoked: frozenset[int]
) -> str | None:
    """What keeps ``cert`` from speaking for node ``name`` ("is revoked", "names 'x'"...):
    not from the cluster CA, revoked, not valid now, or naming another node; None when
    nothing does."""
    if not issued_by(cert, ca):
        return "is not from the cluster CA"
    if cert.serial_number in revoked:
        return "is revoked"
    now = pem.now()
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        return "is not valid now"
    if pem.common_name(cert) != name:
        return f"names {pem.common_name(cert)!r}"
    return None


def why_not_believed(
    name: str,
    host: str,
    api_url: str,
    extra: Mapping[str, Any],
    ca: x509.Certificate,
    revoked: frozenset[int],
) -> str | None:
    """None when the record of ``name`` is signed by a valid, unrevoked certificate of the
    cluster CA naming ``name``; else why not."""
    identity = extra.get(IDENTITY)
    if not isinstance(identity, Mapping):
        return "the record is not signed"
    try:
        cert = pem.parse_certificate(
            str(identity.get("certificate", "")).encode("ascii", errors="replace"),
            "the record's certificate",
        )
        signature = base64.b64decode(str(identity.get("signature", "")), validate=True)
    except (TlsMaterialError, ValueError):
        return "the record's certificate or signature is unreadable"
    problem = certificate_problem(cert, name, ca, revoked)
    if problem is not None:
        return f"the record's certificate {problem}"
    public = cert.public_key()
    data = payload(name, host, api_url, extra)
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            return "the record's certificate has an unsupported key"
    except InvalidSignature:
        return "the record's signature does not match it"
    return None


_loaded: dict[str, tuple[int, int, NodeCertificate]] = {}


def node_material(directory: Path) -> NodeCertificate:
    """The node certificate and key in ``directory``, read again only when they change (the
    loop signs its record every round)."""
    cert_file, key_file = Path(directory) / NODE_CERT, Path(directory) / NODE_KEY
    try:
        stamp = (cert_file.stat().st_mtime_ns, key_file.stat().st_mtime_ns)
    except OSError as err:
        raise TlsMaterialError(f"cannot read the node material in {directory}: {err}") from None
    cached = _loaded.get(str(directory))
    if cached is not None and cached[:2] == stamp:
        return cached[2]
    node = load_node_certificate(directory)
    _loaded[str(directory)] = (*stamp, node)
    return node
