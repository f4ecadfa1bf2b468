"""The cluster's internal CA and TLS material (DESIGN §5).

``cluster start`` runs :func:`ensure_ca`; a joiner stores the CA from its join ticket
(:func:`ca_from_join`, :func:`store_ca`); every node then runs :func:`ensure_node_certificate`
and builds its TLS contexts with :func:`ssl_server_context` / :func:`ssl_client_context`.
"""

from __future__ import annotations

from hacore.pki.ca import (
    CA_CERT,
    CA_KEY,
    CaMaterial,
    ca_bundle_for_join,
    ca_from_join,
    create_ca,
    ensure_ca,
    load_ca,
    load_ca_certificate,
    store_ca,
    trust_ca_certificate,
)
from hacore.pki.certs import (
    NODE_CERT,
    NODE_KEY,
    NodeCertificate,
    ensure_node_certificate,
    issue_node_certificate,
    issued_by,
    load_node_certificate,
    store_node_certificate,
)
from hacore.pki.contexts import ssl_client_context, ssl_server_context
from hacore.pki.errors import TlsMaterialError
from hacore.pki.pem import fingerprint
from hacore.pki.tls_files import install_for_user

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "NODE_CERT",
    "NODE_KEY",
    "CaMaterial",
    "NodeCertificate",
    "TlsMaterialError",
    "ca_bundle_for_join",
    "ca_from_join",
    "create_ca",
    "ensure_ca",
    "ensure_node_certificate",
    "fingerprint",
    "install_for_user",
    "issue_node_certificate",
    "issued_by",
    "load_ca",
    "load_ca_certificate",
    "load_node_certificate",
    "ssl_client_context",
    "ssl_server_context",
    "store_ca",
    "store_node_certificate",
    "trust_ca_certificate",
]
