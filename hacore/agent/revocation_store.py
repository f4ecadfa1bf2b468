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

A rotated secret is never in the store in clear: its record holds one copy per member, sealed
to that member's certificate (:mod:`hacore.pki.sealed_secret`), and each agent opens its own
copy with its node key. A removed node still reading the store (the CRL reaches the store
servers within seconds, and they check it only on new connections) finds no copy it can open.
The members sealed to (:func:`recipients`) are those with a certificate of the cluster CA,
not revoked, naming them: registered in ``pki/issued`` (so a member that is down is sealed to
as well) or on a believed member record. A member that joins after a rotation gets a copy from
the active's agent once its certificate is registered (:func:`add_copies`). A record in clear,
written by an older version during a rolling upgrade or by a cluster without TLS (no node key
to seal to), is still read, with a warning.

Revocation is by serial, not by name: the name may join again, with a new certificate.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs
from cryptography import x509

from hacore.agent import keys
from hacore.backends.consensus import ConsensusBackend
from hacore.backends.records import TlsFiles
from hacore.backends.replication import ReplicationBackend
from hacore.errors import HacoreError, ReplicationError
from hacore.pki import pem, record_identity, revocation, sealed_secret
from hacore.pki.ca import CaMaterial
from hacore.pki.certs import NodeCertificate

log = logging.getLogger(__name__)

ISSUED_PREFIX = "pki/issued/"
CRL_KEY = "pki/crl"
_ATTEMPTS = 5


def issued_key(serial: int) -> str:
    return f"{ISSUED_PREFIX}{serial:x}"


def register_certificate(consensus: ConsensusBackend, node: str, cert: x509.Certificate) -> None:
    """Record that ``node`` uses ``cert`` (idempotent); the certificate itself is kept for the
    rotations to seal the secrets to."""
    key = issued_key(cert.serial_number)
    value = json.dumps(
        {
            "node": node,
            "fingerprint": pem.fingerprint(cert),
            "certificate": pem.cert_pem(cert).decode("ascii"),
        }
    ).encode()
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


REPLICATION_SECRET_KEY = "secrets/replication"
FAILSAFE_KEY = "secrets/failsafe"
FILESYNC_SECRET_KEY = "secrets/filesync"
#: the ``format`` of a record holding sealed copies (a record without it is in clear)
SEALED_FORMAT = "sealed-v1"


@attrs.frozen
class Recipient:
    """A member a rotated secret is sealed to, by its certificate."""

    member: str
    certificate: x509.Certificate = attrs.field(eq=False)

    @property
    def fingerprint(self) -> str:
        return pem.fingerprint(self.certificate)


@attrs.frozen
class Opener:
    """This node's name and node key, to open its own sealed copies."""

    member: str
    node: NodeCertificate


class NoCopyForThisNode(HacoreError):
    """The record holds no copy sealed to this node's certificate (yet)."""


def opener_for(name: str, tls: TlsFiles | None) -> Opener | None:
    """``name``'s opener from its node material, None without TLS (nothing is sealed then)."""
    if tls is None:
        return None
    return Opener(name, record_identity.node_material(tls.cert_file.parent))


def why_not_sealable(
    name: str, cert: x509.Certificate, ca: x509.Certificate, revoked: frozenset[int]
) -> str | None:
    """None when a secret may be sealed to ``cert`` for ``name``: the same rule as for a
    member record (only ``name``'s key opens the copy)."""
    return record_identity.certificate_problem(cert, name, ca, revoked)


def _store_revoked(consensus: ConsensusBackend, ca: x509.Certificate) -> frozenset[int]:
    data = current_crl(consensus)
    return revocation.revoked_serials(data, ca) if data is not None else frozenset()


def _candidates(consensus: ConsensusBackend, ca: x509.Certificate) -> list[tuple[str, bytes]]:
    found: list[tuple[str, bytes]] = []
    for kv in consensus.get_prefix(ISSUED_PREFIX):
        try:
            raw = json.loads(kv.value)
            found.append((str(raw["node"]), str(raw["certificate"]).encode("ascii")))
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeError):
            continue
    for member in consensus.members():
        if record_identity.why_not_believed(
            member.name, member.host, member.api_url, member.extra, ca, frozenset()
        ):
            continue
        identity = member.extra[record_identity.IDENTITY]
        found.append((member.name, str(identity["certificate"]).encode("ascii")))
    return found


def recipients(
    consensus: ConsensusBackend, ca: x509.Certificate, *, leaving: Iterable[str] = ()
) -> tuple[Recipient, ...]:
    """Every certificate the rotated secrets are sealed to: registered in ``pki/issued`` or on
    a believed member record, checked by :func:`why_not_sealable` against the store's CRL; none
    of a node in ``leaving`` or marked removed."""
    revoked = _store_revoked(consensus, ca)
    removed = keys.removed_names(tuple(kv.key for kv in consensus.get_prefix(keys.REMOVED_PREFIX)))
    excluded = removed | frozenset(leaving)
    chosen: dict[str, Recipient] = {}
    for name, data in _candidates(consensus, ca):
        if name in excluded:
            continue
        try:
            cert = pem.parse_certificate(data, f"the certificate of {name}")
        except HacoreError:
            continue
        reason = why_not_sealable(name, cert, ca, revoked)
        if reason is not None:
            log.debug("not sealing to a certificate of %s: %s", name, reason)
            continue
        chosen.setdefault(pem.fingerprint(cert), Recipient(name, cert))
    return tuple(sorted(chosen.values(), key=lambda r: (r.member, r.fingerprint)))


def _sealed_record(
    store_key: str,
    generation: int,
    value: str,
    to: Sequence[Recipient],
    fields: Mapping[str, Any],
) -> bytes:
    copies = [
        {
            "member": r.member,
            **sealed_secret.seal(
                value.encode(),
                r.certificate,
                store_key=store_key,
                generation=generation,
                member=r.member,
            ),
        }
        for r in to
    ]
    record = {"format": SEALED_FORMAT, "generation": generation, **fields, "copies": copies}
    return json.dumps(record).encode()


_warned_clear: set[str] = set()


def _open(store_key: str, raw: Mapping[str, Any], field: str, opener: Opener | None) -> str:
    """The value of a decoded record: this node's sealed copy opened, or an old clear one."""
    if raw.get("format") != SEALED_FORMAT:
        if store_key not in _warned_clear:
            _warned_clear.add(store_key)
            log.warning(
                "the secret %s is in clear in the store (written by an older hacore or a "
                "cluster without TLS): the next removal seals it to each member",
                store_key,
            )
        return str(raw[field])
    if opener is None:
        raise HacoreError(f"the secret {store_key} is sealed, and this node has no node key")
    generation = int(raw["generation"])
    mine = opener.node.fingerprint
    for copy in raw.get("copies") or ():
        if isinstance(copy, Mapping) and copy.get("fingerprint") == mine:
            member = str(copy.get("member", ""))
            if member != opener.member:
                raise sealed_secret.SealError(
                    f"the copy of {store_key} for this node's certificate is marked {member!r}"
                )
            data = sealed_secret.unseal(
                copy,
                opener.node.key,
                store_key=store_key,
                generation=generation,
                member=opener.member,
            )
            return data.decode()
    raise NoCopyForThisNode(
        f"the secret {store_key} (generation {generation}) has no copy sealed to this node's "
        "certificate yet: the active's agent adds one once the certificate is registered"
    )


def _decode(store_key: str, data: bytes) -> dict[str, Any]:
    try:
        raw = json.loads(data)
    except ValueError as err:
        raise HacoreError(f"the secret {store_key} in the store is damaged: {err}") from None
    if not isinstance(raw, dict):
        raise HacoreError(f"the secret {store_key} in the store is damaged: not an object")
    return raw


def _generation(data: bytes | None) -> int:
    if data is None:
        return 0
    try:
        return int(json.loads(data).get("generation", 0))
    except (ValueError, TypeError, AttributeError):
        return 0


@attrs.frozen
class ReplicationSecret:
    user: str
    password: str = attrs.field(repr=False)
    #: counts the rotations, so an agent tells a new secret from the one it applied
    generation: int = 0

    def encode(self) -> bytes:
        """The record in clear, as older versions (and clusters without TLS) write it."""
        return json.dumps(attrs.asdict(self)).encode()


def replication_secret(
    consensus: ConsensusBackend, opener: Opener | None
) -> ReplicationSecret | None:
    """The rotated replication password, None while it was never rotated (the one in
    ``cluster.json`` holds)."""
    kv = consensus.get(REPLICATION_SECRET_KEY)
    if kv is None:
        return None
    raw = _decode(REPLICATION_SECRET_KEY, kv.value)
    try:
        password = _open(REPLICATION_SECRET_KEY, raw, "password", opener)
        return ReplicationSecret(str(raw["user"]), password, int(raw.get("generation", 0)))
    except (KeyError, TypeError, ValueError) as err:
        raise HacoreError(f"the replication secret in the store is damaged: {err}") from None


@attrs.frozen
class SharedSecret:
    """A secret every member holds, once a removal rotated it; ``generation`` counts the
    rotations, so an agent tells a new one from the one it applied."""

    value: str = attrs.field(repr=False)
    generation: int = 0

    def encode(self) -> bytes:
        """The record in clear, as older versions (and clusters without TLS) write it."""
        return json.dumps(attrs.asdict(self)).encode()


def shared_secret(
    consensus: ConsensusBackend, key: str, opener: Opener | None
) -> SharedSecret | None:
    """The rotated secret under ``key``, None while it was never rotated."""
    kv = consensus.get(key)
    if kv is None:
        return None
    raw = _decode(key, kv.value)
    try:
        return SharedSecret(_open(key, raw, "value", opener), int(raw.get("generation", 0)))
    except (KeyError, TypeError, ValueError) as err:
        raise HacoreError(f"the secret {key} in the store is damaged: {err}") from None


def _rotate(
    consensus: ConsensusBackend,
    key: str,
    value: str,
    to: Sequence[Recipient] | None,
    fields: Mapping[str, Any],
    clear: Callable[[int], bytes],
) -> int:
    """Store ``value`` as the next generation under ``key`` (compare-and-set: two removals at
    once both count): sealed to ``to``, or in clear (``clear(generation)``) when ``to`` is None
    (no TLS, no node keys); the generation written."""
    if to is not None and not to:
        raise HacoreError(f"no member certificate to seal {key} to: not rotated")
    for _ in range(_ATTEMPTS):
        current = consensus.get(key)
        generation = _generation(current.value if current is not None else None) + 1
        if to is None:
            data = clear(generation)
        else:
            data = _sealed_record(key, generation, value, to, fields)
        version = current.version if current is not None else 0
        if consensus.put(key, data, expect_version=version):
            return generation
    raise HacoreError(f"the secret {key} kept changing under this removal")


def rotate_shared_secret(
    consensus: ConsensusBackend, key: str, value: str, to: Sequence[Recipient] | None
) -> SharedSecret:
    """Store ``value`` as the next generation of the secret under ``key``, sealed to each of
    ``to`` (None: in clear, for a cluster without TLS)."""
    generation = _rotate(consensus, key, value, to, {}, lambda g: SharedSecret(value, g).encode())
    return SharedSecret(value, generation)


def rotate_replication_password(
    consensus: ConsensusBackend,
    replication: ReplicationBackend,
    user: str,
    to: Sequence[Recipient] | None,
) -> ReplicationSecret:
    """A new replication password: in the store first, sealed to each of ``to`` (None: in
    clear, for a cluster without TLS; every member writes it to its passfile: a reconnect
    after the change logs in), then ``ALTER ROLE`` on this primary (standbys get the role's
    new verifier with the WAL; running streams are not cut)."""
    if not replication.rotates_password:
        raise ReplicationError("this replication backend cannot rotate its password")
    password = secrets.token_urlsafe(24)
    generation = _rotate(
        consensus,
        REPLICATION_SECRET_KEY,
        password,
        to,
        {"user": user},
        lambda g: ReplicationSecret(user, password, g).encode(),
    )
    secret = ReplicationSecret(user, password, generation)
    replication.rotate_password(user, secret.password)
    log.info("rotated the replication password (generation %d)", secret.generation)
    return secret


def add_copies(
    consensus: ConsensusBackend, key: str, value: str, generation: int, to: Sequence[Recipient]
) -> tuple[str, ...]:
    """Seal ``value`` (generation ``generation`` of ``key``, opened by this member) to each
    of ``to`` that has no copy yet: a member that joined, or renewed its certificate, after
    the rotation. Nothing when the record is in clear or has moved to another generation;
    the names sealed to."""
    current = consensus.get(key)
    if current is None:
        return ()
    raw = _decode(key, current.value)
    if raw.get("format") != SEALED_FORMAT or int(raw.get("generation", -1)) != generation:
        return ()
    copies = [c for c in raw.get("copies") or () if isinstance(c, Mapping)]
    have = {c.get("fingerprint") for c in copies}
    missing = [r for r in to if r.fingerprint not in have]
    if not missing:
        return ()
    for r in missing:
        sealed = sealed_secret.seal(
            value.encode(), r.certificate, store_key=key, generation=generation, member=r.member
        )
        copies.append({"member": r.member, **sealed})
    raw["copies"] = copies
    if not consensus.put(key, json.dumps(raw).encode(), expect_version=current.version):
        return ()
    names = tuple(sorted({r.member for r in missing}))
    log.info("sealed %s (generation %d) to %s", key, generation, ", ".join(names))
    return names
