"""A secret sealed to one member's certificate opens with that member's key only, for the
store key, generation and member it was sealed for, and not once altered (issue 10)."""

from __future__ import annotations

import base64
import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from hacore.pki import pem
from hacore.pki.sealed_secret import EC_SCHEME, RSA_SCHEME, SealError, seal, unseal

KEY = "secrets/replication"


def _certificate(key: pem.SigningKey | dsa.DSAPrivateKey, name: str = "b") -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC_CERT = _certificate(EC_KEY)
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_CERT = _certificate(RSA_KEY)
PAIRS = [(EC_KEY, EC_CERT, EC_SCHEME), (RSA_KEY, RSA_CERT, RSA_SCHEME)]


@settings(max_examples=25, deadline=None)
@given(
    value=st.binary(max_size=200),
    generation=st.integers(min_value=0, max_value=2**31),
    member=st.text(min_size=1, max_size=20),
    rsa_key=st.booleans(),
)
def test_a_sealed_value_opens_with_its_key(
    value: bytes, generation: int, member: str, rsa_key: bool
) -> None:
    key, cert, scheme = PAIRS[1] if rsa_key else PAIRS[0]
    blob = seal(value, cert, store_key=KEY, generation=generation, member=member)
    assert blob["scheme"] == scheme
    assert blob["fingerprint"] == pem.fingerprint(cert)
    opened = unseal(blob, key, store_key=KEY, generation=generation, member=member)
    assert opened == value


@pytest.mark.parametrize(("key", "cert", "scheme"), PAIRS)
def test_the_clear_value_is_not_in_the_blob(
    key: pem.SigningKey, cert: x509.Certificate, scheme: str
) -> None:
    value = b"the-rotated-password-0123456789"
    blob = seal(value, cert, store_key=KEY, generation=1, member="b")
    text = repr(blob).encode()
    assert value not in text
    assert base64.b64encode(value) not in text


@pytest.mark.parametrize(("key", "cert", "scheme"), PAIRS)
def test_another_key_does_not_open_it(
    key: pem.SigningKey, cert: x509.Certificate, scheme: str
) -> None:
    blob = seal(b"secret", cert, store_key=KEY, generation=1, member="b")
    other: pem.SigningKey
    if isinstance(key, ec.EllipticCurvePrivateKey):
        other = ec.generate_private_key(ec.SECP256R1())
    else:
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(SealError):
        unseal(blob, other, store_key=KEY, generation=1, member="b")
    # nor a key of the other kind
    wrong_kind = RSA_KEY if isinstance(key, ec.EllipticCurvePrivateKey) else EC_KEY
    with pytest.raises(SealError):
        unseal(blob, wrong_kind, store_key=KEY, generation=1, member="b")


@pytest.mark.parametrize(("key", "cert", "scheme"), PAIRS)
@pytest.mark.parametrize(
    "moved",
    [
        {"store_key": "secrets/failsafe", "generation": 1, "member": "b"},
        {"store_key": KEY, "generation": 2, "member": "b"},
        {"store_key": KEY, "generation": 1, "member": "c"},
    ],
    ids=["another-key", "another-generation", "another-member"],
)
def test_a_moved_copy_does_not_open(
    key: pem.SigningKey, cert: x509.Certificate, scheme: str, moved: dict[str, object]
) -> None:
    blob = seal(b"secret", cert, store_key=KEY, generation=1, member="b")
    assert unseal(blob, key, store_key=KEY, generation=1, member="b") == b"secret"
    with pytest.raises(SealError):
        unseal(blob, key, **moved)  # type: ignore[arg-type]


#: what each scheme's copy carries that the key must open intact
TAMPERED = [
    pytest.param(key, cert, field, id=f"{scheme}-{field}")
    for key, cert, scheme in PAIRS
    for field in ("ciphertext", "nonce", "ephemeral" if scheme == EC_SCHEME else "wrapped")
]


@pytest.mark.parametrize(("key", "cert", "field"), TAMPERED)
def test_a_tampered_copy_does_not_open(
    key: pem.SigningKey, cert: x509.Certificate, field: str
) -> None:
    blob = seal(b"secret", cert, store_key=KEY, generation=1, member="b")
    assert field in blob, blob
    raw = bytearray(base64.b64decode(blob[field]))
    raw[-1] ^= 0x01
    tampered = {**blob, field: base64.b64encode(bytes(raw)).decode()}
    with pytest.raises(SealError):
        unseal(tampered, key, store_key=KEY, generation=1, member="b")
    with pytest.raises(SealError):
        unseal({**blob, field: "not base64!"}, key, store_key=KEY, generation=1, member="b")


def test_a_certificate_with_another_key_type_is_refused() -> None:
    key = dsa.generate_private_key(key_size=2048)
    with pytest.raises(SealError, match="EC or RSA"):
        seal(b"secret", _certificate(key), store_key=KEY, generation=1, member="b")
