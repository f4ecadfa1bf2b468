"""The CA key sealed under the cluster's admin password, so no member holds it in usable form.

Whoever holds the CA key can mint a certificate that every server of the cluster accepts,
under any name and with a serial no CRL lists; a removed node (or a stolen disk or backup)
that kept it would undo every revocation. So the key is kept only encrypted: AES-256-GCM
under a key derived from the admin password with PBKDF2-HMAC-SHA256 (as many rounds as the
API's own password hash, so the sealed key is no easier to attack than the hash every member
holds), bound to the CA certificate's fingerprint (the associated data) so a sealed key
cannot be passed off as another CA's. The operations that need the key are the admin's
(a join, a join token, a removal): the node unseals it in memory for that request with the
password the admin presented, and drops it.

An admin password change (hacore/cluster/admin_password.py) first seals the key under both
passwords (:func:`seal_under`: the extra ones under ``also``), then changes the credential,
then keeps only the new seal: a crash at any point leaves a key that the password the API
accepts at that moment still opens.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

from hacore.pki import pem
from hacore.pki.ca import CaMaterial, check_ca
from hacore.pki.errors import TlsMaterialError

FORMAT = "hacore-sealed-ca/1"
#: as many as hacore.api.auth.DEFAULT_ITERATIONS: one guess costs what a guess at the hash does
ITERATIONS = 600_000


def _derive(password: str, salt: bytes, iterations: int) -> bytes:
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=salt, iterations=iterations)
    return kdf.derive(password.encode("utf-8"))


def _associated(fingerprint: str) -> bytes:
    return f"{FORMAT} {fingerprint}".encode()


def _one_seal(ca: CaMaterial, password: str, iterations: int) -> dict[str, Any]:
    if not password:
        raise TlsMaterialError("the CA key cannot be sealed under an empty password")
    salt, nonce = os.urandom(16), os.urandom(12)
    der = ca.key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    sealed = AESGCM(_derive(password, salt, iterations)).encrypt(
        nonce, der, _associated(ca.fingerprint)
    )
    return {
        "kdf": "pbkdf2-sha256",
        "iterations": iterations,
        "salt": base64.b64encode(salt).decode(),
        "nonce": base64.b64encode(nonce).decode(),
        "sealed_key": base64.b64encode(sealed).decode(),
    }


def seal(ca: CaMaterial, password: str, *, iterations: int = ITERATIONS) -> bytes:
    """``ca``'s key encrypted under ``password``, as JSON bytes (safe to store anywhere)."""
    return seal_under(ca, [password], iterations=iterations)


def seal_under(ca: CaMaterial, passwords: Sequence[str], *, iterations: int = ITERATIONS) -> bytes:
    """``ca``'s key sealed under each of ``passwords`` (the first as in :func:`seal`, the
    others in ``also``); any one of them opens it."""
    if not passwords:
        raise TlsMaterialError("the CA key cannot be sealed under no password")
    first, *others = passwords
    record: dict[str, Any] = {
        "format": FORMAT,
        "ca_fingerprint": ca.fingerprint,
        **_one_seal(ca, first, iterations),
    }
    if others:
        record["also"] = [_one_seal(ca, password, iterations) for password in others]
    return json.dumps(record, sort_keys=True).encode()


def seal_count(data: bytes) -> int:
    """How many passwords open the sealed key (2 only half-way through a password change)."""
    also = _parse(data).get("also")
    return 1 + (len(also) if isinstance(also, list) else 0)


def _parse(data: bytes) -> dict[str, Any]:
    try:
        raw = json.loads(data)
    except ValueError:
        raise TlsMaterialError("the sealed CA key is not JSON") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise TlsMaterialError(f"the sealed CA key is not in format {FORMAT}")
    return raw


def sealed_for(data: bytes) -> str:
    """The fingerprint of the CA certificate the sealed key says it belongs to."""
    return str(_parse(data).get("ca_fingerprint", ""))


def unseal(data: bytes, password: str, ca_certificate: x509.Certificate) -> CaMaterial:
    """The CA (certificate and key) in memory; :class:`TlsMaterialError` when ``password``
    does not open it or it is not the key of ``ca_certificate``."""
    raw = _parse(data)
    fingerprint = pem.fingerprint(ca_certificate)
    if raw.get("ca_fingerprint") != fingerprint:
        raise TlsMaterialError("the sealed CA key belongs to another CA")
    also = raw.get("also")
    candidates = [raw, *(also if isinstance(also, list) else [])]
    der = None
    for candidate in candidates:
        if not isinstance(candidate, dict):
            raise TlsMaterialError("the sealed CA key is damaged")
        der = _open(candidate, password, fingerprint)
        if der is not None:
            break
    if der is None:
        raise TlsMaterialError("the admin password does not open the sealed CA key")
    key = serialization.load_der_private_key(der, password=None)
    if not isinstance(key, pem.SigningKey):
        raise TlsMaterialError("the sealed CA key is of an unsupported type")
    ca = CaMaterial(ca_certificate, key)
    check_ca(ca, "the sealed CA key")
    return ca


def _open(raw: dict[str, Any], password: str, fingerprint: str) -> bytes | None:
    """The key's DER from one seal, None when ``password`` does not open it."""
    try:
        salt = base64.b64decode(str(raw["salt"]), validate=True)
        nonce = base64.b64decode(str(raw["nonce"]), validate=True)
        sealed = base64.b64decode(str(raw["sealed_key"]), validate=True)
        iterations = int(raw["iterations"])
    except (KeyError, ValueError, TypeError):
        raise TlsMaterialError("the sealed CA key is damaged") from None
    if not 100_000 <= iterations <= 10_000_000:
        raise TlsMaterialError(f"the sealed CA key asks for {iterations} rounds")
    try:
        return AESGCM(_derive(password, salt, iterations)).decrypt(
            nonce, sealed, _associated(fingerprint)
        )
    except InvalidTag:
        return None


def reseal(data: bytes, old: str, new: str, ca_certificate: x509.Certificate) -> bytes:
    """The same key sealed under ``new`` (an admin password change)."""
    return seal(unseal(data, old, ca_certificate), new)
