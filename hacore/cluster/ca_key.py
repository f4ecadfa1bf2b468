"""Where the cluster's CA key is, and how an admin operation gets it for one request.

No member keeps the CA key in the clear (docs/security.md, "The CA key: sealed in the
store"). The store holds it sealed under the admin password (:data:`SEALED_KEY`,
hacore/pki/sealed_ca.py); an operation that signs (a join ticket, a join token, a removal's
CRL) unseals it in memory with the password its admin request presented
(:mod:`hacore.api.admin_secret`) and drops it when the request ends.

The clear ``pki/ca/ca.key`` still exists in two cases, and goes away by itself:

- during ``cluster start``, until the node is active: the node service keeps the start's
  password in memory and seals the key into the store when the start is done
  (:func:`seal_clear_key`);
- on the members of a cluster made by an earlier release: the first admin operation on
  the active that needs the key seals it into the store, and every member deletes its
  clear copy once the store holds the sealed one (:func:`drop_clear_key`, from the node
  service's monitor).

A join by single-use token has no admin password at ticket time: the active issues the
node's certificate when the admin asks for the token (:func:`issue_for_token`), keeps it in
the store encrypted under the token itself (only its SHA-256 is in the store), registered
under the node's name so a removal of that name revokes it, and hands it out once, with the
ticket (:func:`take_for_token`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hacore import pki
from hacore.agent import revocation_store
from hacore.agent.tls_paths import ca_dir
from hacore.api import admin_secret
from hacore.api.errors import AuthenticationError, UnavailableError
from hacore.backends.consensus import ConsensusBackend
from hacore.config.node import NodeConfig
from hacore.errors import HacoreError
from hacore.pki import pem, sealed_ca
from hacore.pki.certs import sign_node_certificate

log = logging.getLogger(__name__)

#: the CA key sealed under the admin password (hacore/pki/sealed_ca.py)
SEALED_KEY = "pki/ca-key"
#: a token join's certificate and key, the key encrypted under the token
JOIN_CERT_PREFIX = "pki/join-certificates/"


def clear_key_file(data_dir: Path) -> Path:
    return ca_dir(data_dir) / pki.CA_KEY


def ca_certificate(config: NodeConfig) -> x509.Certificate:
    try:
        return pki.load_ca_certificate(ca_dir(config.node.data_dir) / pki.CA_CERT)
    except pki.TlsMaterialError as err:
        raise UnavailableError(f"this node has no usable cluster CA certificate: {err}") from None


def signing_ca(config: NodeConfig, consensus: ConsensusBackend) -> pki.CaMaterial:
    """The CA with its key, for the admin request being served (never kept)."""
    password = admin_secret.current()
    clear = clear_key_file(config.node.data_dir)
    if clear.exists():
        # a start not sealed yet, or a cluster of an earlier release: seal it now
        ca = pki.load_ca(clear.parent)
        if password:
            _seal_into_store(consensus, ca, password)
            _delete_clear(clear)
        return ca
    found = consensus.get(SEALED_KEY)
    if found is None:
        raise UnavailableError(
            "this node holds no CA key and the store holds no sealed one: restore "
            f"{clear} from a member that still has it, or build the cluster anew"
        )
    if not password:
        raise AuthenticationError(
            "this operation signs with the cluster CA's key, which only the admin password "
            "unseals: run it with the admin's credentials"
        )
    try:
        return sealed_ca.unseal(found.value, password, ca_certificate(config))
    except pki.TlsMaterialError as err:
        raise UnavailableError(f"the cluster CA key cannot be unsealed: {err}") from None


def seal_clear_key(config: NodeConfig, consensus: ConsensusBackend, password: str) -> bool:
    """After ``cluster start``: the clear CA key into the store, sealed, and off the disk."""
    clear = clear_key_file(config.node.data_dir)
    if not clear.exists():
        return False
    _seal_into_store(consensus, pki.load_ca(clear.parent), password)
    _delete_clear(clear)
    return True


def drop_clear_key(config: NodeConfig, consensus: ConsensusBackend) -> bool:
    """Delete this member's clear CA key once the store holds it sealed (True: deleted)."""
    clear = clear_key_file(config.node.data_dir)
    if not clear.exists():
        return False
    found = consensus.get(SEALED_KEY)
    if found is None:
        return False
    try:
        sealed_for = sealed_ca.sealed_for(found.value)
    except pki.TlsMaterialError as err:
        log.warning("the sealed CA key in the store is unusable (%s): keeping %s", err, clear)
        return False
    if sealed_for != pki.fingerprint(ca_certificate(config)):
        log.warning("the store's sealed CA key is another CA's: keeping %s", clear)
        return False
    _delete_clear(clear)
    return True


def _seal_into_store(consensus: ConsensusBackend, ca: pki.CaMaterial, password: str) -> None:
    found = consensus.get(SEALED_KEY)
    if found is not None:
        try:
            sealed_ca.unseal(found.value, password, ca.certificate)
            return  # already there, and this password opens it
        except pki.TlsMaterialError as err:
            log.warning("replacing the sealed CA key in the store: %s", err)
    version = found.version if found is not None else 0
    if not consensus.put(SEALED_KEY, sealed_ca.seal(ca, password), expect_version=version):
        raise HacoreError("the sealed CA key changed in the store at the same time: try again")
    log.info("the cluster CA key is sealed in the store (fingerprint %s)", ca.fingerprint)


def _delete_clear(clear: Path) -> None:
    clear.unlink(missing_ok=True)
    log.info("deleted %s: the CA key is kept only sealed in the store", clear)


# -- join tokens ---------------------------------------------------------------------------


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def _join_cert_key(token: str) -> str:
    return JOIN_CERT_PREFIX + _token_digest(token)


def issue_for_token(
    ca: pki.CaMaterial,
    consensus: ConsensusBackend,
    token: str,
    name: str,
    hosts: Sequence[str],
) -> None:
    """For ``nodes add``: ``name``'s key and certificate, kept for the token's ticket."""
    key = pem.new_key()
    certificate = sign_node_certificate(ca, name, hosts, key.public_key())
    # a removal of the name revokes it, used or not
    revocation_store.register_certificate(consensus, name, certificate)
    sealed_key = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(token.encode("utf-8", "surrogateescape")),
    )
    value = json.dumps(
        {
            "name": name,
            "certificate": pem.cert_pem(certificate).decode("ascii"),
            "key": sealed_key.decode("ascii"),
        }
    ).encode()
    if not consensus.put(_join_cert_key(token), value, expect_version=0):
        raise HacoreError("a join token's certificate collided with another: ask again")


def take_for_token(consensus: ConsensusBackend, token: str, name: str) -> dict[str, Any] | None:
    """The certificate and key issued with ``token`` for ``name`` (then forgotten); None
    when there is none (the token was issued without TLS, or by an earlier release)."""
    found = consensus.get(_join_cert_key(token))
    if found is None:
        return None
    try:
        data = json.loads(found.value)
        if data.get("name") != name:
            raise ValueError("issued for another node")
        key = serialization.load_pem_private_key(
            str(data["key"]).encode("ascii"), password=token.encode("utf-8", "surrogateescape")
        )
        certificate = pem.parse_certificate(
            str(data["certificate"]).encode("ascii"), "the token's certificate"
        )
    except (ValueError, KeyError, TypeError, pki.TlsMaterialError) as err:
        raise UnavailableError(
            f"the certificate issued with this join token is unusable: {err}"
        ) from None
    consensus.delete(found.key, expect_version=found.version)
    if not isinstance(key, pem.SigningKey):
        raise UnavailableError("the certificate issued with this join token has no usable key")
    return {"certificate": certificate, "key": key}


def forget_unclaimed(consensus: ConsensusBackend, token_prefix: str) -> int:
    """Delete the token certificates whose token is gone (expired and forgotten)."""
    count = 0
    for kv in consensus.get_prefix(JOIN_CERT_PREFIX):
        digest = kv.key.rsplit("/", 1)[-1]
        if consensus.get(token_prefix + digest) is None and consensus.delete(
            kv.key, expect_version=kv.version
        ):
            count += 1
    return count
