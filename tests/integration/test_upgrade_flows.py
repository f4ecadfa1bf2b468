"""The seed's two upgrade procedures, end to end through the real CLI (issue 14 point 2), with
real agents, etcd, PostgreSQL, the rsync file sync and the sample manager (examples/).

One original cluster for the module (2 nodes: n1 active, n2 standby, to keep the module
lean), on which the sample manager's API and worker ran workflows and stored resources, a
writer kept writing rows, and ``cluster config set`` set ``work_mem`` to a value no node.yaml
has. Its snapshot is taken while the writer writes. Then, one test each, in any order:

(a) new machines: restore onto a fresh node, ``cluster start`` there, two fresh nodes join;
(b) the same machine: ``cluster teardown``, ``node uninstall`` on the old active, the agent
    installed again with the same node.yaml (paths, ports), restore, start, two new joins.

Both check, on each of the three new members: every row acknowledged before the snapshot
began, every file of the mirrored directory, the manager's workflows and their steps (and,
through its API on the new active, its workflows and resources as it served them before),
and the snapshot's ``work_mem`` (seeded by ``cluster start`` from the snapshot, not from the
restored node's node.yaml, which says otherwise). Step times are printed (``-s``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import psycopg
import pytest
from cluster_fixtures import (
    HACORE,
    PG_PARAMETERS,
    TIMING,
    WAIT,
    CliCluster,
    Node,
    make_root,
)
from row_writer import RowWriter

from hacore.testing.local_cluster import LocalNode
from hacore.testing.procs import ServerProcess, free_port, wait_for
from hacore_plugins.postgresql.settings import default_bin_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900, method="signal"),
    pytest.mark.skipif(default_bin_dir() is None, reason="no PostgreSQL binaries installed"),
    pytest.mark.skipif(shutil.which("rsync") is None, reason="no rsync binary on PATH"),
]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sample-manager"
#: set by ``cluster config set`` on the original cluster; no node.yaml says it
WORK_MEM = "7MB"
#: what the restored nodes' node.yaml says instead
NODE_YAML_WORK_MEM = "3MB"


@attrs.define
class FlowNode(Node):
    """A CLI node whose node.yaml may set its own ``work_mem``."""

    work_mem: str | None = None

    def write_config(self, **sections: Any) -> dict[str, Any]:
        parameters = dict(PG_PARAMETERS)
        if self.work_mem is not None:
            parameters["work_mem"] = self.work_mem
        return LocalNode.write_config(
            self,
            cluster="clitest",
            namespace=self.namespace,
            timing=TIMING,
            checks={"check_fail_fast": False},
            replication={"parameters": parameters},
            extra=self.extra,
            **sections,
        )


def directory_of(node: Node) -> Path:
    # the same last name on every node: rsync names its module after it
    return node.root / f"{node.name}-fs" / "files"


def add(cluster: CliCluster, name: str, work_mem: str | None = None) -> FlowNode:
    directory = cluster.root / f"{name}-fs" / "files"
    directory.mkdir(parents=True, exist_ok=True)
    filesync = {"backend": "rsync", "directories": [str(directory)], "port": free_port()}
    node = FlowNode(
        name,
        cluster.root,
        cluster.backend,
        cluster.namespace,
        extra={"filesync": filesync},
        work_mem=work_mem,
    )
    cluster.nodes[name] = node
    node.start()
    return node


def contents(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def manager_dsn(node: Node) -> str:
    return f"host={node.socket_dir} port={node.pg_port} dbname=manager user=postgres"


def manager_process(root: Path, what: str, node: Node, *args: str) -> ServerProcess:
    return ServerProcess(
        f"sample-manager {what} on {node.name}",
        [sys.executable, "-m", f"sample_manager.{what}", *args],
        root / f"sample-manager-{what}-{node.name}.log",
        env={"PYTHONPATH": str(EXAMPLE), "SAMPLE_MANAGER_DSN": manager_dsn(node)},
    ).start()


def manager_api(root: Path, node: Node) -> tuple[ServerProcess, str]:
    """The sample manager's API on ``node`` (the active), serving its mirrored directory."""
    port = free_port()
    proc = manager_process(root, "api", node, f"--port={port}", f"--resources={directory_of(node)}")
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, WAIT, what=f"the sample manager's API on {node.name}")
    return proc, url


def history(node: Node) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The manager's workflows and their steps, as the database holds them (a standby too)."""
    with psycopg.connect(manager_dsn(node), connect_timeout=10) as conn:
        workflows = conn.execute(
            "SELECT id, name, state, resumable, current_step, total_steps, node, error, "
            "created_at::text, updated_at::text FROM workflows ORDER BY id"
        ).fetchall()
        steps = conn.execute(
            "SELECT workflow_id, step, node, done_at::text FROM workflow_steps "
            "ORDER BY workflow_id, step"
        ).fetchall()
    return workflows, steps


def ledger(node: Node) -> set[int]:
    with node.connect() as conn:
        return {row[0] for row in conn.execute("SELECT id FROM ledger").fetchall()}


def work_mem(node: Node) -> str:
    with node.connect() as conn:
        row = conn.execute("SHOW work_mem").fetchone()
    assert row is not None
    return str(row[0])


@attrs.frozen
class Before:
    """What the original cluster held when its snapshot began."""

    rows: frozenset[int]
    files: dict[str, bytes]
    workflows: list[tuple[Any, ...]]
    steps: list[tuple[Any, ...]]
    api_workflows: list[dict[str, Any]]
    api_resources: dict[str, bytes]


@attrs.frozen
class Original:
    cluster: CliCluster
    snapshot: Path
    before: Before


def start(cluster: CliCluster, node: Node) -> tuple[str, str]:
    """``cluster start`` as an operator runs it: its output and the CA fingerprint."""
    out = cluster.cli("cluster", "start", "-c", str(node.config_path), "--timeout", str(WAIT))
    found = re.search(r"cluster CA fingerprint \(SHA-256\): ([0-9A-F:]+)", out.output)
    assert found, out.output
    return out.output, found.group(1)


def join(cluster: CliCluster, node: Node, founder: Node, fingerprint: str) -> float:
    began = time.monotonic()
    cluster.cli(
        *node.join_arguments(founder),
        "--ca-fingerprint",
        fingerprint,
        "--timeout",
        str(WAIT),
    )
    return time.monotonic() - began


@pytest.fixture(scope="module")
def original() -> Iterator[Original]:
    cluster = CliCluster(make_root(), "etcd")
    try:
        n1 = add(cluster, "n1")
        started, fingerprint = start(cluster, n1)
        # the start wrote the cluster-wide settings itself: shown at once, not by the agent
        assert "[ok] cluster-wide settings: from node.yaml" in started, started
        shown = cluster.cli_json("cluster", "config", "show")
        assert (shown["revision"], shown["by"]) == (1, "n1"), shown
        assert n1.proc is not None
        assert "seeded into the store" not in n1.proc.log_path.read_text(errors="replace")
        join(cluster, add(cluster, "n2"), n1, fingerprint)
        cluster.cli("cluster", "config", "set", f"parameters.work_mem={WORK_MEM}")
        wait_for(lambda: work_mem(n1) == WORK_MEM, WAIT, what="work_mem set on the active")

        # the sample manager: resources through its API, workflows run by its worker
        with n1.connect() as conn:
            conn.execute("CREATE DATABASE manager")
        api, url = manager_api(cluster.root, n1)
        worker = manager_process(
            cluster.root, "worker", n1, "--node=n1", "--step-seconds=0.05", "--poll-seconds=0.1"
        )
        try:
            for name, data in (
                ("blueprint.yaml", b"tosca: 1\n"),
                ("plugin.zip", os.urandom(1 << 18)),
            ):
                assert httpx.put(f"{url}/resources/{name}", content=data).status_code == 201
            ids = [
                httpx.post(f"{url}/workflows", json={"name": name, "steps": steps}).json()["id"]
                for name, steps in (("install", 4), ("scale", 2), ("heal", 3))
            ]

            def finished() -> bool:
                listed = httpx.get(f"{url}/workflows").json()
                return {w["id"] for w in listed if w["state"] == "succeeded"} == set(ids)

            wait_for(finished, WAIT, what="the sample manager's workflows to succeed")
            api_workflows = [httpx.get(f"{url}/workflows/{i}").json() for i in ids]
            api_resources = {
                r["name"]: httpx.get(f"{url}/resources/{r['name']}").content
                for r in httpx.get(f"{url}/resources").json()
            }
        finally:
            worker.stop(timeout=15)
            api.stop(timeout=15)
        (directory_of(n1) / "deep" / "er").mkdir(parents=True)
        (directory_of(n1) / "deep" / "er" / "state.bin").write_bytes(os.urandom(1 << 20))
        workflows, steps = history(n1)
        assert len(workflows) == 3 and len(steps) == 9

        # the snapshot, taken while the writer writes
        with n1.connect() as conn:
            conn.execute("CREATE TABLE ledger (id bigint PRIMARY KEY, note text)")
        writer = RowWriter(
            n1.connect, "INSERT INTO ledger VALUES (%s, repeat('r', 50))", interval=0.005
        ).start(rows=200, timeout=WAIT)
        rows = frozenset(writer.acked)
        snapshot = cluster.root / "upgrade.tar.gz"
        began = time.monotonic()
        try:
            cluster.cli("snapshot", "create", "-c", str(n1.config_path), "--file", str(snapshot))
        finally:
            writer.stop()
        print(
            f"\noriginal cluster (2 nodes): snapshot create {time.monotonic() - began:.1f} s, "
            f"{snapshot.stat().st_size} bytes, {len(rows)} rows acknowledged before it"
        )
        before = Before(
            rows=rows,
            files=contents(directory_of(n1)),
            workflows=workflows,
            steps=steps,
            api_workflows=api_workflows,
            api_resources=api_resources,
        )
        yield Original(cluster, snapshot, before)
    finally:
        cluster.cleanup()
        if os.environ.get("HACORE_KEEP_TEST_DIRS"):
            print(f"kept {cluster.root}")
        else:
            shutil.rmtree(cluster.root, ignore_errors=True)


def restore(cluster: CliCluster, node: Node, snapshot: Path, *extra: str) -> dict[str, Any]:
    out = cluster.cli(
        "snapshot", "restore", "-c", str(node.config_path), str(snapshot), *extra, "-o", "json"
    )
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def found_and_started(cluster: CliCluster, founder: Node, started: str) -> None:
    """The start said it seeded the snapshot's settings, and they are there at once."""
    assert "cluster-wide settings: from the snapshot" in started, started
    assert "parameters.work_mem" in started, started
    shown = cluster.cli_json("cluster", "config", "show")  # no 404 right after the start
    assert shown["revision"] == 1, shown
    assert shown["settings"]["parameters"]["work_mem"] == WORK_MEM, shown
    assert work_mem(founder) == WORK_MEM


def carried_over(cluster: CliCluster, active: Node, nodes: list[Node], before: Before) -> None:
    """Every row, file, workflow and resource of ``before`` on each of ``nodes``."""
    for node in nodes:
        wait_for(
            lambda n=node: before.rows <= ledger(n),
            WAIT,
            what=f"every row acknowledged before the snapshot on {node.name}",
        )
        wait_for(
            lambda n=node: contents(directory_of(n)) == before.files,
            WAIT,
            what=f"every file on {node.name}",
        )
        wait_for(
            lambda n=node: history(n) == (before.workflows, before.steps),
            WAIT,
            what=f"the workflow history on {node.name}",
        )
        wait_for(
            lambda n=node: work_mem(n) == WORK_MEM,
            WAIT,
            what=f"the snapshot's work_mem on {node.name}",
        )
    assert set(cluster.view()) == {n.name for n in nodes}
    api, url = manager_api(cluster.root, active)
    try:
        assert [httpx.get(f"{url}/workflows/{w['id']}").json() for w in before.api_workflows] == (
            before.api_workflows
        )
        listed = httpx.get(f"{url}/resources").json()
        assert {r["name"] for r in listed} == set(before.api_resources)
        for name, data in before.api_resources.items():
            assert httpx.get(f"{url}/resources/{name}").content == data
        # the new cluster carries on: the manager takes a new workflow
        created = httpx.post(f"{url}/workflows", json={"name": "after", "steps": 1})
        assert created.status_code == 201, created.text
    finally:
        api.stop(timeout=15)


def report(flow: str, times: dict[str, float], began: float) -> None:
    steps = ", ".join(f"{what} {seconds:.1f} s" for what, seconds in times.items())
    print(f"\nupgrade flow {flow}: {steps}; total {time.monotonic() - began:.1f} s")


def test_upgrade_onto_new_machines(original: Original) -> None:
    target = CliCluster(make_root(), "etcd")
    began = time.monotonic()
    times: dict[str, float] = {}
    try:
        founder = add(target, "a1", work_mem=NODE_YAML_WORK_MEM)
        at = time.monotonic()
        restored = restore(target, founder, original.snapshot)
        times["restore"] = time.monotonic() - at
        assert "parameters.work_mem" in restored["cluster_wide_from_snapshot"], restored
        at = time.monotonic()
        started, fingerprint = start(target, founder)
        times["start"] = time.monotonic() - at
        found_and_started(target, founder, started)
        joined = [add(target, name, work_mem=NODE_YAML_WORK_MEM) for name in ("a2", "a3")]
        for node in joined:
            times[f"join {node.name}"] = join(target, node, founder, fingerprint)
        at = time.monotonic()
        carried_over(target, founder, [founder, *joined], original.before)
        times["checks"] = time.monotonic() - at
        report("(a) new machines", times, began)
    finally:
        target.cleanup()
        if not os.environ.get("HACORE_KEEP_TEST_DIRS"):
            shutil.rmtree(target.root, ignore_errors=True)


def test_upgrade_on_the_same_machine(original: Original) -> None:
    cluster = original.cluster
    n1, n2 = cluster.nodes["n1"], cluster.nodes["n2"]
    began = time.monotonic()
    times: dict[str, float] = {}
    cluster.cli("cluster", "teardown", "--yes")
    for node in (n1, n2):
        assert node.proc is not None
        wait_for(lambda p=node.proc: not p.alive(), WAIT, what=f"{node.name}'s service to end")
    uninstalled = subprocess.run(
        [HACORE, "node", "uninstall", "-c", str(n1.config_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HACORE_PROFILE": str(cluster.profile)},
    )
    assert uninstalled.returncode == 0, uninstalled.stdout + uninstalled.stderr
    assert not n1.data_dir.exists(), uninstalled.stdout
    times["teardown and uninstall"] = time.monotonic() - began
    # the mirrored directory is the operator's: uninstall leaves it, so restore needs --force
    assert contents(directory_of(n1)) == original.before.files

    at = time.monotonic()
    n1.start()  # installed again: the same node.yaml, data directory and ports
    refused = cluster.cli(
        "snapshot", "restore", "-c", str(n1.config_path), str(original.snapshot), code=4
    )
    assert "holds files" in refused.output and "--force" in refused.output, refused.output
    restore(cluster, n1, original.snapshot, "--force")
    times["reinstall and restore"] = time.monotonic() - at
    at = time.monotonic()
    started, fingerprint = start(cluster, n1)
    times["start"] = time.monotonic() - at
    found_and_started(cluster, n1, started)
    joined = [add(cluster, name) for name in ("b2", "b3")]
    for node in joined:
        times[f"join {node.name}"] = join(cluster, node, n1, fingerprint)
    at = time.monotonic()
    carried_over(cluster, n1, [n1, *joined], original.before)
    times["checks"] = time.monotonic() - at
    report("(b) same machine", times, began)
