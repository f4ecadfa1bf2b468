"""Which member records the loop may decide on: those signed by their own node.

Every agent with TLS signs its member record with its node key (hacore/pki/record_identity.py).
The loop's view keeps only records whose signature verifies against a certificate of the
cluster CA that is not revoked and names the record's node; a record written into the store
by anyone else (a member gone rogue, a removed node, an external store's admin) is left out,
so it can neither be elected, counted, waited for, nor make a real member look unhealthy.

Verification is this module's (the edge: it reads the CA and the CRL beside the node
certificate); the decision functions receive only the records that passed
(:func:`hacore.agent.cluster_view.only_believed`). A verdict is cached per signed content,
certificate and signature, and the cache is emptied when the CA or the CRL changes, so a
loop pays one signature check per record that changed, not per record.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from cryptography import x509

from hacore.agent.cluster_view import only_believed
from hacore.backends.records import ClusterView, Member, TlsFiles
from hacore.errors import HacoreError
from hacore.pki import record_identity, revocation
from hacore.pki.pem import read_certificate

log = logging.getLogger(__name__)

#: verdicts kept at most (a store full of forged records must not grow the agent)
CACHE_SIZE = 512

_Key = tuple[str, bytes, str, str]


def _record_key(member: Member) -> _Key:
    identity = member.extra.get(record_identity.IDENTITY)
    cert = sig = ""
    if isinstance(identity, Mapping):
        cert, sig = str(identity.get("certificate", "")), str(identity.get("signature", ""))
    data = record_identity.payload(member.name, member.host, member.api_url, member.extra)
    return (member.name, data, cert, sig)


class RecordTrust:
    """Filters the loop's view down to the records signed by their own node.

    ``tls`` None (the cluster runs without TLS), or a node without its CA certificate yet:
    every record is kept, as there is nothing to prove an identity with."""

    def __init__(self, name: str, tls: TlsFiles | None) -> None:
        self.name = name
        self.tls = tls
        self._anchor: tuple[bytes, bytes] | None = None
        self._ca: x509.Certificate | None = None
        self._revoked: frozenset[int] = frozenset()
        self._verdicts: dict[_Key, str | None] = {}
        self._told: set[tuple[str, str]] = set()

    def view(self, view: ClusterView) -> ClusterView:
        """``view`` without the records that do not verify; each refusal logged once."""
        anchor = self._load_anchor()
        if anchor is None:
            return view
        reasons = tuple(anchor if anchor else self.why_not(m) for m in view.members)
        refused = {(m.name, r) for m, r in zip(view.members, reasons, strict=True) if r}
        for name, reason in sorted(refused - self._told):
            host = next((m.host for m in view.members if m.name == name), "")
            log.warning(
                "%s: leaving a record of %s (at %s) out of the cluster view: %s",
                self.name,
                name,
                host or "no host",
                reason,
            )
        self._told = refused
        return only_believed(view, reasons)

    def why_not(self, member: Member) -> str | None:
        """Why ``member`` is left out (None: it is kept), once the CA is loaded."""
        assert self._ca is not None
        key = _record_key(member)
        if key in self._verdicts:
            return self._verdicts[key]
        reason = record_identity.why_not_believed(
            member.name, member.host, member.api_url, member.extra, self._ca, self._revoked
        )
        if len(self._verdicts) >= CACHE_SIZE:
            self._verdicts.clear()
        self._verdicts[key] = reason
        return reason

    def _load_anchor(self) -> str | None:
        """None: there is no CA to verify with (every record is kept); "": the CA and CRL
        are loaded (read again when they change); else why no record can be believed."""
        if self.tls is None:
            return None
        try:
            ca_data = self.tls.ca_file.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            return f"the cluster CA is unreadable: {err.strerror}"
        try:
            crl_data = revocation.crl_path(self.tls.ca_file).read_bytes()
        except OSError:
            crl_data = b""
        if self._anchor == (ca_data, crl_data) and self._ca is not None:
            return ""
        try:
            ca = read_certificate(self.tls.ca_file)
        except HacoreError as err:
            self._ca, self._anchor = None, None
            return f"the cluster CA is unreadable: {err}"
        try:
            revoked = revocation.revoked_serials(crl_data, ca) if crl_data else frozenset()
        except HacoreError as err:
            log.warning("%s: the revocation list is unusable: %s", self.name, err)
            revoked = self._revoked
        self._ca, self._revoked, self._anchor = ca, revoked, (ca_data, crl_data)
        self._verdicts.clear()
        return ""
