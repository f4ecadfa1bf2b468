"""``ssl`` contexts for node-to-node traffic: TLS 1.2 or newer, trusting only the cluster CA.

A client context verifies the server's certificate chain *and* that it names the host it
connected to; a server context can demand a certificate from the client as well (mutual TLS
between nodes). Strict X.509 checking is on, so malformed certificates fail here as they would
in newer OpenSSL and Python releases.
"""

from __future__ import annotations

import ssl

from cryptography import x509

from hacore.pki import pem
from hacore.pki.ca import CaMaterial
from hacore.pki.certs import NodeCertificate

TrustAnchor = CaMaterial | x509.Certificate


def _anchor_pem(ca: TrustAnchor) -> str:
    cert = ca.certificate if isinstance(ca, CaMaterial) else ca
    return pem.cert_pem(cert).decode("ascii")


def _harden(context: ssl.SSLContext, ca: TrustAnchor) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cadata=_anchor_pem(ca))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    return context


def ssl_server_context(
    node_cert: NodeCertificate, ca: TrustAnchor, require_client_cert: bool
) -> ssl.SSLContext:
    """A server presenting ``node_cert``; client certificates, when sent, must come from ``ca``."""
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), ca)
    context.load_cert_chain(node_cert.cert_file, node_cert.key_file)
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


def ssl_client_context(ca: TrustAnchor, node_cert: NodeCertificate | None = None) -> ssl.SSLContext:
    """A client that trusts ``ca`` alone, checks hostnames, and shows ``node_cert`` if given."""
    context = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), ca)
    if node_cert is not None:
        context.load_cert_chain(node_cert.cert_file, node_cert.key_file)
    return context
