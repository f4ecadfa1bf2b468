"""A node's TLS material, and the ticket part that hands the cluster CA to a joining node.

Layout under ``data_dir`` (DESIGN §5, docs/security.md; the paths are
:mod:`hacore.agent.tls_paths`):

- ``pki/ca/``: ``ca.crt`` and ``ca.key`` (0600), on every member, so whichever node is active
  can hand the CA over to the next joiner;
- ``pki/node/``: ``node.crt``, ``node.key`` (0600) and a copy of ``ca.crt``; this is what the
  backends (:class:`~hacore.backends.records.TlsFiles`) and the agent API use.

``cluster start`` creates the CA; ``cluster join`` receives it inside the join ticket (the
``ca`` part below) over a TLS connection pinned to the CA's fingerprint, and each node signs
its own certificate, so its node key never leaves it.
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
from hacore.api.errors import ConflictError, UnavailableError
from hacore.cluster.ticket import JoinRequest, register_ticket_part
from hacore.config.node import NodeConfig
from hacore.errors import HacoreError
from hacore.pki import revocation
from hacore.pki.pem import cert_pem
from hacore.pki.tls_files import private_dir

log = logging.getLogger(__name__)

CA_PART = "ca"
#: always in the node certificate: the local CLI and local clients connect over loopback
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


def node_hosts(config: NodeConfig, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """Every address the node certificate must name: the node's, ``extra``, and loopback."""
    hosts = []
    for host in (config.node.host, *extra, *LOOPBACK_HOSTS):
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
    """A member's restart: the CA must be there; the node certificate is kept or re-issued
    (new address, close to expiry)."""
    data_dir = config.node.data_dir
    try:
        ca = pki.load_ca(ca_dir(data_dir))
    except pki.TlsMaterialError as err:
        raise HacoreError(
            f"this node runs with TLS but its cluster CA is unusable ({err}): restore "
            f"{ca_dir(data_dir)} from another member, or remove the node and join it again"
        ) from None
    return pki.ensure_node_certificate(ca, config.node.name, tuple(hosts), node_dir(data_dir))


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
    """The join ticket's ``ca`` part: the CA certificate and key, for a joiner with TLS.

    The joiner says whether it runs with TLS; the active refuses a joiner that differs from
    the cluster (before anything changed), and grants the CA bundle to one that agrees. The
    bundle travels only in the ticket, over the TLS connection the joiner pinned to the CA.
    """

    name = CA_PART

    def request(self, config: NodeConfig) -> dict[str, Any]:
        return {"tls": config.tls.enabled}

    def grant(self, config: NodeConfig, request: JoinRequest) -> dict[str, Any]:
        asked = request.extensions.get(CA_PART)
        wanted = asked.get("tls") if isinstance(asked, Mapping) else None
        ours = config.tls.enabled
        if wanted is not ours:
            raise ConflictError(
                f"{request.name} has tls.enabled: {_yaml_bool(wanted)} but this cluster runs "
                f"with tls.enabled: {_yaml_bool(ours)}: every node of a cluster must agree"
            )
        if not ours:
            return {}
        try:
            ca = pki.load_ca(ca_dir(config.node.data_dir))
        except pki.TlsMaterialError as err:
            raise UnavailableError(f"this node cannot hand over the cluster CA: {err}") from None
        granted: dict[str, Any] = {"bundle": pki.ca_bundle_for_join(ca)}
        crl = revocation.crl_path(ca_cert_file(config.node.data_dir))
        if crl.exists():
            # the joiner's servers refuse removed nodes from their first start
            granted["crl"] = crl.read_text()
        return granted

    def accept(self, config: NodeConfig, granted: Mapping[str, Any]) -> None:
        if not config.tls.enabled:
            return
        bundle = granted.get("bundle")
        if not isinstance(bundle, Mapping):
            raise HacoreError("the join ticket carries no cluster CA although TLS is on")
        data_dir = config.node.data_dir
        ca = pki.store_ca(pki.ca_from_join(bundle), ca_dir(data_dir))
        crl = granted.get("crl")
        if isinstance(crl, str):
            # before the node certificate: one the cluster revoked (this name's, removed
            # earlier, on a disk joined again) is then re-issued, not kept
            directory = private_dir(node_dir(data_dir))
            revocation.install_crl(
                revocation.crl_path(directory / pki.CA_CERT), crl.encode(), ca.certificate
            )
        pki.ensure_node_certificate(ca, config.node.name, node_hosts(config), node_dir(data_dir))
        log.info("received the cluster CA (fingerprint %s)", ca.fingerprint)


def _yaml_bool(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return "unset"


register_ticket_part(CaTicketPart())
