"""Where a node keeps its TLS material under ``data_dir``: ``pki/ca/`` (the cluster CA, on
every member) and ``pki/node/`` (this node's certificate, key and a copy of the CA
certificate).

Only paths, in the agent's layer: the agent hands them to the backends it builds, and the
cluster operations (:mod:`hacore.cluster.tls`) write the files there.
"""

from __future__ import annotations

from pathlib import Path

from hacore import pki
from hacore.backends.records import TlsFiles
from hacore.config.node import NodeConfig

PKI_DIR = "pki"


def pki_dir(data_dir: Path) -> Path:
    return Path(data_dir) / PKI_DIR


def ca_dir(data_dir: Path) -> Path:
    return pki_dir(data_dir) / "ca"


def node_dir(data_dir: Path) -> Path:
    return pki_dir(data_dir) / "node"


def ca_cert_file(data_dir: Path) -> Path:
    """The CA certificate beside the node certificate (public; what clients pin to)."""
    return node_dir(data_dir) / pki.CA_CERT


def tls_files(config: NodeConfig) -> TlsFiles | None:
    """Where the node's material is (or will be), None when the node runs without TLS.

    The paths are known before the files exist, so backends built to look at an empty node
    (its store identity, before a join) already describe their TLS endpoints.
    """
    if not config.tls.enabled:
        return None
    directory = node_dir(config.node.data_dir)
    return TlsFiles(
        ca_file=directory / pki.CA_CERT,
        cert_file=directory / pki.NODE_CERT,
        key_file=directory / pki.NODE_KEY,
    )
