"""A real 3-member etcd cluster on loopback ports, for the contract suite and benchmarks.

Each start uses fresh ports and a fresh ``--initial-cluster-token``, so a member left over
from an earlier run can never join this cluster. Heartbeat and election timeout are etcd's
defaults (100 ms / 1 s): shorter ones make a busy 2-core machine hold spurious elections.

:class:`EtcdTlsHarness` is the same cluster on a fresh internal CA, with mutual TLS on the
client and the peer ports, as a node running with ``tls.enabled`` sets its store up.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Any

from hacore import ManagedStore, TlsFiles
from hacore.backends.client_tls import ClientTls
from hacore.pki import create_ca, issue_node_certificate
from hacore.testing.harness import ConsensusHarness
from hacore.testing.procs import ServerProcess, free_port, wait_for
from hacore_plugins.etcd.client import EtcdClient
from hacore_plugins.etcd.command_line import etcd_argv, url
from hacore_plugins.etcd.managed import DEFAULT_BINARY, EtcdManagedStore

MEMBERS = 3
HOST = "127.0.0.1"
START_TIMEOUT = 60.0
HEARTBEAT_MS = 100
ELECTION_MS = 1000


class EtcdHarness(ConsensusHarness):
    backend_name = "etcd"
    supports_managed = True

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.servers: list[ServerProcess] = []
        self.client_ports: list[int] = []
        self.managed: list[ManagedStore] = []
        self.tls: TlsFiles | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def client_tls(self) -> ClientTls | None:
        return ClientTls.from_node(self.tls) if self.tls else None

    def tls_settings(self) -> dict[str, str]:
        """The consensus settings naming this harness's TLS files (none without TLS)."""
        if self.tls is None:
            return {}
        return {
            "ca_file": str(self.tls.ca_file),
            "cert_file": str(self.tls.cert_file),
            "key_file": str(self.tls.key_file),
        }

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if not os.access(DEFAULT_BINARY, os.X_OK):
            return f"no etcd server binary at {DEFAULT_BINARY}"
        return None

    def start(self) -> None:
        self.client_ports = [free_port() for _ in range(MEMBERS)]
        peer_ports = [free_port() for _ in range(MEMBERS)]
        token = f"hacore-test-{uuid.uuid4().hex}"
        cluster = ",".join(
            f"etcd{i}={url(HOST, peer_ports[i], self.scheme)}" for i in range(MEMBERS)
        )
        self.servers = []
        for i in range(MEMBERS):
            home = self.workdir / f"etcd{i}"
            data = home / "data"
            data.mkdir(mode=0o700, parents=True, exist_ok=True)
            argv = etcd_argv(
                DEFAULT_BINARY,
                name=f"etcd{i}",
                data_dir=data,
                host=HOST,
                client_port=self.client_ports[i],
                peer_port=peer_ports[i],
                initial_cluster=cluster,
                token=token,
                state="new",
                heartbeat_ms=HEARTBEAT_MS,
                election_ms=ELECTION_MS,
                tls=self.tls,
            )
            self.servers.append(ServerProcess(f"etcd{i}", argv, home / "etcd.log", cwd=home))
        for server in self.servers:
            server.start()
        for i in range(MEMBERS):
            self._wait_serving(i)

    def _wait_serving(self, index: int) -> None:
        server = self.servers[index]

        def serves() -> bool:
            if not server.alive():
                raise RuntimeError(f"{server.name} exited:\n{server.log_tail()}")
            with EtcdClient([self.endpoint(index)], timeout=2.0, tls=self.client_tls) as client:
                client.range(b"/hacore/")  # linearizable: needs an elected leader
            return True

        try:
            wait_for(serves, START_TIMEOUT, interval=0.1, what=f"{server.name} to serve")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{server.log_tail()}") from exc

    def endpoint(self, index: int) -> str:
        return url(HOST, self.client_ports[index], self.scheme)

    def stop(self) -> None:
        for store in self.managed:
            with contextlib.suppress(Exception):  # stop everything else regardless
                store.stop()
        for server in self.servers:
            server.stop()

    def settings(self) -> dict[str, Any]:
        return {"endpoints": [self.endpoint(i) for i in range(MEMBERS)], **self.tls_settings()}

    def unreachable_settings(self) -> dict[str, Any]:
        """Closed loopback ports: every connection is refused."""
        ports = (free_port(), free_port())
        return {"endpoints": [url(HOST, p, self.scheme) for p in ports], **self.tls_settings()}

    def kill_member(self, index: int = 0) -> None:
        self.servers[index].kill()

    def restart_member(self, index: int = 0) -> None:
        server = self.servers[index]
        if server.alive():
            server.stop()
        server.start()
        self._wait_serving(index)

    def freeze(self) -> None:
        for server in self.servers:
            server.freeze()

    def thaw(self) -> None:
        for server in self.servers:
            server.thaw()

    def make_managed_store(self, name: str, data_dir: Path) -> ManagedStore:
        store = EtcdManagedStore(
            {
                "client_port": free_port(),
                "peer_port": free_port(),
                "heartbeat_interval": HEARTBEAT_MS,
                "election_timeout": ELECTION_MS,
            },
            name=name,
            host=HOST,
            data_dir=data_dir,
            tls=self.tls,
        )
        self.managed.append(store)
        return store


class EtcdTlsHarness(EtcdHarness):
    """Every member, managed store and backend on one node certificate for 127.0.0.1."""

    def start(self) -> None:
        pki = self.workdir / "pki"
        ca = create_ca("etcd-harness", pki)
        node = issue_node_certificate(ca, "etcd-harness", [HOST, "localhost"], pki)
        self.tls = TlsFiles(ca_file=node.ca_file, cert_file=node.cert_file, key_file=node.key_file)
        super().start()
