"""``cluster start/join --options`` end to end, and a switchover under a writer.

The overrides travel from the CLI to the node's agent, are kept in ``cluster.json`` and are
what the node runs with: PostgreSQL parameters that only the options set are in force on the
database of the node that got them, and synchronous replication set by options keeps every
acknowledged write through a switchover taken while a writer runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
import yaml
from cluster_fixtures import WAIT, CliCluster, Node, make_root

from hacore.testing.procs import wait_for
from hacore_plugins.postgresql.settings import default_bin_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(default_bin_dir() is None, reason="no PostgreSQL binaries installed"),
]

#: both settings must agree (docs/configuration.md), so both come through the options
SYNC = "failover.synchronous_mode=on;replication.synchronous=on"


@pytest.fixture(scope="module")
def pair() -> Iterator[CliCluster]:
    cluster = CliCluster(make_root(), "etcd")
    try:
        first = cluster.add("n1")
        extra = cluster.root / "extra.yaml"
        extra.write_text(yaml.safe_dump({"replication": {"parameters": {"work_mem": "7MB"}}}))
        cluster.outputs["start"] = cluster.cli(
            "cluster", "start", "-c", str(first.config_path), "--timeout", str(WAIT),
            "--options", SYNC + ";replication.parameters.maintenance_work_mem=33MB",
            "--options", str(extra),
        ).output  # fmt: skip
        found = re.search(
            r"cluster CA fingerprint \(SHA-256\): ([0-9A-F:]+)", cluster.outputs["start"]
        )
        assert found, cluster.outputs["start"]
        cluster.ca_fingerprint = found.group(1)
        second = cluster.add("n2")
        options = {
            "failover": {"synchronous_mode": "on"},
            "replication": {"synchronous": "on", "parameters": {"work_mem": "9MB"}},
        }
        cluster.outputs["join"] = cluster.cli(
            "cluster", "join", first.address, "-c", str(second.config_path), "--node-name", "n2",
            "--ca-fingerprint", cluster.ca_fingerprint, "--timeout", str(WAIT),
            "--options", json.dumps(options),
        ).output  # fmt: skip
        yield cluster
    finally:
        cluster.cleanup()
        if os.environ.get("HACORE_KEEP_TEST_DIRS"):
            print(f"kept {cluster.root}")
        else:
            shutil.rmtree(cluster.root, ignore_errors=True)


def setting(node: Node, name: str) -> str:
    with node.connect() as conn:
        row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
    assert row is not None
    return str(row[0])


def overrides(node: Node) -> dict[str, object]:
    data = json.loads((node.data_dir / "cluster.json").read_text())
    kept: dict[str, object] = data["overrides"]
    return kept


def test_each_node_keeps_the_options_it_was_given_and_runs_the_cluster_s_parameters(
    pair: CliCluster,
) -> None:
    """Each node's options are kept in its own configuration; PostgreSQL parameters are
    cluster-wide (docs/configuration.md, "Cluster-wide settings"): seeded in the store by
    ``cluster start`` on n1, they win over what the joining n2 was given."""
    n1, n2 = pair.nodes["n1"], pair.nodes["n2"]
    assert setting(n1, "work_mem") == "7MB"
    assert setting(n1, "maintenance_work_mem") == "33MB"
    cluster_s = {"work_mem": "7MB", "maintenance_work_mem": "33MB"}
    wait_for(
        lambda: {name: setting(n2, name) for name in cluster_s} == cluster_s,
        WAIT,
        interval=0.5,
        what="n2 running the cluster's parameters",
    )
    kept = overrides(n1)
    # k=v values are YAML scalars: a bare on is true (docs/configuration.md)
    assert kept["failover"] == {"synchronous_mode": True}
    assert kept["replication"] == {
        "synchronous": True,
        "parameters": {"maintenance_work_mem": "33MB", "work_mem": "7MB"},
    }
    assert overrides(n2)["replication"] == {"synchronous": "on", "parameters": {"work_mem": "9MB"}}
    # synchronous replication, from the options of both nodes
    active = pair.active()
    standby = n2 if active is n1 else n1

    def sync_standby() -> bool:
        with active.connect() as conn:
            rows = conn.execute(
                "SELECT application_name FROM pg_stat_replication"
                " WHERE sync_state IN ('sync', 'quorum')"
            ).fetchall()
        return [r[0] for r in rows] == [standby.name]

    wait_for(sync_standby, WAIT, interval=0.5, what=f"{standby.name} as synchronous standby")


def test_the_join_warns_that_a_cluster_wide_option_does_not_take_effect(pair: CliCluster) -> None:
    """n2 was given work_mem 9MB; the cluster runs 7MB, and the store's value wins. The join
    says so and names the command that changes it; synchronous_mode, given the value the
    cluster runs, is not named."""
    out = pair.outputs["join"]
    assert (
        "warning: --options replication.parameters.work_mem=9MB does not take effect: it is a "
        "cluster-wide setting and the cluster runs 7MB. It stays in this node's configuration; "
        "to change it on every node: hacore cluster config set parameters.work_mem=9MB"
    ) in out, out
    assert "synchronous_mode" not in out, out


def test_options_cannot_move_the_node_and_a_refused_join_changes_nothing(
    pair: CliCluster,
) -> None:
    node = pair.add("n3")
    before = sorted(p.name for p in node.data_dir.iterdir()) if node.data_dir.exists() else []
    result = pair.cli(
        "cluster", "join", pair.nodes["n1"].address, "-c", str(node.config_path),
        "--node-name", "n3",
        "--ca-fingerprint", pair.ca_fingerprint, "--timeout", str(WAIT),
        "--options", "node.api_port=1",
        code=2,
    )  # fmt: skip
    assert "node.api_port cannot be changed by cluster start/join options" in result.output
    after = sorted(p.name for p in node.data_dir.iterdir()) if node.data_dir.exists() else []
    assert after == before
    assert sorted(pair.view()) == ["n1", "n2"]
    node.cleanup()
    del pair.nodes["n3"]


def test_a_switchover_under_a_writer_keeps_every_acknowledged_row(pair: CliCluster) -> None:
    old = pair.active()
    target = next(n for n in pair.nodes.values() if n is not old)
    with old.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS acked (id integer PRIMARY KEY)")
    wait_for(
        lambda: pair.view()[target.name]["replication"] == "streaming",
        WAIT,
        what=f"{target.name} streaming before the switchover",
    )
    acked: list[int] = []
    errors: list[str] = []
    stop = threading.Event()

    def write() -> None:
        """Like an application: write to whichever node takes writes, reconnecting on error;
        a row counts once its COMMIT returned."""
        next_id = 0
        while not stop.is_set():
            for node in (old, target):
                try:
                    with psycopg.connect(
                        host=str(node.data_dir / "replication" / "run"),
                        port=node.pg_port, user="postgres", dbname="postgres",
                        autocommit=True, connect_timeout=2,
                    ) as conn:  # fmt: skip
                        while not stop.is_set():
                            next_id += 1
                            conn.execute("INSERT INTO acked VALUES (%s)", (next_id,))
                            acked.append(next_id)
                except psycopg.Error as err:
                    errors.append(str(err).splitlines()[0])
                time.sleep(0.05)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        wait_for(lambda: len(acked) >= 50, WAIT, what="writes before the switchover")
        before = len(acked)
        pair.cli("cluster", "switchover", "--to", target.name, "--timeout", str(WAIT))
        wait_for(lambda: len(acked) >= before + 50, WAIT, what="writes on the new active")
    finally:
        stop.set()
        writer.join(30)
    assert pair.active() is target
    with target.connect() as conn:
        present = {row[0] for row in conn.execute("SELECT id FROM acked")}
    lost = sorted(set(acked) - present)
    assert not lost, f"{len(lost)} acknowledged rows lost: {lost[:20]}"
    # the old active follows the new one and has every row too
    wait_for(
        lambda: pair.view()[old.name]["replication"] == "streaming",
        WAIT,
        what=f"{old.name} to follow {target.name}",
    )

    def caught_up() -> bool:
        with old.connect() as conn:
            rows = {row[0] for row in conn.execute("SELECT id FROM acked")}
        return rows >= set(acked)

    wait_for(caught_up, WAIT, interval=0.5, what=f"{old.name} holding every acknowledged row")
