"""The ZooKeeper plugin with TLS, on real servers: a managed ensemble grown by reconfiguration
whose quorum and client traffic use the cluster CA, and clients that must prove themselves.

One three-server ensemble (bootstrap, then two joins) serves the whole module; the last test
shrinks it and restarts a server.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from kazoo.client import KazooClient
from kazoo.handlers.threading import KazooTimeoutError

from hacore.backends.client_tls import ClientTls
from hacore.backends.consensus import LEADER_KEY
from hacore.backends.records import EventKind, TlsFiles
from hacore.errors import ConfigError, ManagedStoreError, StoreUnavailableError
from hacore.pki import create_ca, issue_node_certificate, revocation
from hacore.testing.procs import free_port
from hacore_plugins.zookeeper import server as zk
from hacore_plugins.zookeeper.backend import ZooKeeperConsensus
from hacore_plugins.zookeeper.managed import TLS_DIR, ZooKeeperManagedStore
from hacore_plugins.zookeeper.settings import parse_settings
from hacore_plugins.zookeeper.testing import HOST, TEST_JVM_OPTIONS
from hacore_plugins.zookeeper.tls import SERVER_PEM

pytestmark = [
    pytest.mark.xdist_group("zookeeper"),
    pytest.mark.skipif(zk.missing_runtime() is not None, reason=str(zk.missing_runtime())),
]


@attrs.frozen
class Pki:
    nodes: dict[str, TlsFiles]
    #: a certificate from another CA, with that CA as its trust anchor
    stranger: TlsFiles
    #: a certificate of the cluster CA on every server's revocation list
    revoked: TlsFiles


def _files(cert: Any) -> TlsFiles:
    return TlsFiles(ca_file=cert.ca_file, cert_file=cert.cert_file, key_file=cert.key_file)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("zk-pki")
    ca = create_ca("zk-tls", root / "ca")
    other = create_ca("elsewhere", root / "other-ca")
    nodes = {
        name: _files(issue_node_certificate(ca, name, [HOST, "localhost"], root / name))
        for name in ("m1", "m2", "m3", "client")
    }
    revoked = issue_node_certificate(ca, "revoked", [HOST, "localhost"], root / "revoked")
    crl = revocation.build_crl(ca, [revoked.certificate.serial_number])
    for name in nodes:
        # the servers check revocation against the node's CRL (the agent keeps it current)
        revocation.install_crl(root / name / revocation.CRL_FILE, crl, ca.certificate)
    stranger = _files(issue_node_certificate(other, "stranger", [HOST], root / "stranger"))
    return Pki(nodes, stranger, _files(revoked))


def _store(pki: Pki, root: Path, name: str) -> ZooKeeperManagedStore:
    return ZooKeeperManagedStore(
        {
            "client_port": free_port(),
            "peer_port": free_port(),
            "election_port": free_port(),
            "jvm_options": list(TEST_JVM_OPTIONS),
        },
        name=name,
        host=HOST,
        data_dir=root / name,
        tls=pki.nodes[name],
    )


@pytest.fixture(scope="module")
def ensemble(
    pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ZooKeeperManagedStore]]:
    root = tmp_path_factory.mktemp("zk-tls")
    stores = {name: _store(pki, root, name) for name in ("m1", "m2", "m3")}
    try:
        stores["m1"].bootstrap()
        stores["m2"].join(stores["m1"].add_member(stores["m2"].identity()))
        stores["m3"].join(stores["m2"].add_member(stores["m3"].identity()))
        yield stores
    finally:
        for store in stores.values():
            store.stop()


@pytest.fixture
def make(pki: Pki) -> Iterator[Any]:
    made: list[ZooKeeperConsensus] = []
    namespace = f"tls{uuid.uuid4().hex[:8]}"

    def factory(name: str, settings: dict[str, Any], **options: Any) -> ZooKeeperConsensus:
        backend = ZooKeeperConsensus(
            settings,
            namespace=namespace,
            node_name=name,
            ttl=options.pop("ttl", 5.0),
            retry_timeout=options.pop("retry_timeout", 10.0),
            **options,
        )
        made.append(backend)
        return backend

    yield factory
    for backend in made:
        backend.close()


def _context(trust: Path, cert: TlsFiles | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(trust))
    if cert is not None:
        context.load_cert_chain(cert.cert_file, cert.key_file)
    return context


def _handshake(address: str, context: ssl.SSLContext) -> ssl.SSLSocket:
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    try:
        tls = context.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise
    tls.settimeout(10)
    return tls


def _ask(address: str, context: ssl.SSLContext, word: bytes = b"ruok") -> bytes:
    """A four-letter word over TLS; the server proves it accepted us by answering."""
    with _handshake(address, context) as tls:
        tls.sendall(word)
        answer = b""
        while chunk := tls.recv(4096):
            answer += chunk
    return answer


def _refused(address: str, context: ssl.SSLContext) -> bool:
    """With TLS 1.3 the server's verdict on our certificate arrives after the handshake."""
    try:
        return _ask(address, context) != b"imok"
    except OSError:  # ssl.SSLError included
        return True


def _listening_ports(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


# -- settings (no server) -------------------------------------------------------------------


def test_settings_choose_tls_files(pki: Pki) -> None:
    node, stranger = pki.nodes["client"], pki.stranger
    hosts = {"hosts": ["h:1"]}
    assert parse_settings(hosts).tls is None
    assert parse_settings(hosts, node).tls == ClientTls.from_node(node)
    assert parse_settings({**hosts, "use_tls": False}, node).tls is None
    external = {"ca_file": str(stranger.ca_file)}
    assert parse_settings({**hosts, **external}, node).tls == ClientTls(str(stranger.ca_file))
    assert parse_settings({**hosts, "use_tls": True}).tls == ClientTls()
    bad_settings: list[tuple[dict[str, Any], str]] = [
        ({"cert_file": str(node.cert_file)}, "cert_file and key_file go together"),
        ({"ca_file": 3}, "ca_file must be a file path"),
        ({"use_tls": "yes"}, "use_tls must be true or false"),
        ({"use_tls": False, **external}, "use_tls is false"),
    ]
    for bad, message in bad_settings:
        with pytest.raises(ConfigError, match=message):
            parse_settings({**hosts, **bad})
    with pytest.raises(ConfigError, match="cannot use the ZooKeeper TLS files"):
        ZooKeeperConsensus(
            {**hosts, "ca_file": "/nonexistent/ca.pem"},
            namespace="n",
            node_name="x",
            ttl=5.0,
            retry_timeout=1.0,
        )


def test_join_refuses_a_spec_of_the_other_kind(pki: Pki, tmp_path: Path) -> None:
    secure = _store(pki, tmp_path, "m2")
    plain = ZooKeeperManagedStore(
        dict(secure.settings), name="m3", host=HOST, data_dir=tmp_path / "plain"
    )
    spec = {"server_id": 2, "servers": ["server.1=127.0.0.1:1:2:participant;127.0.0.1:3"]}
    with pytest.raises(ManagedStoreError, match="with TLS but the ensemble runs without"):
        secure.join({**spec, "super_password": "x"})
    with pytest.raises(ManagedStoreError, match="without TLS but the ensemble runs with"):
        plain.join({**spec, "super_password": "x", "tls": True, "clients": {"1": "h:3"}})
    assert not secure.data_dir.exists() and not plain.data_dir.exists()


# -- the managed ensemble --------------------------------------------------------------------


@pytest.mark.timeout(600, method="signal")
def test_ensemble_grows_over_tls_without_a_plain_client_port(
    pki: Pki, ensemble: dict[str, ZooKeeperManagedStore]
) -> None:
    addresses = {name: store.client_address for name, store in ensemble.items()}
    members = ensemble["m1"].members()
    assert [(m.name, m.client_url, m.voting, m.healthy) for m in members] == [
        (name, addresses[name], True, True) for name in ("m1", "m2", "m3")
    ]
    for name, store in ensemble.items():
        settings = store.client_settings()
        assert sorted(settings["hosts"]) == sorted(addresses.values()), name
        node = pki.nodes[name]
        assert (settings["ca_file"], settings["cert_file"], settings["key_file"]) == (
            str(node.ca_file),
            str(node.cert_file),
            str(node.key_file),
        )
        key_store = store.data_dir / TLS_DIR / SERVER_PEM
        assert key_store.stat().st_mode & 0o777 == 0o600
        # The static file as ZooKeeper rewrote it, and its dynamic file: no plain client port.
        static = (store.data_dir / zk.STATIC_FILE).read_text()
        assert f"secureClientPort={store.config.client_port}\n" in static
        assert "sslQuorum=true\n" in static and "ssl.clientAuth=need\n" in static
        assert "clientPort=" not in static.replace("secureClientPort=", "")
        dynamic = zk.newest_dynamic_file(store.data_dir)
        assert dynamic is not None and ";" not in dynamic.read_text()
        pid = int((store.data_dir / "zookeeper.pid").read_text())
        config = store.config
        ports = _listening_ports(pid)
        assert config.client_port in ports and config.election_port in ports, ports
        assert ports <= {config.client_port, config.peer_port, config.election_port}, ports

    client = pki.nodes["client"]
    for name, store in ensemble.items():
        # The client port answers TLS clients showing a CA certificate, and nobody else.
        assert _ask(store.client_address, _context(client.ca_file, client)) == b"imok"
        assert zk.server_mode(store.client_address) is None
        # Quorum traffic is TLS too: the election port shows the server's node certificate.
        election = f"{HOST}:{store.config.election_port}"
        with _handshake(election, _context(client.ca_file, client)) as tls:
            peer = tls.getpeercert()
            assert peer is not None
            assert ("commonName", name) in [item for rdn in peer["subject"] for item in rdn]


@pytest.mark.timeout(300, method="signal")
def test_campaign_renew_and_watch_over_tls(
    pki: Pki, ensemble: dict[str, ZooKeeperManagedStore], make: Any
) -> None:
    # As an agent builds them: the managed store's client settings and the node's files.
    a = make("a", ensemble["m1"].client_settings(), tls=pki.nodes["m1"])
    b = make("b", ensemble["m3"].client_settings(), tls=pki.nodes["m3"])
    with b.watch(LEADER_KEY) as watcher:
        lease = a.campaign()
        assert lease is not None
        assert b.campaign() is None
        assert a.renew(lease)
        leader = b.leader()
        assert leader is not None and (leader.name, leader.token) == ("a", lease.token)
        event = watcher.get(timeout=30.0)
        assert event is not None and (event.kind, event.key) == (EventKind.PUT, LEADER_KEY)
        a.resign(lease)
        event = watcher.get(timeout=30.0)
        assert event is not None and (event.kind, event.key) == (EventKind.DELETE, LEADER_KEY)
    assert b.campaign() is not None
    # The TLS connection does not slow pipelined reads down to the ping interval (a third
    # of the 5 s session): slowed, 20 reads would take about 20 intervals; the bound is half
    # of that, loose on a busy machine and still telling (unslowed they take milliseconds).
    ping = 5.0 / 3
    started = time.monotonic()
    for _ in range(20):
        assert b.view().leader is not None
    assert time.monotonic() - started < 20 * ping / 2


@pytest.mark.timeout(300, method="signal")
def test_clients_without_the_right_certificate_or_trust_are_refused(
    pki: Pki, ensemble: dict[str, ZooKeeperManagedStore], make: Any
) -> None:
    address = ensemble["m2"].client_address
    client, stranger = pki.nodes["client"], pki.stranger
    # No client certificate, one from another CA, or a revoked one: the server ends the
    # handshake.
    for refused in (
        _context(client.ca_file, None),
        _context(client.ca_file, stranger),
        _context(client.ca_file, pki.revoked),
    ):
        assert _refused(address, refused)
    # Trusting another CA only: this side refuses the server's certificate.
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(address, _context(stranger.ca_file, stranger)).close()

    hosts = [address]
    for settings in (
        {"hosts": hosts, "ca_file": str(client.ca_file)},
        {"hosts": hosts, **ClientTls.from_node(stranger).settings()},
        {"hosts": hosts, **ClientTls.from_node(pki.revoked).settings()},
        {"hosts": hosts, "use_tls": False},
    ):
        node = make("intruder", settings, retry_timeout=1.0)
        with pytest.raises(StoreUnavailableError, match="answered within"):
            node.get("anything")
    trusted = make("trusted", {"hosts": hosts}, tls=client)
    assert trusted.get("anything") is None

    # A plain kazoo client gets no session from the secure port.
    plain = KazooClient(hosts=address, timeout=5.0)
    try:
        with pytest.raises(KazooTimeoutError):
            plain.start(timeout=2.0)
    finally:
        plain.stop()
        plain.close()


@pytest.mark.timeout(600, method="signal")
def test_remove_member_and_restart_over_tls(
    pki: Pki, ensemble: dict[str, ZooKeeperManagedStore], make: Any
) -> None:
    m1, m2, m3 = ensemble["m1"], ensemble["m2"], ensemble["m3"]
    m2.remove_member("m3")
    m3.stop()
    assert [m.name for m in m1.members()] == ["m1", "m2"]
    for store in (m1, m2):
        assert sorted(store.client_settings()["hosts"]) == sorted(
            [m1.client_address, m2.client_address]
        )
    m1.stop()
    m1.start()
    deadline = time.monotonic() + 60
    while not all(m.healthy for m in m2.members()):
        assert time.monotonic() < deadline, m2.members()
        time.sleep(0.5)
    node = make("after", m2.client_settings(), tls=pki.nodes["m2"])
    assert node.put("k", b"v")
    assert node.campaign() is not None
