"""A secret sealed to one member's certificate, so that the store holds no secret in clear.

Whoever reads the store (a removed node whose open connection the CRL does not cut, a backup
of the store, an external store's admin) learns nothing from a sealed copy: only the holder of
the certificate's private key opens it. Node keys are EC P-256 (:func:`hacore.pki.pem.new_key`):
an ephemeral ECDH key on the same curve, HKDF-SHA256 and AES-256-GCM. An RSA certificate
(brought by an admin) gets a random AES-256-GCM key wrapped with RSA-OAEP-SHA256.

The associated data binds a copy to the store key, the generation and the member's name: a
copy moved to another key, replayed as another generation or handed to another member's name
does not open.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hacore.errors import HacoreError
from hacore.pki import pem

EC_SCHEME = "ecdh-hkdf-sha256-aes256gcm"
RSA_SCHEME = "rsa-oaep-sha256-aes256gcm"
_INFO = b"hacore sealed secret v1"
_NONCE = 12


class SealError(HacoreError):
    """A sealed copy does not open with this key (not ours, moved, or tampered with)."""


def associated_data(store_key: str, generation: int, member: str) -> bytes:
    fields = {"key": store_key, "generation": generation, "member": member}
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(blob: Mapping[str, Any], field: str) -> bytes:
    try:
        return base64.b64decode(str(blob[field]), validate=True)
    except (KeyError, ValueError) as err:
        raise SealError(f"the sealed copy has no readable {field!r}") from err


def _derive(shared: bytes, aad: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO + aad).derive(shared)


def seal(
    value: bytes, certificate: x509.Certificate, *, store_key: str, generation: int, member: str
) -> dict[str, str]:
    """``value`` sealed to ``certificate``'s public key (JSON-ready)."""
    aad = associated_data(store_key, generation, member)
    nonce = os.urandom(_NONCE)
    public = certificate.public_key()
    blob = {"fingerprint": pem.fingerprint(certificate), "nonce": _b64(nonce)}
    if isinstance(public, ec.EllipticCurvePublicKey):
        ephemeral = ec.generate_private_key(public.curve)
        key = _derive(ephemeral.exchange(ec.ECDH(), public), aad)
        point = ephemeral.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        blob.update(scheme=EC_SCHEME, ephemeral=_b64(point))
    elif isinstance(public, rsa.RSAPublicKey):
        key = AESGCM.generate_key(bit_length=256)
        blob.update(scheme=RSA_SCHEME, wrapped=_b64(public.encrypt(key, _oaep())))
    else:
        raise SealError(
            f"cannot seal to a certificate with a {type(public).__name__} key: node "
            "certificates must have an EC or RSA key"
        )
    blob["ciphertext"] = _b64(AESGCM(key).encrypt(nonce, value, aad))
    return blob


def unseal(
    blob: Mapping[str, Any],
    private_key: pem.SigningKey,
    *,
    store_key: str,
    generation: int,
    member: str,
) -> bytes:
    """The value in ``blob``; :class:`SealError` when it does not open (another key, another
    key/generation/member than it was sealed for, or altered)."""
    aad = associated_data(store_key, generation, member)
    scheme = blob.get("scheme")
    try:
        if scheme == EC_SCHEME and isinstance(private_key, ec.EllipticCurvePrivateKey):
            point = ec.EllipticCurvePublicKey.from_encoded_point(
                private_key.curve, _unb64(blob, "ephemeral")
            )
            key = _derive(private_key.exchange(ec.ECDH(), point), aad)
        elif scheme == RSA_SCHEME and isinstance(private_key, rsa.RSAPrivateKey):
            key = private_key.decrypt(_unb64(blob, "wrapped"), _oaep())
        else:
            raise SealError(f"a copy sealed with {scheme!r} does not open with this node's key")
        return AESGCM(key).decrypt(_unb64(blob, "nonce"), _unb64(blob, "ciphertext"), aad)
    except (InvalidTag, ValueError) as err:
        raise SealError(
            "the sealed copy does not open: sealed to another key, for another secret or "
            "member, or altered"
        ) from err


def _oaep() -> padding.OAEP:
    return padding.OAEP(
        mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
    )
