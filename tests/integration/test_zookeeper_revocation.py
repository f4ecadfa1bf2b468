"""Removing a node revokes its certificate for the managed ZooKeeper too (issue 10, finding 4;
docs/security.md, "Removal revokes").

A real two-node cluster (managed ZooKeeper, TLS) formed through the CLI; the standby is
removed. Then what a copy of its disk holds, its certificate and key, is tried against the
ZooKeeper server left, as an attacker would: the client port (a TLS four-letter word, and a
kazoo session that would read and write hacore's znodes) and the two quorum ports a removed
server would use to come back as a peer (election, and the leader's learner port). Each is
refused at the TLS handshake, while the same attempts with the remaining member's own
certificate get in, and the same attempt with the removed node's certificate got in before
the removal: the refusal is the revocation.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_fixtures import WAIT, CliCluster, Node, make_root
from kazoo.client import KazooClient
from kazoo.handlers.threading import KazooTimeoutError

from hacore.backends.client_tls import ClientTls
from hacore.testing.procs import wait_for
from hacore_plugins.postgresql.settings import default_bin_dir
from hacore_plugins.zookeeper import server as zk
from hacore_plugins.zookeeper.backend import ROOT
from hacore_plugins.zookeeper.tls import client_context, kazoo_options

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(default_bin_dir() is None, reason="no PostgreSQL binaries installed"),
    pytest.mark.skipif(zk.missing_runtime() is not None, reason=str(zk.missing_runtime())),
]

#: where a removed server would come back as a peer: elections, and the leader's learner port
QUORUM_PORTS = ("election_port", "peer_port")


def material(directory: Path) -> ClientTls:
    return ClientTls(
        ca_file=str(directory / "ca.crt"),
        cert_file=str(directory / "node.crt"),
        key_file=str(directory / "node.key"),
    )


def own(node: Node) -> ClientTls:
    return material(node.data_dir / "pki" / "node")


def client_port(node: Node) -> str:
    return f"{node.ip}:{node.store['client_port']}"


def four_letter_word(node: Node, tls: ClientTls) -> str | None:
    """``ruok`` on ``node``'s ZooKeeper with ``tls``: None when answered ``imok``, else why not."""
    try:
        answer = zk.four_letter_word(client_port(node), "ruok", 10.0, client_context(tls))
    except OSError as err:
        return f"{type(err).__name__}: {err}"
    return None if answer.startswith("imok") else f"answered {answer!r}"


def quorum_handshake(node: Node, port: int, tls: ClientTls) -> str | None:
    """A TLS connection to a quorum port of ``node`` with ``tls``; None when the server keeps
    it open (it waits for a peer's first message), else how it ended. With TLS 1.3 a refused
    client certificate shows at the first read, not in the handshake."""
    try:
        with (
            socket.create_connection((node.ip, port), timeout=10.0) as raw,
            client_context(tls).wrap_socket(raw, server_hostname=node.ip) as sock,
        ):
            sock.settimeout(2.0)
            try:
                data = sock.recv(1)
            except TimeoutError:
                return None
            return f"closed by the server ({data!r})"
    except OSError as err:
        return f"{type(err).__name__}: {err}"


def kazoo_session(node: Node, tls: ClientTls) -> KazooClient | None:
    """A started kazoo session on ``node``'s ZooKeeper with ``tls``, None when none came."""
    client = KazooClient(hosts=client_port(node), timeout=5.0, **kazoo_options(tls))
    try:
        client.start(timeout=5.0)
    except KazooTimeoutError:
        with contextlib.suppress(Exception):
            client.stop()
            client.close()
        return None
    return client


def close(client: KazooClient) -> None:
    with contextlib.suppress(Exception):
        client.stop()
        client.close()


@contextlib.contextmanager
def two_node_cluster() -> Iterator[CliCluster]:
    """n1 starts a cluster on a managed ZooKeeper and n2 joins it, through the CLI."""
    cluster = CliCluster(make_root(), "zookeeper")
    try:
        first = cluster.add("n1")
        start = ["cluster", "start", "-c", str(first.config_path), "--timeout", str(WAIT)]
        out = cluster.cli(*start).output
        found = re.search(r"cluster CA fingerprint \(SHA-256\): ([0-9A-F:]+)", out)
        assert found, out
        second = cluster.add("n2")
        trust = ["--ca-fingerprint", found.group(1), "--timeout", str(WAIT)]
        cluster.cli(*second.join_arguments(first), *trust)
        yield cluster
    finally:
        cluster.cleanup()
        if os.environ.get("HACORE_KEEP_TEST_DIRS"):
            print(f"kept {cluster.root}")
        else:
            shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture(scope="module")
def removed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with two_node_cluster() as cluster:
        active = cluster.active()
        victim = next(n for n in cluster.nodes.values() if n is not active)
        loot_dir = tmp_path_factory.mktemp("zk-loot") / "pki"
        shutil.copytree(victim.data_dir / "pki" / "node", loot_dir)
        loot = material(loot_dir)
        # the attack works while the node is a member: its certificate opens every port
        before = {"client_port": four_letter_word(active, loot)}
        for port in QUORUM_PORTS:
            before[port] = quorum_handshake(active, active.store[port], loot)
        cluster.cli("cluster", "nodes", "remove", victim.name, "--yes")
        wait_for(
            lambda: victim.probe() is None or victim.probe()["state"] == "removed",
            WAIT,
            what=f"{victim.name} to step down",
        )
        victim.cleanup()  # the attacker is someone else with the disk; the node itself is gone
        yield {"cluster": cluster, "active": active, "loot": loot, "before": before}


def test_the_removed_nodes_certificate_opens_no_zookeeper_port(removed: dict[str, Any]) -> None:
    active, loot = removed["active"], removed["loot"]
    assert set(removed["before"].values()) == {None}, f"before the removal: {removed['before']}"
    # the CRL reaches the node within seconds; Java reads it again within 30 s
    refused = str(
        wait_for(
            lambda: four_letter_word(active, loot),
            WAIT,
            interval=1.0,
            what="the ZooKeeper server to refuse the removed node's certificate",
        )
    )
    assert "imok" not in refused, refused
    log = active.data_dir / "store" / "zookeeper.log"
    wait_for(
        lambda: "Certificate has been revoked" in log.read_text(errors="replace"),
        30,
        interval=0.5,
        what="ZooKeeper to log why it refused the handshake",
    )
    assert four_letter_word(active, own(active)) is None
    for port in QUORUM_PORTS:
        assert quorum_handshake(active, active.store[port], own(active)) is None, port
        refused = quorum_handshake(active, active.store[port], loot)
        assert refused is not None, f"{port} kept the removed node's connection"


def test_the_removed_nodes_certificate_reads_and_writes_nothing(
    removed: dict[str, Any],
) -> None:
    cluster, active, loot = removed["cluster"], removed["active"], removed["loot"]
    wait_for(lambda: four_letter_word(active, loot), WAIT, 1.0, what="the revocation to apply")
    namespace = f"{ROOT}/{cluster.namespace}"
    intruder = kazoo_session(active, loot)
    if intruder is not None:
        try:
            children = intruder.get_children(namespace)
            intruder.create(f"{namespace}/revocation-test-{uuid.uuid4().hex[:6]}", b"x")
        finally:
            close(intruder)
        pytest.fail(f"the removed node's certificate read {namespace}: {children}")
    # control: the member's own certificate reads hacore's keys and writes
    member = kazoo_session(active, own(active))
    assert member is not None
    try:
        assert member.get_children(namespace)
        path = member.create("/hacore-revocation-test-", b"x", sequence=True, ephemeral=True)
        assert member.get(path)[0] == b"x"
    finally:
        close(member)


def test_the_member_left_keeps_working(removed: dict[str, Any]) -> None:
    cluster, active = removed["cluster"], removed["active"]
    assert cluster.cli_json("cluster", "status")["active"] == active.name
    probe = active.probe()
    assert probe is not None and probe["http_status"] == 200, probe
    with active.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS after_zk_removal (id int)")
        conn.execute("INSERT INTO after_zk_removal VALUES (1)")
