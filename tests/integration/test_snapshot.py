"""``hacore snapshot create`` on a real active and ``restore`` onto a fresh node, then
``cluster start`` there, all through the CLI, with real PostgreSQL and the rsync file sync.

One source cluster (n1 active, n2 its standby) for the module; every restore goes to a node of
its own (``target`` clusters), so the source stays as it was. The refusals check that nothing
on the refused node changed (its data directory and filesync directory, file for file).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cluster_fixtures import HACORE, WAIT, CliCluster, Node, make_root, tree

from hacore.testing.procs import free_port, wait_for

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(shutil.which("rsync") is None, reason="no rsync binary on PATH"),
]

ROWS = 500


def files_of(root: Path, name: str) -> dict[str, Any]:
    # the same last name on every node: rsync names its module after it
    directory = root / f"{name}-fs" / "files"
    directory.mkdir(parents=True, exist_ok=True)
    return {"filesync": {"backend": "rsync", "directories": [str(directory)], "port": free_port()}}


def directory_of(node: Node) -> Path:
    return node.root / f"{node.name}-fs" / "files"


def contents(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def add_node(cluster: CliCluster, name: str) -> Node:
    return cluster.add(name, extra=files_of(cluster.root, name))


@pytest.fixture(scope="module")
def source() -> Iterator[CliCluster]:
    cluster = CliCluster(make_root(), "etcd")
    try:
        first = add_node(cluster, "n1")
        out = cluster.cli(
            "cluster", "start", "-c", str(first.config_path), "--timeout", str(WAIT), "--json"
        )
        fingerprint = cluster.ca_fingerprint = json.loads(out.stdout)["ca_fingerprint"]
        second = add_node(cluster, "n2")
        cluster.cli(
            "cluster",
            "join",
            first.address,
            "-c",
            str(second.config_path),
            "--node-name",
            "n2",
            "--ca-fingerprint",
            fingerprint,
            "--timeout",
            str(WAIT),
        )
        with first.connect() as conn:
            conn.execute("CREATE ROLE app LOGIN PASSWORD 'app-secret'")
            conn.execute("CREATE DATABASE appdb OWNER app")
            conn.execute("CREATE TABLE kept (id int PRIMARY KEY, note text)")
            conn.execute("INSERT INTO kept SELECT g, 'postgres db' FROM generate_series(1, 7) g")
        with psycopg.connect(
            host=str(first.socket_dir), port=first.pg_port, user="postgres", dbname="appdb"
        ) as conn:
            conn.execute("SET ROLE app")
            conn.execute("CREATE TABLE orders (id int PRIMARY KEY, body text)")
            conn.execute(
                "INSERT INTO orders SELECT g, repeat('x', g %% 100) FROM generate_series(1, %s) g",
                (ROWS,),
            )
        files = directory_of(first)
        (files / "resources" / "blueprints").mkdir(parents=True)
        (files / "resources" / "blueprints" / "bp.yaml").write_text("tosca: 1\n")
        (files / "top.bin").write_bytes(os.urandom(1 << 20))
        (files / "empty-dir").mkdir()
        yield cluster
    finally:
        cluster.cleanup()
        if os.environ.get("HACORE_KEEP_TEST_DIRS"):
            print(f"kept {cluster.root}")
        else:
            shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture
def target() -> Iterator[CliCluster]:
    cluster = CliCluster(make_root(), "etcd")
    try:
        yield cluster
    finally:
        cluster.cleanup()
        if not os.environ.get("HACORE_KEEP_TEST_DIRS"):
            shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture(scope="module")
def snapshot_file(source: CliCluster) -> Path:
    """One snapshot of the source's active, taken through the CLI with progress shown."""
    output = source.root / "snap.tar.gz"
    n1 = source.nodes["n1"]
    result = source.cli(
        "snapshot",
        "create",
        "-c",
        str(n1.config_path),
        "--file",
        str(output),
        "--progress",
        "-o",
        "json",
    )
    data = json.loads(result.stdout)
    assert data["file"] == str(output)
    assert data["snapshot"]["cluster"] == "clitest"
    assert data["snapshot"]["postgresql_major"] >= 15
    assert "snapshot create:" in result.stderr and "done in" in result.stderr, result.stderr
    assert output.stat().st_mode & 0o777 == 0o600
    return output


def snapshot_path(source: CliCluster, name: str) -> Path:
    return source.root / name


def test_a_snapshot_is_refused_on_a_standby(source: CliCluster) -> None:
    output = source.root / "from-standby.tar"
    n2 = source.nodes["n2"]
    result = source.cli(
        "snapshot", "create", "-c", str(n2.config_path), "--file", str(output), code=4
    )
    assert "n2 is not the active" in result.output and "the active is n1" in result.output
    assert not output.exists()
    assert not [p for p in source.root.iterdir() if p.name.startswith(".from-standby")]


def test_restore_after_a_crash_then_start_holds_every_row_and_file(
    source: CliCluster, snapshot_file: Path, target: CliCluster
) -> None:
    n1 = source.nodes["n1"]
    node = add_node(target, "r1")
    marker = node.data_dir / "snapshot-restore.json"
    # a restore killed half-way (after it began changing the node)...
    proc = subprocess.Popen(
        [HACORE, "snapshot", "restore", "-c", str(node.config_path), str(snapshot_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(marker.exists, 60, interval=0.005, what="the restore to begin changing the node")
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    assert json.loads(marker.read_text())["state"] == "restoring"
    start = ["cluster", "start", "-c", str(node.config_path), "--timeout", str(WAIT)]
    unfinished = target.cli(*start, code=4)
    assert "snapshot restore on this node did not finish" in unfinished.output
    # ... is redone by a second one
    redone = target.cli(
        "snapshot",
        "restore",
        "-c",
        str(node.config_path),
        str(snapshot_file),
        "-o",
        "json",
        "--progress",
    )
    assert "snapshot verify:" in redone.stderr and "done in" in redone.stderr, redone.stderr
    result = json.loads(redone.stdout)
    assert result["restored"] is True and result["files"] == 2, result
    assert json.loads(marker.read_text())["state"] == "restored"
    # a restored node is never joined ...
    joined = source.cli(
        "cluster",
        "join",
        n1.address,
        "-c",
        str(node.config_path),
        "--node-name",
        "r1",
        "--ca-fingerprint",
        source.ca_fingerprint,
        "--timeout",
        "60",
        code=4,
    )
    assert "already holds a database" in joined.output, joined.output
    # ... but started
    fingerprint = json.loads(target.cli(*start, "--json").stdout)["ca_fingerprint"]
    wait_for(lambda: (node.probe() or {}).get("active") is True, WAIT, what="r1 active")
    assert not marker.exists()
    with node.connect() as conn:
        assert conn.execute("SELECT count(*) FROM kept").fetchone() == (7,)
        roles = dict(conn.execute("SELECT rolname, rolpassword FROM pg_authid").fetchall())
    with n1.connect() as conn:
        old = dict(conn.execute("SELECT rolname, rolpassword FROM pg_authid").fetchall())
    assert roles["app"] == old["app"]  # an application's role keeps its password
    assert roles["replicator"] != old["replicator"]  # the new cluster's own credentials
    with psycopg.connect(
        host=str(node.socket_dir), port=node.pg_port, user="postgres", dbname="appdb"
    ) as conn:
        assert conn.execute("SELECT count(*), sum(length(body)) FROM orders").fetchone() == (
            ROWS,
            sum(g % 100 for g in range(1, ROWS + 1)),
        )
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'orders'")
        assert owner.fetchone() == ("app",)
    assert contents(directory_of(node)) == contents(directory_of(n1))
    assert (directory_of(node) / "empty-dir").is_dir()
    # and the new cluster takes writes, and a new node joins it with every row and file
    with node.connect() as conn:
        conn.execute("INSERT INTO kept VALUES (100, 'after restore')")
    joiner = add_node(target, "r1b")
    target.cli(
        "cluster",
        "join",
        node.address,
        "-c",
        str(joiner.config_path),
        "--node-name",
        "r1b",
        "--ca-fingerprint",
        fingerprint,
        "--timeout",
        str(WAIT),
    )

    def joiner_rows() -> bool:
        with joiner.connect() as conn:
            return conn.execute("SELECT count(*) FROM kept").fetchone() == (8,)

    wait_for(joiner_rows, WAIT, what="the restored rows on the joined standby")
    wait_for(
        lambda: contents(directory_of(joiner)) == contents(directory_of(n1)),
        WAIT,
        what="the restored files on the joined standby",
    )


def nothing_changed(node: Node, running: bool) -> Iterator[None]:
    """Every file of the node as it was (of a ``running`` member, whose server writes all the
    time: its filesync directory, and no restore marker or staging left)."""
    marker = node.data_dir / "snapshot-restore.json"
    before = (tree(directory_of(node)), {} if running else tree(node.data_dir), marker.exists())
    yield
    after = (tree(directory_of(node)), {} if running else tree(node.data_dir), marker.exists())
    assert after == before
    assert not (node.data_dir / "snapshot-restore.tmp").exists()


def refused(
    cluster: CliCluster, node: Node, snapshot: Path, *words: str, running: bool = False
) -> None:
    with contextlib.contextmanager(nothing_changed)(node, running):
        out = cluster.cli("snapshot", "restore", "-c", str(node.config_path), str(snapshot), code=4)
    for word in words:
        assert word in out.output, out.output


def test_bad_snapshots_and_unfit_nodes_are_refused_with_nothing_changed(
    source: CliCluster, snapshot_file: Path, target: CliCluster
) -> None:
    node = add_node(target, "r2")
    data = snapshot_file.read_bytes()
    plain = snapshot_path(source, "plain.tar")
    n1 = source.nodes["n1"]
    source.cli("snapshot", "create", "-c", str(n1.config_path), "--file", str(plain))
    raw = bytearray(plain.read_bytes())
    at = raw.index(b"tosca: 1")
    raw[at] ^= 0x20
    corrupt = snapshot_path(source, "corrupt.tar")
    corrupt.write_bytes(bytes(raw))
    refused(target, node, corrupt, "is corrupt", "does not match its checksum")

    truncated = snapshot_path(source, "truncated.tar.gz")
    truncated.write_bytes(data[: len(data) * 2 // 3])
    refused(target, node, truncated, "truncated")

    newer = snapshot_path(source, "newer.tar")
    source.cli(
        "snapshot",
        "create",
        "-c",
        str(n1.config_path),
        "--file",
        str(newer),
        env={"HACORE_TESTING_VERSION": "99.0.0"},
    )
    refused(target, node, newer, "taken by hacore 99.0.0, newer than this hacore")

    # a node in a cluster
    n2 = source.nodes["n2"]
    refused(source, n2, snapshot_file, "belongs to", "in no cluster", running=True)

    # a node that is not empty
    (directory_of(node) / "mine.txt").write_text("not from the snapshot")
    refused(target, node, snapshot_file, "is not empty", "holds files")
    # --force discards it
    target.cli("snapshot", "restore", "-c", str(node.config_path), str(snapshot_file), "--force")
    assert not (directory_of(node) / "mine.txt").exists()
    # a second restore of a restored node is refused until it is started or forced
    refused(target, node, snapshot_file, "already holds a restored snapshot")
    # a database of unknown origin (no marker) is refused as by a join
    (node.data_dir / "snapshot-restore.json").unlink()
    refused(target, node, snapshot_file, "is not empty", "already holds a database")
    # ... and by cluster start: only a finished restore makes a database start may use
    start = target.cli("cluster", "start", "-c", str(node.config_path), code=4)
    assert "cluster start needs an empty node" in start.output, start.output
