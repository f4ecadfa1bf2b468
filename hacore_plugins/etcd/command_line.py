"""The command line of one etcd member, shared by the managed store and the test harness.

The flags are the contract between hacore and etcd: the URLs a member listens on and
advertises, the Raft timing, and with the node's TLS material mutual TLS on both ports.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hacore.backends.records import TlsFiles
from hacore.pki.revocation import crl_path
from hacore_plugins.etcd.client import EtcdMember


def url(host: str, port: int, scheme: str = "http") -> str:
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def tls_argv(tls: TlsFiles) -> list[str]:
    """Mutual TLS on the client and the peer port, trusting the cluster CA alone.

    With the node's CRL beside its certificate, both ports refuse a revoked certificate
    (a removed node's). etcd reads the CRL file again at every TLS handshake, so a
    removal takes effect without a restart; it refuses every connection when the file is
    missing, so the flags are given only when it exists (``ensure_node_certificate``
    writes it before any server starts)."""
    files = {"cert-file": tls.cert_file, "key-file": tls.key_file, "trusted-ca-file": tls.ca_file}
    crl = crl_path(tls.ca_file)
    revoked = [f"--client-crl-file={crl}", f"--peer-crl-file={crl}"] if crl.exists() else []
    return [
        "--client-cert-auth",
        "--peer-client-cert-auth",
        *[f"--{flag}={path}" for flag, path in files.items()],
        *[f"--peer-{flag}={path}" for flag, path in files.items()],
        *revoked,
    ]


def etcd_argv(
    binary: str,
    *,
    name: str,
    data_dir: Path,
    host: str,
    client_port: int,
    peer_port: int,
    initial_cluster: str,
    token: str,
    state: str,
    heartbeat_ms: int = 100,
    election_ms: int = 1000,
    tls: TlsFiles | None = None,
) -> list[str]:
    """The command line of one etcd member (shared with the test harness)."""
    scheme = "https" if tls else "http"
    client, peer = url(host, client_port, scheme), url(host, peer_port, scheme)
    return [
        binary,
        "--name", name,
        "--data-dir", str(data_dir),
        "--logger=zap",
        "--log-outputs=stderr",
        "--listen-client-urls", client,
        "--advertise-client-urls", client,
        "--listen-peer-urls", peer,
        "--initial-advertise-peer-urls", peer,
        "--initial-cluster", initial_cluster,
        "--initial-cluster-token", token,
        "--initial-cluster-state", state,
        "--heartbeat-interval", str(heartbeat_ms),
        "--election-timeout", str(election_ms),
        # a member cut off from the leader must not raise the term and depose it on return
        "--pre-vote=true",
        "--auto-compaction-mode", "periodic",
        "--auto-compaction-retention", "1h",
        *(tls_argv(tls) if tls else []),
    ]  # fmt: skip


def initial_cluster(members: Sequence[EtcdMember], new_id: int, new_name: str) -> str:
    """etcd's ``--initial-cluster`` for a newcomer: every member, the newcomer by its name."""
    return ",".join(
        f"{new_name if m.id == new_id else m.name}={peer}" for m in members for peer in m.peer_urls
    )
