"""Revocation for the managed ZooKeeper: a removed node's certificate opens neither the client
port nor the quorum ports.

ZooKeeper has no CRL-file setting. Its ``ssl.crl`` / ``ssl.quorum.crl`` switch on Java's PKIX
revocation checks, which fetch the CRL from the URL in the certificate being checked (its CRL
distribution point) and refuse a certificate whose status they cannot determine. hacore's node
certificates name the relative URL ``file:crl.pem``
(:data:`hacore.pki.revocation.DISTRIBUTION_POINT`), which Java resolves in the server's working
directory, the store's data directory: there :func:`link_crl` puts a symbolic link to the
node's ``crl.pem``, which the agent keeps equal to the store's CRL. The link (not a copy) means
a CRL the agent installs reaches ZooKeeper with no step here; Java reads the file again when its
modification time changed, at most every 30 seconds (``URICertStore``), and checks each new TLS
connection, never one already open.

A certificate issued before the distribution point was added has none, and a server checking
revocation refuses it. Checking is therefore decided once per ensemble, at bootstrap (this
node's certificate names the point), and handed to every joiner in its join spec: an ensemble
formed by an older version keeps running without it (docs/security.md).
"""

from __future__ import annotations

import os
from pathlib import Path

from hacore.backends.records import TlsFiles
from hacore.errors import ManagedStoreError
from hacore.pki import pem
from hacore.pki.errors import TlsMaterialError
from hacore.pki.revocation import CRL_FILE, crl_path, names_distribution_point

#: make the JDK follow distribution points (ZooKeeper sets it too when ``ssl.crl`` is on)
SYSTEM_PROPERTIES = {"com.sun.security.enableCRLDP": "true"}


def certificate_names_crl(tls: TlsFiles | None) -> bool:
    """Whether this node's certificate names the CRL (no TLS, or no certificate yet: no)."""
    if tls is None:
        return False
    try:
        return names_distribution_point(pem.read_certificate(Path(tls.cert_file)))
    except TlsMaterialError:
        return False


def link_crl(tls: TlsFiles, working_dir: Path) -> Path:
    """``working_dir/crl.pem`` pointing at the node's CRL, which must exist: without it Java
    would refuse every certificate, members included, with no hint of why."""
    target = crl_path(Path(tls.ca_file)).resolve()
    if not target.is_file():
        raise ManagedStoreError(
            f"no revocation list at {target}: the ZooKeeper server checks every certificate "
            "against it (the node's TLS setup writes it; run the node's start again)"
        )
    link = Path(working_dir) / CRL_FILE
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return link
    staging = link.with_name(f".{CRL_FILE}.link")
    staging.unlink(missing_ok=True)
    staging.symlink_to(target)
    os.replace(staging, link)
    return link
