"""The fault checker itself: its overlap evidence on made-up timelines, and its writer and
poller against a real PostgreSQL server (a primary whose commits cannot be acknowledged must
read as ``read-write``, not ``acks``; a deleted acknowledged row must be reported lost)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from hacore.testing import checker
from hacore.testing.checker import ACKS, DOWN, READ_ONLY, READ_WRITE, Sample
from hacore.testing.procs import wait_for
from hacore_plugins.postgresql.settings import default_bin_dir


def run(node: str, state: str, start: float, end: float, step: float = 0.1) -> list[Sample]:
    """Samples every ``step`` seconds from ``start`` to ``end``, each lasting 10 ms."""
    count = round((end - start) / step)
    return [Sample(node, start + i * step, start + i * step + 0.01, state) for i in range(count)]


def test_a_clean_handover_has_no_overlap() -> None:
    samples = {
        "a": run("a", ACKS, 0, 5) + run("a", DOWN, 5, 10),
        "b": run("b", READ_ONLY, 0, 6) + run("b", ACKS, 6, 10),
    }
    assert checker.overlaps(samples) == []


def test_two_writable_nodes_at_once_are_reported_both_ways() -> None:
    samples = {
        "a": run("a", ACKS, 0, 5) + run("a", DOWN, 5, 10),
        "b": run("b", READ_ONLY, 0, 4) + run("b", ACKS, 4, 10),
    }
    found = checker.overlaps(samples)
    stretches = [o for o in found if o.kind == "stretch"]
    assert len(stretches) == 1
    assert stretches[0].seconds == pytest.approx(0.9, abs=0.05)
    assert {(o.a, o.b) for o in found if o.kind == "sample"} == {("a", "b"), ("b", "a")}


def test_one_long_sample_of_a_frozen_server_is_no_evidence() -> None:
    """A probe sent before a freeze answers after the thaw: it says nothing about when."""
    samples = {
        "a": [*run("a", ACKS, 0, 2), Sample("a", 2.0, 9.0, ACKS), *run("a", DOWN, 9.1, 10)],
        "b": run("b", READ_ONLY, 0, 5) + run("b", ACKS, 5, 10),
    }
    assert checker.overlaps(samples) == []


def test_a_writable_node_that_cannot_acknowledge_counts_only_as_read_write() -> None:
    samples = {
        "a": run("a", ACKS, 0, 3) + run("a", READ_WRITE, 3, 8) + run("a", DOWN, 8, 10),
        "b": run("b", READ_ONLY, 0, 5) + run("b", ACKS, 5, 10),
    }
    assert checker.overlaps(samples, {ACKS}) == []
    assert {o.kind for o in checker.overlaps(samples)} == {"sample", "stretch"}


def test_runs_split_on_every_state_outside_the_wanted_ones() -> None:
    rows = run("a", ACKS, 0, 1) + run("a", DOWN, 1, 2) + run("a", READ_WRITE, 2, 3)
    assert [len(r) for r in checker.writable_runs(rows)] == [10, 10]
    assert [len(r) for r in checker.writable_runs(rows, {ACKS})] == [10]


# -- against a real server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """A throwaway PostgreSQL on a Unix socket only (no TCP port); yields its conninfo."""
    bin_dir = default_bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL binaries installed")
    if os.geteuid() != 0:
        pytest.skip("runs PostgreSQL as the postgres user (needs root)")
    root = Path(tempfile.mkdtemp(prefix="hacore-checker-"))
    shutil.chown(root, "postgres", "postgres")
    pgdata = root / "data"

    def as_pg(*argv: object) -> None:
        subprocess.run(
            [str(a) for a in argv],
            user="postgres",
            group="postgres",
            check=True,
            capture_output=True,
            timeout=120,
        )

    try:
        as_pg(bin_dir / "initdb", "-D", pgdata, "-U", "postgres", "--auth=trust", "-N")
        options = f"-k {root} -c listen_addresses='' -c port=5432 -c fsync=off"
        as_pg(bin_dir / "pg_ctl", "-D", pgdata, "-o", options, "-l", root / "log", "-w", "start")
        yield f"host={root} port=5432 user=postgres dbname=postgres"
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(
                [bin_dir / "pg_ctl", "-D", pgdata, "-m", "immediate", "-w", "stop"],
                user="postgres",
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(root, ignore_errors=True)


def set_sync(conninfo: str, names: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{names}'")
        conn.execute("SELECT pg_reload_conf()")


def test_the_witnesses_on_a_real_primary(server: str) -> None:
    def state() -> str | None:
        latest = poller.latest("pg")
        return None if latest is None else latest.state

    checker.prepare(server)
    writer = checker.Writer(server, {}, run="real", interval=0.01).start()
    poller = checker.Poller({"pg": server}, interval=0.05, probe_timeout=0.3).start()
    try:
        wait_for(lambda: len(writer.acks()) >= 10, 30, what="acknowledged writes")
        wait_for(lambda: state() == ACKS, 30, what="acks")
        # A synchronous standby that never comes: writable, but nothing is acknowledged.
        set_sync(server, "nobody")
        wait_for(lambda: state() == READ_WRITE, 30, what="read-write")
        stalled = len(writer.acks())
        time.sleep(1.0)
        assert len(writer.acks()) == stalled, "a commit waiting for a standby was counted"
        set_sync(server, "")
        wait_for(lambda: len(writer.acks()) > stalled + 5, 30, what="writes acknowledged again")
        wait_for(lambda: state() == ACKS, 30, what="acks again")
    finally:
        writer.stop()
        poller.stop()
    fault_at = time.monotonic() - 3600
    verdict = checker.judge(
        "real",
        writer,
        poller,
        fault_at=fault_at,
        old_active="pg",
        new_active="pg",
        final_conninfo=server,
    )
    assert verdict.lost == () and verdict.acked == len(writer.acks()) > 15
    assert verdict.overlaps_rw == () and verdict.overlaps_ack == ()
    # A write that vanishes after its acknowledgement is reported, by id.
    victim = writer.acks()[3].id
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(
            f"DELETE FROM {checker.SCHEMA}.writes WHERE run = 'real' AND id = %s", (victim,)
        )
    verdict = checker.judge(
        "real",
        writer,
        poller,
        fault_at=fault_at,
        old_active="pg",
        new_active="pg",
        final_conninfo=server,
    )
    assert verdict.lost == (victim,)
