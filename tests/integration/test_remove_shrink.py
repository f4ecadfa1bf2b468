"""Removing standbys shrinks the store under a running active: 2 → 1 and 3 → 2 → 1.

A two-member etcd has no quorum without either member, so a removal that stops the leaving
node's store server before the store forgets it leaves the active unable to renew its lease:
it fences. These tests remove standbys through the real CLI with a writer running against
the active the whole time, and require that the active never loses writability (no failed
write, every acknowledged row present, the same fencing token), that ``nodes list`` shows the
members left, and that the store's member list shrank.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from typing import Any

import attrs
import httpx
import pytest
from cluster_fixtures import (
    TIMING,
    WAIT,
    CliCluster,
    Node,
    etcdctl,
    formed_cluster,
    make_root,
)
from row_writer import RowWriter

from hacore.testing.procs import holds_for, wait_for
from hacore_plugins.postgresql.settings import default_bin_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(default_bin_dir() is None, reason="no PostgreSQL binaries installed"),
]


@attrs.define
class ActiveWatch:
    """What a writer on the active checks: every write acknowledged, the active's probe 200
    throughout, every acknowledged row still there."""

    node: Node
    writer: RowWriter = attrs.field(init=False)
    not_active: list[dict[str, Any]] = attrs.field(factory=list)

    def __attrs_post_init__(self) -> None:
        self.writer = RowWriter(
            self.node.connect,
            "INSERT INTO shrink (id) VALUES (%s)",
            interval=0.05,
            after_each=self._probe,
        )

    def _probe(self) -> None:
        probe = self.node.probe()
        if probe is None or probe["http_status"] != 200:
            self.not_active.append(probe or {"answer": None})

    def check(self) -> None:
        errors = self.writer.errors
        assert not errors, f"the active lost writability: {errors[:5]}"
        assert not self.not_active, f"the active stopped being active: {self.not_active[:3]}"
        with self.node.connect() as conn:
            present = {row[0] for row in conn.execute("SELECT id FROM shrink")}
        missing = self.writer.missing(present)
        assert not missing, f"{len(missing)} acknowledged rows are missing"


def lease_token(cluster: CliCluster, node: Node) -> int:
    """The node's fencing token, from its own ``GET /nodes/<name>`` (the read role's: the
    probes and ``/metrics`` omit it)."""
    resp = httpx.get(
        f"{node.url}/nodes/{node.name}",
        auth=cluster.credentials(),
        timeout=10.0,
        verify=node.ca_context(),
    )
    token = resp.json().get("lease_token")
    assert isinstance(token, int), resp.text
    return token


@contextlib.contextmanager
def writing(cluster: CliCluster, node: Node) -> Iterator[ActiveWatch]:
    """A writer on ``node`` for the block; the node holds the same lease (fencing token)
    after it as before: it never lost and re-took the active role."""
    token = lease_token(cluster, node)
    with node.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS shrink (id bigint PRIMARY KEY)")
    watch = ActiveWatch(node)
    watch.writer.start()
    try:
        yield watch
    finally:
        watch.writer.stop()
    assert lease_token(cluster, node) == token, "the active's fencing token changed"


def still_active(cluster: CliCluster, node: Node) -> None:
    """Watched for three ttls (several renewals, and long enough for a lost lease to expire and
    show): ``node`` answers /status 200 throughout; the writer checks the writes."""

    def active() -> bool:
        answer = node.probe()
        assert answer is not None and answer["http_status"] == 200, f"{node.name}: {answer}"
        return True

    holds_for(active, 3 * TIMING["ttl"], interval=0.5, what=f"{node.name} active")


def two_node_cluster(backend: str) -> Iterator[CliCluster]:
    """n1 starts the cluster and n2 joins it, through the CLI."""
    cluster = CliCluster(make_root(), backend)
    try:
        first = cluster.add("n1")
        out = cluster.cli(
            "cluster", "start", "-c", str(first.config_path), "--timeout", str(WAIT)
        ).output
        found = re.search(r"cluster CA fingerprint \(SHA-256\): ([0-9A-F:]+)", out)
        assert found, out
        cluster.ca_fingerprint = found.group(1)
        second = cluster.add("n2")
        cluster.cli(
            "cluster",
            "join",
            first.address,
            "-c",
            str(second.config_path),
            "--node-name",
            "n2",
            "--ca-fingerprint",
            cluster.ca_fingerprint,
            "--timeout",
            str(WAIT),
        )
        yield cluster
    finally:
        cluster.cleanup()
        if os.environ.get("HACORE_KEEP_TEST_DIRS"):
            print(f"kept {cluster.root}")
        else:
            shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture(params=["etcd", "zookeeper"])
def pair(request: pytest.FixtureRequest) -> Iterator[CliCluster]:
    yield from two_node_cluster(request.param)


@pytest.fixture
def etcd_pair() -> Iterator[CliCluster]:
    yield from two_node_cluster("etcd")


@pytest.fixture
def trio() -> Iterator[CliCluster]:
    yield from formed_cluster("etcd")


def store_names(cluster: CliCluster, node: Node) -> set[str]:
    """The store's servers as the active's agent reads them from the store itself."""
    return {m["name"] for m in node.cluster(cluster.credentials())["store_members"]}


def remove(cluster: CliCluster, active: Node, victim: Node) -> None:
    """``nodes remove`` succeeds, and the cluster shrinks: list, store, the victim down."""
    before = store_names(cluster, active)
    assert victim.name in before
    out = cluster.cli("cluster", "nodes", "remove", victim.name, "--yes").output
    assert f"node {victim.name} removed from cluster clitest" in out
    assert store_names(cluster, active) == before - {victim.name}
    listed = cluster.view()
    assert victim.name not in listed
    assert listed[active.name]["state"] == "active", listed
    wait_for(
        lambda: (
            victim.probe()["state"] == "removed"
            and victim.postmaster() is None
            and victim.store_server() is None
        ),
        WAIT,
        what=f"{victim.name} to stop its database and store server",
    )


def test_removing_the_only_standby_keeps_the_active_writable(pair: CliCluster) -> None:
    active = pair.active()
    victim = pair.nodes["n2"]
    with writing(pair, active) as writer:
        remove(pair, active, victim)
        # the lease outlives a few renewals in the one-member store
        still_active(pair, active)
    writer.check()
    assert set(pair.view()) == {active.name}
    assert pair.cli_json("cluster", "status")["active"] == active.name


def test_three_to_two_to_one_keeps_the_active_writable(trio: CliCluster) -> None:
    active = trio.active()
    standbys = [n for n in trio.nodes.values() if n is not active]
    with writing(trio, active) as writer:
        remove(trio, active, standbys[0])
        assert set(trio.view()) == {active.name, standbys[1].name}
        remove(trio, active, standbys[1])
        still_active(trio, active)
    writer.check()
    assert set(trio.view()) == {active.name}
    assert trio.cli_json("cluster", "status")["active"] == active.name


@pytest.mark.skipif(shutil.which("etcdctl") is None, reason="etcdctl is not installed")
def test_removing_the_standby_whose_store_server_leads(etcd_pair: CliCluster) -> None:
    """The leaving etcd member is the store's leader: the one left must take over in time."""
    active = etcd_pair.active()
    victim = etcd_pair.nodes["n2"]
    members = json.loads(etcdctl(active, "member", "list", "-w", "json"))["members"]
    victim_id = next(m["ID"] for m in members if m["name"] == victim.name)
    both = [active, victim]
    urls = ",".join(f"https://127.0.0.1:{n.store['client_port']}" for n in both)
    etcdctl(active, f"--endpoints={urls}", "move-leader", format(victim_id, "x"))
    status = json.loads(etcdctl(victim, "endpoint", "status", "-w", "json"))
    assert status[0]["Status"]["leader"] == victim_id, status
    with writing(etcd_pair, active) as writer:
        remove(etcd_pair, active, victim)
        still_active(etcd_pair, active)
    writer.check()
    assert set(etcd_pair.view()) == {active.name}
