"""PEM encoding, key generation and the checks every loader applies to a certificate and key."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from hacore.pki.errors import TlsMaterialError

#: The key types hacore can sign with and every server it talks to accepts.
SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


def new_key() -> ec.EllipticCurvePrivateKey:
    """P-256: as strong as RSA 3072, generated in a millisecond, and accepted by OpenSSL
    (PostgreSQL, HAProxy), Go (etcd, Consul, Syncthing) and Java (ZooKeeper)."""
    return ec.generate_private_key(ec.SECP256R1())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: SigningKey) -> bytes:
    """Unencrypted PKCS#8, the one private-key form every server here reads without a prompt."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def parse_certificate(data: bytes, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise TlsMaterialError(f"{what} is not a PEM certificate") from None


def parse_key(data: bytes, what: str) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise TlsMaterialError(f"{what} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise TlsMaterialError(f"{what} is a {type(key).__name__}; hacore needs an EC or RSA key")
    return key


def read_certificate(path: Path) -> x509.Certificate:
    return parse_certificate(_read(path), str(path))


def read_key(path: Path) -> SigningKey:
    return parse_key(_read(path), str(path))


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise TlsMaterialError(f"cannot read {path}: {err.strerror}") from err


def key_matches(cert: x509.Certificate, key: SigningKey) -> bool:
    return cert.public_key() == key.public_key()


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate, as ``openssl x509 -fingerprint -sha256`` prints it.

    The one way to name a certificate in logs: public, short, and comparable by an operator.
    """
    return ":".join(f"{byte:02X}" for byte in cert.fingerprint(hashes.SHA256()))


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def expires_within(cert: x509.Certificate, delta: datetime.timedelta) -> bool:
    return cert.not_valid_after_utc - now() < delta


def common_name(cert: x509.Certificate) -> str | None:
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if not names:
        return None
    value = names[0].value
    return value if isinstance(value, str) else value.decode()
