"""A node's TLS material, and the ticket part that hands the cluster CA to a joining node.

Layout under ``data_dir`` (DESIGN §5, docs/security.md; the paths are
:mod:`hacore.agent.tls_paths`):

- ``pki/ca/``: ``ca.crt``; the CA key is in the store, sealed under the admin password
  (hacore/cluster/ca_key.py), and in the clear here only during ``cluster start``;
- ``pki/node/``: ``node.crt``, ``node.key`` (0600) and a copy of ``ca.crt``; this is what the
  backends (:class:`~hacore.backends.records.TlsFiles`) and the agent API use.

``cluster start`` creates the CA; ``cluster join`` receives the CA certificate and its own
certificate inside the join ticket (the ``ca`` part below) over a TLS connection pinned to the
CA's fingerprint: the active signs the joiner's certificate request, so neither the CA key
nor (except in a join by token) the node key travels.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import ssl
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hacore import pki
from hacore.agent.tls_paths import ca_cert_file, ca_dir, node_dir, pki_dir
from hacore.api.errors import BadRequestError, ConflictError
from hacore.backends.consensus import ConsensusBackend
from hacore.cluster import ca_key
from hacore.cluster.ticket import JoinRequest, register_ticket_part
from hacore.config.node import NodeConfig
from hacore.errors import HacoreError
from hacore.pki import node_grant, pem, revocation
from hacore.pki.pem import cert_pem
from hacore.pki.tls_files import CERT_MODE, private_dir, write_atomic

log = logging.getLogger(__name__)

CA_PART = "ca"
#: always in the node certificate: the local CLI and local clients connect over loopback
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


def node_hosts(config: NodeConfig, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """Every address the node certificate must name: the node's, its ``node.dns_names``,
    ``extra``, and loopback."""
    hosts = []
    for host in (config.node.host, *config.node.dns_names, *extra, *LOOPBACK_HOSTS):
        try:
            if ipaddress.ip_address(host.strip("[]")).is_unspecified:
                continue  # a wildcard listen address is nobody's name
        except ValueError:
            pass
        hosts.append(host)
    return tuple(dict.fromkeys(hosts))


def create_cluster_ca(config: NodeConfig, hosts: Iterable[str]) -> pki.CaMaterial:
    """``cluster start``: the cluster's CA (kept if an interrupted start made it) and this
    node's certificate."""
    data_dir = config.node.data_dir
    ca = pki.ensure_ca(config.cluster.name, ca_dir(data_dir))
    pki.ensure_node_certificate(ca, config.node.name, tuple(hosts), node_dir(data_dir))
    return ca


def ensure_node_material(config: NodeConfig, hosts: Iterable[str]) -> pki.NodeCertificate:
    """A member's restart: the CA certificate and the node certificate must be there.

    Members hold no CA key (hacore/cluster/ca_key.py), so the node certificate is kept for
    as long as it is usable; one that lacks an address or nears its expiry is kept with a
    warning (renewal: remove the node and add it again). A node that still holds the clear
    key (a start not finished, a cluster of an earlier release) re-issues as it always did.
    """
    data_dir = config.node.data_dir
    name = config.node.name
    if (ca_dir(data_dir) / pki.CA_KEY).exists():
        try:
            ca = pki.load_ca(ca_dir(data_dir))
        except pki.TlsMaterialError as err:
            raise HacoreError(
                f"this node runs with TLS but its cluster CA is unusable ({err}): restore "
                f"{ca_dir(data_dir)} from another member, or remove the node and join it again"
            ) from None
        return pki.ensure_node_certificate(ca, name, tuple(hosts), node_dir(data_dir))
    again = f"remove the node (hacore cluster nodes remove {name}) and add it again"
    try:
        ca_cert = pki.load_ca_certificate(ca_dir(data_dir) / pki.CA_CERT)
        node = pki.load_node_certificate(node_dir(data_dir))
    except pki.TlsMaterialError as err:
        raise HacoreError(
            f"this node runs with TLS but its material is unusable ({err}): {again}"
        ) from None
    problem = node_grant.why_unusable(node, ca_cert, name)
    if problem is not None:
        raise HacoreError(f"this node's certificate cannot be used ({problem}): {again}")
    lacking = node_grant.why_renew(node, tuple(hosts))
    if lacking is not None:
        log.warning(
            "keeping the certificate of node %s although %s: members hold no CA key to "
            "re-issue it; to renew it, %s",
            name,
            lacking,
            again,
        )
    return node


def server_context(data_dir: Path) -> ssl.SSLContext | None:
    """The API's server context from the node material, None while the node has none."""
    directory = node_dir(data_dir)
    if not (directory / pki.NODE_CERT).exists():
        return None
    node = pki.load_node_certificate(directory)
    ca = pki.load_ca_certificate(node.ca_file)
    return pki.ssl_server_context(node, ca, require_client_cert=False)


def ca_certificate_pem(data_dir: Path) -> str | None:
    """The CA certificate this node trusts, as PEM text; None when it has none."""
    try:
        cert = pki.load_ca_certificate(ca_cert_file(data_dir))
    except pki.TlsMaterialError:
        return None
    return cert_pem(cert).decode("ascii")


def remove_material(data_dir: Path) -> None:
    """After a failed join: the CA and node material go with the rest of the node's state."""
    shutil.rmtree(pki_dir(data_dir), ignore_errors=True)


class CaTicketPart:
    """The join ticket's ``ca`` part: the joiner's certificate, never the CA key.

    The joiner says whether it runs with TLS and sends a certificate request for its own
    key (kept here, in memory, until the ticket comes back). The active refuses a joiner
    whose TLS setting differs from the cluster's (before anything changed); for one that
    agrees, :func:`grant_certificate` signs the request, or hands over the certificate
    issued with the join token. The ticket travels only over the TLS connection the joiner
    pinned to the CA.
    """

    name = CA_PART

    def __init__(self) -> None:
        self._keys: dict[str, pem.SigningKey] = {}

    def request(self, config: NodeConfig) -> dict[str, Any]:
        if not config.tls.enabled:
            return {"tls": False}
        key, csr = node_grant.certificate_request(config.node.name, node_hosts(config))
        self._keys[config.node.name] = key
        return {"tls": True, "csr": csr}

    def grant(self, config: NodeConfig, request: JoinRequest) -> dict[str, Any]:
        """The TLS check only: ``{"tls": True}`` when the joiner gets a certificate, which
        :func:`grant_certificate` then makes (it needs the store and the join token)."""
        asked = request.extensions.get(CA_PART)
        wanted = asked.get("tls") if isinstance(asked, Mapping) else None
        ours = config.tls.enabled
        if wanted is not ours:
            raise ConflictError(
                f"{request.name} has tls.enabled: {_yaml_bool(wanted)} but this cluster runs "
                f"with tls.enabled: {_yaml_bool(ours)}: every node of a cluster must agree"
            )
        return {"tls": True} if ours else {}

    def accept(self, config: NodeConfig, granted: Mapping[str, Any]) -> None:
        if not config.tls.enabled:
            return
        name, data_dir = config.node.name, config.node.data_dir
        grant = node_grant.accept_grant(granted, name, self._keys.pop(name, None))
        if grant.crl is None:
            raise HacoreError("the join ticket carries no revocation list")
        write_atomic(
            private_dir(ca_dir(data_dir)) / pki.CA_CERT,
            cert_pem(grant.ca_certificate),
            CERT_MODE,
        )
        directory = private_dir(node_dir(data_dir))
        revocation.install_crl(directory / revocation.CRL_FILE, grant.crl, grant.ca_certificate)
        node = pki.store_node_certificate(
            grant.ca_certificate, grant.certificate, grant.key, directory
        )
        log.info(
            "received this node's certificate (fingerprint %s) from the cluster CA %s",
            node.fingerprint,
            pki.fingerprint(grant.ca_certificate),
        )


def grant_certificate(
    config: NodeConfig, consensus: ConsensusBackend, request: JoinRequest, token: str | None
) -> dict[str, Any]:
    """On the active: the joiner's share of the ``ca`` part (hacore/pki/node_grant.py).

    With a join token, the certificate issued for it (``nodes add``); with the admin
    password, the joiner's request signed by the CA key unsealed for this request."""
    data_dir = config.node.data_dir
    crl = revocation.crl_path(ca_cert_file(data_dir))
    crl_data = crl.read_bytes() if crl.exists() else None
    ca_cert = ca_key.ca_certificate(config)
    issued = ca_key.take_for_token(consensus, token, request.name) if token else None
    if issued is not None:
        return node_grant.grant_json(
            ca_cert, issued["certificate"], key=issued["key"], crl=crl_data
        )
    asked = request.extensions.get(CA_PART)
    csr = asked.get("csr") if isinstance(asked, Mapping) else None
    if not isinstance(csr, str):
        raise BadRequestError(f"{request.name} sent no certificate request")
    ca = ca_key.signing_ca(config, consensus)
    try:
        cert = node_grant.sign_request(ca, csr, request.name, (request.host,))
    except pki.TlsMaterialError as err:
        raise BadRequestError(f"join refused: {err}") from None
    return node_grant.grant_json(ca_cert, cert, crl=crl_data)


def _yaml_bool(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "unset"


register_ticket_part(CaTicketPart())
