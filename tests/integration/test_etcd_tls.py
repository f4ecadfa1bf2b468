"""The etcd plugin on the cluster CA: a managed etcd speaking mutual TLS on both its ports.

Each node has its own certificate from one internal CA, as ``cluster start`` / ``join`` make
them. Three managed members are built the way the plugin joins nodes (learner, then
promotion) entirely over TLS; the consensus client runs on the node's files and keeps working
when a member goes; clients and peers without a certificate from that CA, or speaking plain
HTTP, are refused. The whole consensus contract also runs against a TLS cluster
(:class:`~hacore_plugins.etcd.testing.EtcdTlsHarness`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest

from hacore.backends.client_tls import ClientTls
from hacore.backends.records import EventKind, TlsFiles
from hacore.errors import ConfigError, ManagedStoreError, StoreUnavailableError
from hacore.pki import create_ca, issue_node_certificate
from hacore.testing.contract import ConsensusContract
from hacore.testing.harness import ConsensusHarness
from hacore.testing.procs import free_port, wait_for
from hacore.testing.pytest_plugin import run_harness
from hacore_plugins.etcd.backend import EtcdConsensus
from hacore_plugins.etcd.client import EtcdClient, https_verify
from hacore_plugins.etcd.managed import EtcdManagedStore
from hacore_plugins.etcd.settings import EtcdSettings
from hacore_plugins.etcd.testing import EtcdHarness, EtcdTlsHarness

pytestmark = pytest.mark.skipif(
    EtcdHarness.unavailable_reason() is not None, reason=str(EtcdHarness.unavailable_reason())
)

HOST = "127.0.0.1"
NAMES = ("a", "b", "c")
WAIT = 60.0


@attrs.frozen
class Pki:
    nodes: dict[str, TlsFiles]
    #: a certificate for the same addresses, from another CA
    stranger: TlsFiles


@attrs.frozen
class Trio:
    stores: dict[str, EtcdManagedStore]
    #: the join material each newcomer received, after a JSON round trip
    specs: dict[str, dict[str, Any]]

    def client(self, name: str = "a") -> EtcdClient:
        store = self.stores[name]
        assert store.client_tls is not None
        endpoints = [s.client_url for s in self.stores.values()]
        return EtcdClient(endpoints, timeout=5.0, tls=store.client_tls)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("etcd-tls-pki")
    ca = create_ca("etcd-tls", root / "ca")
    nodes = {}
    for name in NAMES:
        cert = issue_node_certificate(ca, name, [HOST, "localhost"], root / name)
        nodes[name] = TlsFiles(cert.ca_file, cert.cert_file, cert.key_file)
    other = create_ca("etcd-tls", root / "other")
    cert = issue_node_certificate(other, "a", [HOST, "localhost"], root / "stranger")
    return Pki(nodes, TlsFiles(cert.ca_file, cert.cert_file, cert.key_file))


def _store(
    name: str, data_dir: Path, tls: TlsFiles | None, ports: tuple[int, int]
) -> EtcdManagedStore:
    settings = {"client_port": ports[0], "peer_port": ports[1]}
    return EtcdManagedStore(settings, name=name, host=HOST, data_dir=data_dir, tls=tls)


@pytest.fixture(scope="module")
def trio(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trio]:
    root = tmp_path_factory.mktemp("etcd-tls")
    stores = {
        name: _store(name, root / name, pki.nodes[name], (free_port(), free_port()))
        for name in NAMES
    }
    specs: dict[str, dict[str, Any]] = {}
    try:
        a = stores["a"]
        a.bootstrap()
        for name in ("b", "c"):
            newcomer = stores[name]
            specs[name] = json.loads(json.dumps(a.add_member(newcomer.identity())))
            learner = next(m for m in a.members() if m.peer_url == newcomer.peer_url)
            assert not learner.voting
            assert newcomer.join(specs[name]).voting
        yield Trio(stores, specs)
    finally:
        for store in stores.values():
            store.stop()
    assert not any(store.is_running() for store in stores.values())


def _consensus(
    settings: dict[str, Any], tls: TlsFiles | None = None, *, node: str = "n", retry: float = 2.0
) -> EtcdConsensus:
    return EtcdConsensus(
        settings, namespace="tls", node_name=node, ttl=5.0, retry_timeout=retry, tls=tls
    )


def _https(urls: list[str]) -> bool:
    return bool(urls) and all(u.startswith(f"https://{HOST}:") for u in urls)


# -- the managed store ---------------------------------------------------------------------


def test_members_join_and_serve_over_tls(trio: Trio) -> None:
    for name, spec in trio.specs.items():
        assert spec["peer_url"] == trio.stores[name].peer_url
        peers = [entry.split("=", 1)[1] for entry in spec["initial_cluster"].split(",")]
        assert _https(peers) and _https(spec["endpoints"])
    members = trio.stores["a"].members()
    # healthy: every member's /health answered the node's certificate over https
    assert [(m.name, m.voting, m.healthy) for m in members] == [
        ("a", True, True),
        ("b", True, True),
        ("c", True, True),
    ]
    with trio.client() as client:
        raw = client.member_list()
    assert _https([u for m in raw for u in (*m.peer_urls, *m.client_urls)])
    assert len(raw) == 3
    for store in trio.stores.values():
        assert json.loads((store.data_dir / "etcd.json").read_text())["tls"] is True


def test_peer_port_demands_a_certificate_from_the_cluster_ca(trio: Trio, pki: Pki) -> None:
    node = ClientTls.from_node(pki.nodes["b"])
    no_cert = ClientTls(ca_file=node.ca_file)
    stranger = ClientTls(node.ca_file, str(pki.stranger.cert_file), str(pki.stranger.key_file))
    for store in trio.stores.values():
        members = f"{store.peer_url}/members"
        # the peer API itself answers a peer of the cluster...
        listed = httpx.get(members, verify=https_verify(node), timeout=10).json()
        assert len(listed) == 3
        # ...not a plain HTTP request, nor TLS without a certificate of the cluster CA
        with pytest.raises(httpx.TransportError):
            httpx.get(members.replace("https://", "http://"), timeout=10)
        for refused in (no_cert, stranger):
            with pytest.raises(httpx.TransportError):
                httpx.get(members, verify=https_verify(refused), timeout=10).raise_for_status()


def test_client_port_refuses_whoever_is_not_of_the_cluster(trio: Trio, pki: Pki) -> None:
    settings = trio.stores["a"].client_settings()
    endpoints = settings["endpoints"]
    assert _https(endpoints)
    own = {"ca_file": settings["ca_file"]}
    stranger = {"cert_file": str(pki.stranger.cert_file), "key_file": str(pki.stranger.key_file)}
    refused = {
        "BAD_CERTIFICATE|CERTIFICATE_REQUIRED": {"endpoints": endpoints, **own},
        "BAD_CERTIFICATE|UNKNOWN_CA": {"endpoints": endpoints, **own, **stranger},
        "CERTIFICATE_VERIFY_FAILED": {**settings, "ca_file": str(pki.stranger.ca_file)},
        "reset by peer|disconnected": {
            "endpoints": [e.replace("https://", "http://") for e in endpoints]
        },
    }
    for why, bad in refused.items():
        with _consensus(bad, retry=0.5) as backend, pytest.raises(StoreUnavailableError) as err:
            backend.get("x")
        assert re.search(why, str(err.value)), str(err.value)
    # the server's name is checked: its certificate names 127.0.0.1 and localhost, no other
    with _consensus(settings) as ok:
        assert ok.put("hostname-check", b"1")
    localhost = [e.replace(HOST, "localhost") for e in endpoints]
    with _consensus({**settings, "endpoints": localhost}) as ok:
        assert ok.get("hostname-check") is not None
    context = https_verify(ClientTls.from_node(pki.nodes["a"]))
    elsewhere = {"sni_hostname": "elsewhere.example"}  # what a client naming another host sends
    with (
        httpx.Client(verify=context, timeout=10) as client,
        pytest.raises(httpx.ConnectError, match=r"Hostname mismatch|doesn't match"),
    ):
        client.get(f"{endpoints[0]}/health", extensions=elsewhere)


def test_campaign_renew_and_watch_survive_a_member_loss(trio: Trio, pki: Pki) -> None:
    a, b = trio.stores["a"], trio.stores["b"]
    # as the agent gets it: client_settings() of the TLS store, and the node's tls beside it
    holder = _consensus(a.client_settings(), pki.nodes["a"], node="holder")
    # endpoints only: the node's tls supplies the rest (as for an external etcd on the CA)
    endpoints = {"endpoints": a.client_settings()["endpoints"]}
    assert endpoints["endpoints"][0] == a.client_url
    observer = _consensus(endpoints, pki.nodes["b"], node="observer")
    with holder, observer:
        watcher = observer.watch("")
        lease = holder.campaign()
        assert lease is not None and observer.campaign() is None
        event = watcher.get(WAIT)
        assert event is not None and event.kind is EventKind.PUT
        assert holder.renew(lease)

        a.stop()  # the first endpoint of both clients: the watch stream was on it
        try:
            assert holder.renew(lease)
            assert holder.put("after-loss", b"1")
            seen = []
            while (event := watcher.get(WAIT)) is not None and event.key != "after-loss":
                seen.append(event)
            assert event is not None and event.value == b"1", seen
            assert observer.leader() is not None
        finally:
            a.start()  # and it comes back on its TLS material
        wait_for(lambda: all(m.healthy for m in b.members()), WAIT, what="a to be healthy")
        holder.resign(lease)
        watcher.close()


def test_a_store_set_up_with_tls_does_not_run_without_it(trio: Trio, tmp_path: Path) -> None:
    a, c = trio.stores["a"], trio.stores["c"]
    plain_a = _store("a", a.data_dir, None, (a.client_port, a.peer_port))
    with pytest.raises(ManagedStoreError, match="was set up with TLS and this node now runs"):
        plain_a.start()
    assert a.is_running()
    # join material of a TLS store handed to a node without TLS
    plain_c = _store("c", tmp_path / "c", None, (c.client_port, c.peer_port))
    with pytest.raises(ManagedStoreError, match="store runs with TLS and this node without"):
        plain_c.join(trio.specs["c"])
    assert not (tmp_path / "c").exists()


# -- settings --------------------------------------------------------------------------------


def test_settings_name_tls_files_either_way(pki: Pki) -> None:
    files = pki.nodes["a"]
    ours = {"ca_file": str(files.ca_file), "cert_file": str(files.cert_file)}
    patroni = {
        "cacert": str(files.ca_file),
        "cert": str(files.cert_file),
        "key": str(files.key_file),
    }
    endpoints = {"endpoints": ["https://127.0.0.1:2379"]}
    expected = ClientTls.from_node(files)
    assert EtcdSettings.parse({**endpoints, **patroni}).tls == expected
    assert EtcdSettings.parse({**endpoints, **ours, "key": str(files.key_file)}).tls == expected
    assert EtcdSettings.parse({**endpoints, **ours, **patroni}).tls == expected
    with pytest.raises(
        ConfigError, match=r"consensus\.ca_file and consensus\.cacert name different files"
    ):
        EtcdSettings.parse({**endpoints, **patroni, "ca_file": str(pki.stranger.ca_file)})
    with pytest.raises(ConfigError, match=r"consensus\.cert_file needs consensus\.ca_file"):
        EtcdSettings.parse({**endpoints, "cert": str(files.cert_file)})
    with pytest.raises(ConfigError, match=r"consensus\.cacert: no such file /nonexistent"):
        EtcdSettings.parse({**endpoints, "cacert": "/nonexistent"})


def test_the_nodes_tls_applies_unless_the_settings_name_a_ca(pki: Pki) -> None:
    endpoints = {"endpoints": ["https://127.0.0.1:2379"]}
    node = pki.nodes["a"]
    assert EtcdSettings.parse(endpoints).tls == ClientTls()
    assert EtcdSettings.parse(endpoints, node).tls == ClientTls.from_node(node)
    # an external etcd with a CA of its own keeps it, and its own client certificate
    external = {**endpoints, "cacert": str(pki.stranger.ca_file)}
    assert EtcdSettings.parse(external, node).tls == ClientTls(str(pki.stranger.ca_file))


# -- the consensus contract, over TLS ------------------------------------------------------


@pytest.fixture(scope="module")
def consensus_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsensusHarness]:
    """Replaces the plugin's harness in this module: 3 members with mutual TLS."""
    yield from run_harness(EtcdTlsHarness, tmp_path_factory.mktemp("etcd-tls-contract"))


def test_the_tls_harness_really_uses_tls(consensus_harness: ConsensusHarness) -> None:
    settings = consensus_harness.settings()
    assert _https(settings["endpoints"]) and settings["cert_file"]
    untrusting = _consensus({"endpoints": settings["endpoints"]}, retry=1.0)
    with untrusting, pytest.raises(StoreUnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
        untrusting.get("x")


class TestConsensusContractOverTls(ConsensusContract):
    # Lease timing and refused connections do not depend on TLS (the plain run has them);
    # leaving them out keeps this module within its time budget.
    test_renewed_session_outlives_its_ttl = None  # type: ignore[assignment]
    test_unreachable_store_raises_instead_of_hanging = None  # type: ignore[assignment]
