"""What a removal takes away from the removed node: its certificates and the shared secrets it
knew (docs/security.md, "Removal revokes").

The store holds three things for it:

- ``pki/issued/<serial>``: every node certificate in use, registered by the agent that uses it
  (:func:`register_certificate`) with the node's name, so a removal finds the serials of the
  node it removes without that node's help (it may be down, or its disk stolen);
- ``pki/crl``: the CRL, signed by the cluster CA, that every agent copies to its node's
  ``crl.pem`` for PostgreSQL and etcd to check;
- ``secrets/replication``: the replication role's password once it has been rotated, which
  every agent puts in its database's passfile and uses for its next clone or rewind;
- ``secrets/failsafe`` and ``secrets/filesync``: the key the failsafe questions are signed
  with and the file sync's shared secret (rsync), once rotated (:class:`SharedSecret`): every
  agent copies the first to its data directory and gives the second to its file sync engine.

Revocation is by serial, not by name: the name may join again, with a new certificate.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterable
from typing import Any

import attrs
from cryptography import x509

from hacore.backends.consensus import ConsensusBackend
from hacore.backends.replication import ReplicationBackend
from hacore.errors import HacoreError, ReplicationError
from hacore.pki import pem, revocation
from hacore.pki.ca import CaMaterial

log = logging.getLogger(__name__)

ISSUED_PREFIX = "pki/issued/"
CRL_KEY = "pki/crl"
REPLICATION_SECRET_KEY = "secrets/replication"
_ATTEMPTS = 5


def issued_key(serial: int) -> str:
    return f"{ISSUED_PREFIX}{serial:x}"


def register_certificate(consensus: ConsensusBackend, node: str, cert: x509.Certificate) -> None:
    """Record that ``node`` uses ``cert`` (idempotent)."""
    key = issued_key(cert.serial_number)
    value = json.dumps({"node": node, "fingerprint": pem.fingerprint(cert)}).encode()
    current = consensus.get(key)
    if current is None or current.value != value:
        consensus.put(key, value)


def issued_serials(consensus: ConsensusBackend, node: str) -> tuple[int, ...]:
    """The serials registered for ``node``."""
    found = []
    for kv in consensus.get_prefix(ISSUED_PREFIX):
        try:
            owner = json.loads(kv.value).get("node")
            serial = int(kv.key.rsplit("/", 1)[-1], 16)
        except (ValueError, AttributeError):
            continue
        if owner == node:
            found.append(serial)
    return tuple(sorted(found))


def revoke_serials(
    consensus: ConsensusBackend, ca: CaMaterial, serials: Iterable[int]
) -> frozenset[int]:
    """Add ``serials`` to the store's CRL (compare-and-set, so two removals at once both
    land); the whole revoked set is returned."""
    wanted = frozenset(serials)
    for _ in range(_ATTEMPTS):
        current = consensus.get(CRL_KEY)
        already: frozenset[int] = frozenset()
        if current is not None:
            try:
                already = revocation.revoked_serials(current.value, ca.certificate)
            except HacoreError as err:
                log.warning("replacing an unusable revocation list in the store: %s", err)
        if wanted <= already and current is not None:
            return already
        revoked = already | wanted
        data = revocation.build_crl(ca, revoked)
        version = current.version if current is not None else 0
        if consensus.put(CRL_KEY, data, expect_version=version):
            return revoked
    raise HacoreError("the revocation list kept changing under this removal: run it again")


def revoke_node(consensus: ConsensusBackend, ca: CaMaterial, node: str) -> tuple[int, ...]:
    """Revoke every certificate registered for ``node`` and forget their registrations (a
    node joining again under the name registers its new certificate)."""
    serials = issued_serials(consensus, node)
    if serials:
        revoke_serials(consensus, ca, serials)
    for serial in serials:
        consensus.delete(issued_key(serial))
    log.info("revoked %d certificate(s) of %s", len(serials), node)
    return serials


def current_crl(consensus: ConsensusBackend) -> bytes | None:
    kv = consensus.get(CRL_KEY)
    return kv.value if kv is not None else None


@attrs.frozen
class ReplicationSecret:
    user: str
    password: str = attrs.field(repr=False)
    #: counts the rotations, so an agent tells a new secret from the one it applied
    generation: int = 0

    def encode(self) -> bytes:
        return json.dumps(attrs.asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes) -> ReplicationSecret:
        raw: dict[str, Any] = json.loads(data)
        return cls(str(raw["user"]), str(raw["password"]), int(raw.get("generation", 0)))


def replication_secret(consensus: ConsensusBackend) -> ReplicationSecret | None:
    """The rotated replication password, None while it was never rotated (the one in
    ``cluster.json`` holds)."""
    kv = consensus.get(REPLICATION_SECRET_KEY)
    if kv is None:
        return None
    try:
        return ReplicationSecret.decode(kv.value)
    except (ValueError, KeyError, TypeError) as err:
        raise HacoreError(f"the replication secret in the store is damaged: {err}") from None


FAILSAFE_KEY = "secrets/failsafe"
FILESYNC_SECRET_KEY = "secrets/filesync"


@attrs.frozen
class SharedSecret:
    """A secret every member holds, once a removal rotated it; ``generation`` counts the
    rotations, so an agent tells a new one from the one it applied."""

    value: str = attrs.field(repr=False)
    generation: int = 0

    def encode(self) -> bytes:
        return json.dumps(attrs.asdict(self)).encode()

    @classmethod
    def decode(cls, data: bytes) -> SharedSecret:
        raw: dict[str, Any] = json.loads(data)
        return cls(str(raw["value"]), int(raw.get("generation", 0)))


def shared_secret(consensus: ConsensusBackend, key: str) -> SharedSecret | None:
    """The rotated secret under ``key``, None while it was never rotated."""
    kv = consensus.get(key)
    if kv is None:
        return None
    try:
        return SharedSecret.decode(kv.value)
    except (ValueError, KeyError, TypeError) as err:
        raise HacoreError(f"the secret {key} in the store is damaged: {err}") from None


def rotate_shared_secret(consensus: ConsensusBackend, key: str, value: str) -> SharedSecret:
    """Store ``value`` as the next generation of the secret under ``key`` (compare-and-set:
    two removals at once both count)."""
    for _ in range(_ATTEMPTS):
        current = consensus.get(key)
        generation = 0
        if current is not None:
            try:
                generation = SharedSecret.decode(current.value).generation
            except (ValueError, KeyError, TypeError):
                generation = 0
        secret = SharedSecret(value, generation + 1)
        version = current.version if current is not None else 0
        if consensus.put(key, secret.encode(), expect_version=version):
            return secret
    raise HacoreError(f"the secret {key} kept changing under this removal")


def rotate_replication_password(
    consensus: ConsensusBackend, replication: ReplicationBackend, user: str
) -> ReplicationSecret:
    """A new replication password: in the store first (every member writes it to its
    passfile: a reconnect after the change logs in), then ``ALTER ROLE`` on this primary
    (standbys get the role's new verifier with the WAL; running streams are not cut)."""
    if not replication.rotates_password:
        raise ReplicationError("this replication backend cannot rotate its password")
    for _ in range(_ATTEMPTS):
        current = consensus.get(REPLICATION_SECRET_KEY)
        generation = 0
        if current is not None:
            try:
                generation = ReplicationSecret.decode(current.value).generation
            except (ValueError, KeyError, TypeError):
                generation = 0
        secret = ReplicationSecret(user, secrets.token_urlsafe(24), generation + 1)
        version = current.version if current is not None else 0
        if consensus.put(REPLICATION_SECRET_KEY, secret.encode(), expect_version=version):
            break
    else:
        raise HacoreError("the replication secret kept changing under this removal")
    replication.rotate_password(user, secret.password)
    log.info("rotated the replication password (generation %d)", secret.generation)
    return secret
