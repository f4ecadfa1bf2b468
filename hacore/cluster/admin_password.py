"""Changing the admin password: ``POST /cluster/admin-password`` on the active, and every
member following the new credential from the store.

The admin password does two things: it logs the admin in (each member keeps its hash in
``cluster.json``) and it seals the CA key in the store (hacore/pki/sealed_ca.py). A change
must move both without a moment where the CA key opens with no password the API accepts,
whatever step a crash interrupts. So, on the active, with the current password the request
presented:

1. the failsafe key is rotated (until a first removal it is derived from the password's
   hash, so members that took the new hash and members that did not yet would sign with
   different keys);
2. the CA key is sealed under **both** passwords (compare-and-set on the sealed key);
3. the new credential (the hash only) goes to the store under :data:`CREDENTIAL_KEY`
   (compare-and-set, with a generation), and the active takes it at once;
4. the CA key is sealed under the new password alone.

A crash after 2 leaves the old credential and a key both open: run the change again. After
3, the new credential and a key both open: run it again with the new password as the
current one, which finishes 4. Every member compares the store's credential with its own
every few seconds (:func:`follow`) and takes a new one into its ``cluster.json`` and its API.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import attrs

from hacore.agent import revocation_store as revoke
from hacore.agent import tls_paths
from hacore.agent.runtime import Agent
from hacore.api import admin_secret
from hacore.api.auth import hash_password, verify_password
from hacore.api.errors import AuthenticationError, BadRequestError, NotActiveError
from hacore.backends.consensus import ConsensusBackend
from hacore.cluster import ca_key, secret_rotation
from hacore.config.node import ApiAuth
from hacore.errors import HacoreError
from hacore.pki import sealed_ca
from hacore.pki.ca import CaMaterial
from hacore.pki.pem import read_certificate

log = logging.getLogger("hacore.cluster")

#: the admin credential every member follows (its hash only, never the password)
CREDENTIAL_KEY = "api/admin-credential"
#: a new admin password is at least this long
MIN_LENGTH = 12
#: seconds between two looks of a member at the store's credential
FOLLOW_INTERVAL = 3.0


@attrs.frozen
class AdminCredential:
    username: str
    password_hash: str = attrs.field(repr=False)
    generation: int

    def encode(self) -> bytes:
        return json.dumps(
            {
                "username": self.username,
                "password_hash": self.password_hash,
                "generation": self.generation,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> AdminCredential:
        try:
            raw = json.loads(data)
            return cls(str(raw["username"]), str(raw["password_hash"]), int(raw["generation"]))
        except (ValueError, KeyError, TypeError) as err:
            raise HacoreError(f"the admin credential in the store is damaged: {err}") from None


def check_new_password(current: str, new: object) -> str:
    """``new`` as a password, or a :class:`BadRequestError` saying why not (never the value)."""
    if not isinstance(new, str) or not new:
        raise BadRequestError('"new_password" must be a non-empty string')
    if len(new) < MIN_LENGTH:
        raise BadRequestError(
            f"the new admin password is too short: at least {MIN_LENGTH} characters"
        )
    if any(ord(c) < 32 or ord(c) == 127 for c in new):
        raise BadRequestError("the new admin password must not hold control characters")
    if new == current:
        raise BadRequestError("the new admin password is the current one")
    return new


def stored_credential(consensus: ConsensusBackend) -> tuple[AdminCredential | None, int]:
    found = consensus.get(CREDENTIAL_KEY)
    if found is None:
        return None, 0
    return AdminCredential.decode(found.value), found.version


def change(
    agent: Agent, auth: ApiAuth | None, current: str | None, body: dict[str, Any]
) -> tuple[dict[str, Any], AdminCredential]:
    """Steps 1-4 of the module's docstring on the active: the answer, which says what
    happened, and the new credential, which the caller (the node service) takes at once."""
    unknown = sorted(set(body) - {"new_password"})
    if unknown:
        raise BadRequestError(f'unknown field "{unknown[0]}" (only "new_password")')
    if not agent.snapshot().is_active:
        raise NotActiveError("the admin password is changed on the active node only")
    if auth is None or current is None or not verify_password(current, auth.password_hash):
        raise AuthenticationError("the current admin password is not the one given")
    new = check_new_password(current, body.get("new_password"))
    consensus = agent.consensus
    failsafe = _pin_failsafe_key(agent)
    sealed = _seal_under_both(agent, current, new)
    previous, version = stored_credential(consensus)
    generation = (previous.generation if previous is not None else 0) + 1
    credential = AdminCredential(auth.username, hash_password(new), generation)
    if not consensus.put(CREDENTIAL_KEY, credential.encode(), expect_version=version):
        raise HacoreError("the admin credential changed in the store at the same time: try again")
    log.info("the admin password changed (generation %d)", generation)
    resealed = _seal_under_new(consensus, sealed, new) if sealed is not None else None
    answer = {
        "changed": True,
        "generation": generation,
        "username": auth.username,
        "ca_key": resealed or "no CA key to reseal (tls.enabled is false)",
        "failsafe_key": failsafe,
        "members": f"every member takes the new password within {FOLLOW_INTERVAL:g} s",
    }
    return answer, credential


def _pin_failsafe_key(agent: Agent) -> str:
    files = tls_paths.tls_files(agent.config)
    to: secret_rotation.Recipients = None
    if files is not None:
        try:
            to = revoke.recipients(agent.consensus, read_certificate(files.ca_file))
        except HacoreError as err:
            log.warning("no member certificate to seal the failsafe key to: %s", err)
            to = ()
    return secret_rotation.rotate_failsafe_key(agent, to)


def _seal_under_both(agent: Agent, current: str, new: str) -> tuple[CaMaterial, int] | None:
    """Step 2: the CA (in memory) and the sealed key's store version, or None without TLS."""
    if not agent.config.tls.enabled:
        return None
    consensus = agent.consensus
    with admin_secret.presented(current):
        ca = ca_key.signing_ca(agent.config, consensus)
    found = consensus.get(ca_key.SEALED_KEY)
    if found is None:
        raise HacoreError("the store holds no sealed CA key: nothing changed, try again")
    both = sealed_ca.seal_under(ca, [current, new])
    if not consensus.put(ca_key.SEALED_KEY, both, expect_version=found.version):
        raise HacoreError("the sealed CA key changed in the store at the same time: try again")
    after = consensus.get(ca_key.SEALED_KEY)
    return ca, (after.version if after is not None else 0)


def _seal_under_new(consensus: ConsensusBackend, sealed: tuple[CaMaterial, int], new: str) -> str:
    """Step 4; a failure leaves both seals, which the next change (or run) replaces."""
    ca, version = sealed
    if not consensus.put(ca_key.SEALED_KEY, sealed_ca.seal(ca, new), expect_version=version):
        log.warning("the sealed CA key changed meanwhile: it may still open with the old password")
        return "sealed under both passwords (it changed meanwhile): run the change again"
    return "resealed under the new password"


def follow(consensus: ConsensusBackend, password_hash: str | None) -> AdminCredential | None:
    """The store's credential when it is not the one this member holds, else None."""
    credential, _ = stored_credential(consensus)
    if credential is None or credential.password_hash == password_hash:
        return None
    return credential


class Follower:
    """A member's look at the store's credential, every :data:`FOLLOW_INTERVAL` seconds."""

    def __init__(self) -> None:
        self._next = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + FOLLOW_INTERVAL
        return True
