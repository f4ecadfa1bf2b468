"""Minority mode (issue 9, point 5): a 2|1 split with writes on both sides, and the salvage.

With ``failover.minority_mode: on`` (and ``wal_level: logical``), an active cut off from the
store's majority stays active and writable; the majority elects another active; when the
network heals the store's lease holder wins, and the loser's writes since the fork are
exported to a salvage archive on the loser before it is rewound. The writes here go straight
to each node's database through its Unix socket (as the manager's own services on that node
would), so both sides can take writes while the network is split.

The default (minority mode off: the cut-off active fences itself by its lease's deadline and
nothing it acknowledged is lost) is what
``test_partitions.py::test_an_isolated_active_fences_itself_and_a_standby_takes_over`` proves.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import httpx
import psycopg
import pytest
import yaml
from fault_cluster import TIMING, WAIT, FaultCluster, FaultNode
from netns import Network
from row_writer import RowWriter

from hacore.testing.procs import wait_for

pytestmark = [pytest.mark.fault, pytest.mark.root, pytest.mark.slow]

TTL = TIMING["ttl"]
TABLE = "minority_rows"
_ROW = re.compile(rf"table public\.{TABLE}: INSERT: id\[integer\]:(\d+)")


class MinorityNode(FaultNode):
    """The harness's node with minority mode on (and the WAL level it needs)."""

    def write_config(self) -> None:
        super().write_config()
        raw = yaml.safe_load(self.config_path.read_text())
        raw.setdefault("failover", {})["minority_mode"] = "on"
        raw["replication"].setdefault("parameters", {})["wal_level"] = "logical"
        self.config_path.write_text(yaml.safe_dump(raw))


@pytest.fixture(scope="module")
def cluster(
    fault_network: Network, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultCluster]:
    fault_network.heal()
    cluster = FaultCluster(fault_network)
    cluster.nodes = {
        name: MinorityNode(n.name, n.host, n.root, n.namespace) for name, n in cluster.nodes.items()
    }
    try:
        cluster.form()
        yield cluster
    finally:
        fault_network.heal()
        cluster.cleanup(keep_logs=tmp_path_factory.mktemp("minority-logs"))


def writer(node: FaultNode, first: int) -> RowWriter:
    """Ids from ``first`` on into ``node``'s database, each row naming the node."""
    return RowWriter(
        lambda: psycopg.connect(node.conninfo, autocommit=True, connect_timeout=3),
        f"INSERT INTO {TABLE} VALUES (%s, '{node.name}')",
        first=first,
        interval=0.05,
    ).start(rows=0)


def _exec(node: FaultNode, query: str) -> None:
    with psycopg.connect(node.conninfo, autocommit=True, connect_timeout=5) as conn:
        conn.execute(query)


def _ids(node: FaultNode) -> set[int]:
    return {int(r[0]) for r in node.sql(f"SELECT id FROM {TABLE}")}


def _status(node: FaultNode) -> dict[str, object]:
    try:
        body = httpx.get(f"http://{node.address}/status", timeout=2.0).json()
    except (httpx.HTTPError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _archives(cluster: FaultCluster) -> list[dict[str, object]]:
    listed = json.loads(cluster.cli("cluster", "salvage", "list", "--json").output)
    assert not listed["unreachable"], listed
    return list(listed["archives"])


def _setup(cluster: FaultCluster) -> tuple[FaultNode, FaultNode, FaultNode]:
    active, sync = cluster.wait_healthy()
    a = cluster.nodes[active]
    _exec(a, f"CREATE TABLE IF NOT EXISTS {TABLE} (id integer PRIMARY KEY, side text)")
    other = next(n for n in cluster.nodes.values() if n.name not in (active, sync))
    return a, cluster.nodes[sync], other


def test_active_in_the_minority_keeps_writing_and_its_writes_are_salvaged(
    cluster: FaultCluster,
) -> None:
    """2|1 with the active alone: it stays writable, the majority elects another active;
    after the heal the majority's active is the one active, the old one streams from it, and
    every write the old active acknowledged while cut off is in its salvage archive."""
    old, _, _ = _setup(cluster)
    before = _archives(cluster)
    base = writer(old, 1)
    wait_for(lambda: len(base.acked) >= 10, WAIT, interval=0.1, what="writes before the cut")
    pre = set(base.stop())
    cut_at = time.monotonic()
    cluster.net.isolate(old.host, keep_root=True)
    minority = writer(old, 100_000)
    majority: RowWriter | None = None
    try:
        # past its lease's deadline the old active is still active and writable: minority
        # mode holds it, and it is never seen anything but active on the way there
        time.sleep(TTL)

        def holding() -> dict[str, object]:
            seen = _status(old)
            if seen:  # an answer (a loaded machine may time one out)
                assert seen.get("active") is True, (
                    f"{old.name} stopped being active: {seen}\n" + cluster.log_tails(30)
                )
            return seen if (seen.get("minority") or {}).get("holding") is True else {}  # type: ignore[union-attr]

        wait_for(holding, WAIT, interval=0.2, what=f"{old.name} to report minority holding")
        status = json.loads(cluster.cli("cluster", "status", "--json").output)
        assert any(old.name in w and "minority" in w for w in status["warnings"]), status

        def elected() -> str | None:
            for name, node in cluster.nodes.items():
                if name != old.name and node.code("/status") == 200:
                    return name
            return None

        winner = cluster.nodes[str(wait_for(elected, WAIT, interval=0.2, what="a new active"))]
        majority = writer(winner, 200_000)
        wait_for(lambda: len(majority.acked) >= 20, WAIT, interval=0.2, what="majority writes")
        wait_for(lambda: len(minority.acked) >= 20, WAIT, interval=0.2, what="minority writes")
    finally:
        lost_side = set(minority.stop())
        won_side = set(majority.stop()) if majority is not None else set()
        cluster.net.heal(old.host)
    healed_at = time.monotonic()
    assert lost_side, f"{old.name} acknowledged no write while cut off\n{cluster.log_tails(30)}"
    active, _ = cluster.wait_healthy()
    assert active == winner.name, f"{active} is active after the heal, not {winner.name}"
    assert time.monotonic() - healed_at <= WAIT
    # the winner kept everything it had: the writes before the cut and its own
    kept = _ids(winner)
    assert pre <= kept, sorted(pre - kept)[:10]
    assert won_side <= kept, sorted(won_side - kept)[:10]
    # the loser's writes are not in the database (one history) ...
    assert not (lost_side & kept), sorted(lost_side & kept)[:10]
    # ... but every one it acknowledged is in its salvage archive
    new = [a for a in _archives(cluster) if a not in before]
    assert len(new) == 1, new
    archive = new[0]
    assert archive["node"] == old.name and archive["winner"] == winner.name, archive
    shown = json.loads(
        cluster.cli("cluster", "salvage", "show", str(archive["id"]), "--json").output
    )
    salvaged = {
        int(m.group(1))
        for tx in shown["transactions"]
        for change in tx["changes"]
        for m in [_ROW.search(change)]
        if m is not None
    }
    missing = lost_side - salvaged
    assert not missing, (
        f"{len(missing)} acknowledged write(s) of {old.name} are in no salvage archive: "
        f"{sorted(missing)[:10]}\n{cluster.log_tails(40)}"
    )
    assert not (salvaged & (pre | won_side)), "the archive holds writes the winner has"
    assert shown["fork_point"], shown
    # the old active follows the winner and holds its rows
    wait_for(lambda: won_side <= _ids(old), WAIT, interval=0.5, what="the loser to catch up")
    print(f"minority split: {len(lost_side)} salvaged, {len(won_side)} kept; cut at {cut_at}")


def test_active_in_the_majority_keeps_the_cluster_and_the_minority_takes_no_write(
    cluster: FaultCluster,
) -> None:
    """2|1 with a standby alone: the active keeps its lease (a majority of the store), the
    cut-off standby stays a read-only standby that takes no write (it holds no lease and
    cannot campaign without the store), and after the heal it streams again; nothing is
    salvaged."""
    active, _, lone = _setup(cluster)
    before = _archives(cluster)
    cluster.net.isolate(lone.host, keep_root=True)
    writes = writer(active, 300_000)
    refused = 0
    try:
        deadline = time.monotonic() + TTL + 3.0
        while time.monotonic() < deadline:
            try:
                _exec(lone, f"INSERT INTO {TABLE} VALUES (-1, 'minority')")
                raise AssertionError(f"the cut-off standby {lone.name} took a write")
            except psycopg.errors.ReadOnlySqlTransaction:
                refused += 1
            time.sleep(0.5)
        assert lone.code("/status") != 200, f"{lone.name} claims to be active while cut off"
        assert active.code("/status") == 200, f"{active.name} lost the active role"
    finally:
        acked = set(writes.stop())
        cluster.net.heal(lone.host)
    assert refused > 0 and acked
    now, _ = cluster.wait_healthy()
    assert now == active.name, f"{now} is active after the heal, not {active.name}"
    assert acked <= _ids(active)
    wait_for(lambda: acked <= _ids(lone), WAIT, interval=0.5, what="the standby to catch up")
    assert _archives(cluster) == before, "a salvage archive appeared with nothing to salvage"
