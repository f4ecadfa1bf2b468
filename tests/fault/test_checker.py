"""The fault checker itself: its overlap and handover evidence on made-up timelines, and its
writer and pollers against real PostgreSQL servers: a primary whose commits cannot be
acknowledged must read as ``read-write``, not ``acks``; a deleted acknowledged row (writer or
probe) must be reported lost; two real primaries must be reported as an overlap, and none once
one of them stops taking writes; a frozen server's probe must end in an ``unknown`` sample
within the deadline and, when the server thaws, be replaced by its real outcome, attributed to
when the server wrote it."""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import checker
import psycopg
import pytest
from checker import ACKS, DOWN, READ_ONLY, READ_WRITE, UNKNOWN, Sample

from hacore.testing.procs import child_pids, holds_for, wait_for
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


def test_a_sample_counts_when_its_state_was_true_not_when_its_probe_began() -> None:
    """A node whose commits wait for a standby: each probe lasts the 1 s cancel, but the
    server wrote at its start. Taken whole, those samples leave a blind spot of about 1 s at
    each end of the run (another node writable there went unseen); attributed to the moment
    the server wrote, they do not."""
    a = [
        Sample("a", t, t + 1.0, READ_WRITE, seen_from=t + 0.01, seen_to=t + 0.01)
        for t in (0.0, 1.1, 2.2)
    ]
    b = [
        Sample("b", 0.0, 0.9, READ_ONLY),
        Sample("b", 1.0, 1.12, ACKS, seen_from=1.05, seen_to=1.06),
        Sample("b", 1.2, 1.3, READ_ONLY),
    ]
    found = checker.overlaps({"a": a, "b": b})
    assert [(o.a, o.b, o.kind) for o in found] == [("a", "b", "sample")]
    unattributed = {
        "a": [Sample(s.node, s.start, s.end, s.state) for s in a],
        "b": [Sample(s.node, s.start, s.end, s.state) for s in b],
    }
    assert checker.overlaps(unattributed) == []


def test_a_late_sample_is_placed_where_the_server_wrote() -> None:
    """A probe sent before a freeze and acknowledged after the thaw: attributed after the
    thaw, it is evidence of a write then, inside another node's writable stretch."""
    a = [
        *run("a", ACKS, 0, 2),
        Sample("a", 1.95, 9.0, ACKS, 8.5, 9.0, probe=7, late=True),
        *run("a", DOWN, 2, 9.5),  # new connections time out while it is frozen
    ]
    b = run("b", READ_ONLY, 0, 6) + run("b", ACKS, 6, 10)
    found = checker.overlaps({"a": a, "b": b})
    assert [(o.a, o.b, o.kind) for o in found] == [("b", "a", "sample")]
    assert found[0].start == 8.5


def test_handovers_and_their_gaps() -> None:
    clean = {
        "a": run("a", ACKS, 0, 5) + run("a", DOWN, 5, 10),
        "b": run("b", READ_ONLY, 0, 6) + run("b", ACKS, 6, 10),
    }
    (only,) = checker.handovers(clean, since=1.0)
    assert (only.old, only.new) == ("a", "b")
    assert only.gap == pytest.approx(6.0 - 4.91)
    shared = {
        "a": run("a", ACKS, 0, 5) + run("a", DOWN, 5, 10),
        "b": run("b", READ_ONLY, 0, 4.5) + run("b", ACKS, 4.5, 10),
    }
    (both,) = checker.handovers(shared)
    assert (both.old, both.new) == ("a", "b") and both.gap == pytest.approx(4.5 - 4.91)
    flapping = {
        "a": run("a", ACKS, 0, 2) + run("a", DOWN, 2, 6) + run("a", ACKS, 6, 8),
        "b": run("b", READ_ONLY, 0, 3) + run("b", ACKS, 3, 5) + run("b", READ_ONLY, 5, 8),
    }
    assert [(h.old, h.new) for h in checker.handovers(flapping)] == [("a", "b"), ("b", "a")]
    assert all(h.gap > 0 for h in checker.handovers(flapping))
    assert checker.handovers({"a": run("a", ACKS, 0, 5), "b": run("b", READ_ONLY, 0, 5)}) == []


# -- against a real server -------------------------------------------------------------------


def postgres_server() -> Iterator[tuple[str, Path]]:
    """A throwaway PostgreSQL on a Unix socket only (no TCP port): (conninfo, data dir)."""
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
        yield f"host={root} port=5432 user=postgres dbname=postgres", pgdata
    finally:
        with contextlib.suppress(Exception):
            subprocess.run(
                [bin_dir / "pg_ctl", "-D", pgdata, "-m", "immediate", "-w", "stop"],
                user="postgres",
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def server_and_data() -> Iterator[tuple[str, Path]]:
    yield from postgres_server()


@pytest.fixture(scope="module")
def server(server_and_data: tuple[str, Path]) -> str:
    return server_and_data[0]


@pytest.fixture(scope="module")
def second_server() -> Iterator[str]:
    for conninfo, _ in postgres_server():
        yield conninfo


def set_sync(conninfo: str, names: str) -> None:
    set_parameter(conninfo, "synchronous_standby_names", names)


def set_parameter(conninfo: str, name: str, value: str) -> None:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
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
        # a second of a writer that tries every 10 ms: a hundred chances to count one
        holds_for(
            lambda: len(writer.acks()) == stalled,
            1.0,
            interval=0.01,
            what="no commit waiting for a standby counted",
        )
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
    assert verdict.lost_probes == () and verdict.unresolved == ()
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


def test_two_real_primaries_are_an_overlap_and_one_is_not(server: str, second_server: str) -> None:
    """Two independent primaries both take writes: the checker must say so (acknowledging
    and read-write, with a handover of no gap); once the second refuses writes
    (``default_transaction_read_only``), the stretch after it must show no overlap."""
    for conninfo in (server, second_server):
        checker.prepare(conninfo)
    nodes = {"one": server, "two": second_server}
    poller = checker.Poller(nodes, interval=0.05, probe_timeout=0.3).start()

    def acks(node: str, after: float) -> int:
        return sum(1 for s in poller.samples()[node] if s.state == ACKS and s.at_from > after)

    try:
        begun = time.monotonic()
        wait_for(lambda: min(acks("one", begun), acks("two", begun)) >= 10, 30, what="acks")
        set_parameter(second_server, "default_transaction_read_only", "on")
        wait_for(
            lambda: (poller.latest("two") or Sample("two", 0, 0, DOWN)).state == READ_ONLY,
            30,
            what="the second server read-only",
        )
        alone = time.monotonic()
        wait_for(lambda: acks("one", alone) >= 10, 30, what="acks on the first alone")
    finally:
        poller.stop()
        set_parameter(second_server, "default_transaction_read_only", "off")
    both = {n: [s for s in rows if s.at_to < alone] for n, rows in poller.samples().items()}
    after = {n: [s for s in rows if s.at_from > alone] for n, rows in poller.samples().items()}
    found = checker.overlaps(both, {ACKS})
    assert {(o.a, o.b) for o in found} >= {("one", "two"), ("two", "one")}
    assert any(o.kind == "stretch" and o.seconds > 0.2 for o in found), found
    assert checker.overlaps(both) != []
    assert min(h.gap for h in checker.handovers(both)) < 0
    assert checker.overlaps(after) == []
    assert checker.handovers(after) == []


def test_a_lost_acknowledged_probe_is_reported(server: str) -> None:
    checker.prepare(server)
    writer = checker.Writer(server, {}, run="probes-lost", interval=0.05).start()
    poller = checker.Poller({"pg": server}, interval=0.05, probe_timeout=0.3).start()
    try:
        wait_for(lambda: len(poller.acked_probes()["pg"]) >= 5, 30, what="acknowledged probes")
    finally:
        writer.stop()
        poller.stop()

    def judge() -> checker.Verdict:
        return checker.judge(
            "probes", writer, poller, fault_at=0.0, old_active="pg", new_active="pg",
            final_conninfo=server,
        )  # fmt: skip

    assert judge().lost_probes == ()
    victim = poller.acked_probes()["pg"][2]
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(
            f"DELETE FROM {checker.SCHEMA}.probes WHERE run = %s AND id = %s",
            (poller.run, victim),
        )
    assert judge().lost_probes == (f"pg#{victim}",)


def signal_server(pgdata: Path, sig: signal.Signals) -> None:
    postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
    for pid in [postmaster, *child_pids(postmaster)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def test_a_probe_on_a_frozen_server_is_bounded_then_counted_when_it_answers(
    server_and_data: tuple[str, Path],
) -> None:
    """SIGSTOP of the whole server: the poller's probe in flight must give up at its deadline
    (an ``unknown`` sample, the poller going on sampling), and when the server thaws the same
    probe must be replaced by its real outcome, a write attributed after the thaw."""
    conninfo, pgdata = server_and_data
    checker.prepare(conninfo)
    deadline = 1.5
    poller = checker.Poller(
        {"pg": conninfo}, interval=0.05, probe_timeout=0.3, deadline=deadline
    ).start()
    unknown: Callable[[], list[tuple[int, Sample]]] = lambda: [  # noqa: E731
        (i, s) for i, s in enumerate(poller.samples()["pg"]) if s.state == UNKNOWN
    ]
    try:
        wait_for(lambda: len(poller.acked_probes()["pg"]) >= 5, 30, what="acknowledged probes")
        frozen_at = time.monotonic()
        signal_server(pgdata, signal.SIGSTOP)
        try:
            wait_for(lambda: unknown(), 10, interval=0.05, what="an unknown sample")
            ((index, placeholder),) = unknown()
            assert placeholder.end - placeholder.start <= deadline + 0.5
            assert placeholder.end < frozen_at + deadline + 1.0
            # the poller went on: new connections time out while the server is frozen
            wait_for(
                lambda: any(
                    s.state == DOWN and s.start > placeholder.end for s in poller.samples()["pg"]
                ),
                10,
                what="samples after the unknown one",
            )
        finally:
            thawed_at = time.monotonic()
            signal_server(pgdata, signal.SIGCONT)
        wait_for(
            lambda: poller.samples()["pg"][index].state != UNKNOWN,
            30,
            what="the frozen probe's outcome",
        )
    finally:
        poller.stop()
    late = poller.samples()["pg"][index]
    assert late.late and late.start == placeholder.start
    assert late.state == ACKS, late
    assert late.at_from >= thawed_at, (late, thawed_at)
    assert late.probe in poller.acked_probes()["pg"]
    assert poller.unresolved() == []


class _Agent(http.server.ThreadingHTTPServer):
    """A stand-in for an agent's API on loopback: ``/status`` answers ``code``."""

    code = 200


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Agent

    def do_GET(self) -> None:
        self.send_response(self.server.code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_the_status_poller_reports_two_200s_at_once_and_not_one() -> None:
    """Two endpoints both answering 200 must be evidence of two actives; once one answers
    503, the stretch after must show none (the checker itself: an HTTP server stands in for
    each agent; the fault scenarios poll the real agents)."""
    agents = [_Agent(("127.0.0.1", 0), _Handler) for _ in range(2)]
    for agent in agents:
        threading.Thread(target=agent.serve_forever, daemon=True).start()
    urls = {f"n{i}": f"http://127.0.0.1:{a.server_address[1]}" for i, a in enumerate(agents)}
    status = checker.StatusPoller(urls, interval=0.05).start()

    def oks(node: str, after: float) -> int:
        return sum(1 for s in status.samples()[node] if s.state == "200" and s.start > after)

    try:
        begun = time.monotonic()
        wait_for(lambda: min(oks("n0", begun), oks("n1", begun)) >= 5, 30, what="200s")
        agents[1].code = 503
        switched = time.monotonic()
        wait_for(lambda: oks("n0", switched + 0.2) >= 5, 30, what="200s on n0 alone")
    finally:
        status.stop()
        for agent in agents:
            agent.shutdown()
            agent.server_close()
    rows = status.samples()
    before = {n: [s for s in r if s.end < switched] for n, r in rows.items()}
    after = {n: [s for s in r if s.start > switched + 0.2] for n, r in rows.items()}
    assert checker.overlaps(before, {checker.STATUS_OK})
    assert checker.overlaps(after, {checker.STATUS_OK}) == []
    assert {s.state for s in after["n1"]} == {"503"}
