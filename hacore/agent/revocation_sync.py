"""Each agent's share of a removal: the store's CRL into the node's ``crl.pem``, the rotated
replication password into the database's passfile and the agent's credentials, and this
node's own certificate registered so that a later removal of it can revoke it.

Run from the loop (:class:`hacore.agent.support.Membership`), at most every few seconds: one
or two reads of small keys. Every failure is logged and retried on the next round; nothing
here can stop the loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from cryptography import x509

from hacore.agent.execute import ReplicationCredentials
from hacore.cluster import revoke
from hacore.errors import HacoreError
from hacore.pki import load_node_certificate, record_identity, revocation
from hacore.pki.pem import read_certificate
from hacore.records import Member, TlsFiles

log = logging.getLogger(__name__)

#: seconds between two rounds
INTERVAL = 2.0


class RevocationSync:
    def __init__(
        self,
        name: str,
        consensus: Any,
        replication: Any,
        tls: TlsFiles | None,
        set_credentials: Callable[[ReplicationCredentials], None] | None,
        is_active: Callable[[], bool] = lambda: False,
    ) -> None:
        self.is_active = is_active
        self.name = name
        self.consensus = consensus
        self.replication = replication
        self.tls = tls
        self.set_credentials = set_credentials
        self._registered = tls is None
        self._crl: bytes | None = None
        self._generation: int | None = None
        self._primary_generation: int | None = None
        self._failed: dict[str, str] = {}
        self._next = 0.0
        self._ca: x509.Certificate | None = None
        self._revoked_from: bytes | None = None
        self._revoked_set: frozenset[int] = frozenset()

    def tick(self, *, removed: bool = False) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + INTERVAL
        for step in (self._register, self._crl_round, self._secret_round):
            if removed and step is not self._crl_round:
                continue
            what = step.__name__.strip("_")
            try:
                step()
            except Exception as err:  # a database or store that does not answer: next round
                message = f"{what} failed: {err}"
                if self._failed.get(what) != message:
                    log.warning("%s: %s", self.name, message)
                self._failed[what] = message
            else:
                self._failed.pop(what, None)

    def _register(self) -> None:
        if self._registered or self.tls is None or not self.tls.cert_file.exists():
            return
        node = load_node_certificate(self.tls.cert_file.parent)
        revoke.register_certificate(self.consensus, self.name, node.certificate)
        self._registered = True

    def _crl_round(self) -> None:
        if self.tls is None or not self.tls.ca_file.exists():
            return
        data = revoke.current_crl(self.consensus)
        if data is None or data == self._crl:
            return
        ca = read_certificate(self.tls.ca_file)
        if revocation.install_crl(revocation.crl_path(self.tls.ca_file), data, ca):
            log.info("%s: the cluster's revocation list changed", self.name)
            reload_tls = getattr(self.replication, "reload_tls", None)
            if reload_tls is not None:
                reload_tls()
        self._crl = data

    def _secret_round(self) -> None:
        secret = revoke.replication_secret(self.consensus)
        if secret is None:
            return
        self._as_primary(secret)
        if secret.generation == self._generation:
            return
        remember = getattr(self.replication, "remember_password", None)
        if remember is not None:
            remember(secret.user, secret.password)
        if self.set_credentials is not None:
            self.set_credentials(ReplicationCredentials(secret.user, secret.password))
        if self._generation is not None:
            log.info(
                "%s: took the rotated replication password (generation %d)",
                self.name,
                secret.generation,
            )
        self._generation = secret.generation

    def _as_primary(self, secret: revoke.ReplicationSecret) -> None:
        """Once per generation while this node's database is a primary: the role gets the
        store's password. A failover right after a rotation may have lost the ``ALTER ROLE``
        (asynchronous replication), while every member's passfile already has the new one."""
        if self._primary_generation == secret.generation or not self.is_active():
            return
        apply = getattr(self.replication, "apply_password", None)
        if apply is not None and apply(secret.user, secret.password):
            self._primary_generation = secret.generation

    def why_not_believed(self, member: Member) -> str | None:
        """Why ``member``'s record is not to be believed (None: it is, or this node has no
        TLS material, and so nothing to check an identity against: TLS off, or an agent run
        on bare backends)."""
        if self.tls is None or not self.tls.ca_file.exists():
            return None
        try:
            ca = self._ca_certificate()
        except HacoreError as err:
            return f"the cluster CA is unreadable: {err}"
        return record_identity.why_not_believed(
            member.name, member.host, member.api_url, member.extra, ca, self._revoked(ca)
        )

    def _ca_certificate(self) -> x509.Certificate:
        assert self.tls is not None
        if self._ca is None:
            self._ca = read_certificate(self.tls.ca_file)
        return self._ca

    def _revoked(self, ca: x509.Certificate) -> frozenset[int]:
        assert self.tls is not None
        path = revocation.crl_path(self.tls.ca_file)
        try:
            data = path.read_bytes()
        except OSError:
            return frozenset()
        if self._revoked_from != data:
            try:
                self._revoked_set = revocation.revoked_serials(data, ca)
            except HacoreError:
                self._revoked_set = frozenset()
            self._revoked_from = data
        return self._revoked_set
