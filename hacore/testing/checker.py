"""A checker for fault tests: acknowledged writes that must survive, and at most one writer.

Two witnesses run on threads while a test breaks the cluster:

- :class:`Writer` inserts sequential ids through one multi-host connection string
  (``target_session_attrs=read-write``), as an application would, and records every id whose
  ``INSERT`` returned (an acknowledged write) and which node acknowledged it. By default it
  sets no timeout: a cancelled synchronous commit is reported as a success by PostgreSQL
  (with only a warning), so a timeout counts writes that no standby may have. With
  ``cancel_after`` it is that impatient application on purpose: it cancels a statement that
  has not returned in time and counts whatever returned as acknowledged (``Ack.cancelled``
  marks those), which is how a cluster that leaves a writable primary behind loses them.
- :class:`Poller` asks each node's PostgreSQL, every ``interval``, whether it takes writes:
  ``pg_is_in_recovery()``, then a probe ``INSERT`` that must be acknowledged within
  ``probe_timeout`` (``acks``); one that is cancelled after that counts as ``read-write``
  (the server accepts writes but cannot acknowledge them, such as a primary waiting for a
  synchronous standby it lost).

:func:`judge` turns what they saw into a :class:`Verdict`: the acknowledged ids missing on the
final active, and every moment where two nodes took writes at once. Overlap is only claimed
on evidence: a node is *surely* writable between the end of one writable sample and the start
of the next writable sample of the same run, and overlap is a sample of another node inside
such a stretch (or two such stretches that intersect). Sampling can then only under-report an
overlap by up to one interval, never invent one.

All times are ``time.monotonic()`` seconds.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import psycopg

SCHEMA = "hacore_fault"
DOWN, READ_ONLY, READ_WRITE, ACKS = "down", "read-only", "read-write", "acks"
WRITABLE = frozenset({READ_WRITE, ACKS})


def prepare(conninfo: str) -> None:
    """Create the checker's tables on the active (they replicate to the standbys)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {SCHEMA}.writes"
            " (run text, id bigint, at timestamptz DEFAULT clock_timestamp(),"
            " PRIMARY KEY (run, id))"
        )
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {SCHEMA}.probes"
            " (node text, at timestamptz DEFAULT clock_timestamp())"
        )


@attrs.frozen
class Ack:
    id: int
    at: float
    node: str
    #: the client cancelled it after ``cancel_after`` and the server still reported it done
    cancelled: bool = False


@attrs.frozen
class Sample:
    node: str
    start: float
    end: float
    state: str

    @property
    def writable(self) -> bool:
        return self.state in WRITABLE


class _Thread:
    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Any:
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the thread to end; a call stuck on a frozen server is left behind (daemon)."""
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        raise NotImplementedError


class Writer(_Thread):
    """Sequential inserts through ``conninfo``; ``nodes`` maps a connection's host (socket
    directory or address) to the node's name, to say who acknowledged each write."""

    def __init__(
        self,
        conninfo: str,
        nodes: Mapping[str, str],
        *,
        run: str,
        interval: float = 0.02,
        connect_timeout: int = 2,
        cancel_after: float | None = None,
    ) -> None:
        super().__init__(f"writer {run}")
        self.cancel_after = cancel_after
        self.conninfo = (
            f"{conninfo} target_session_attrs=read-write connect_timeout={connect_timeout}"
        )
        self.nodes = dict(nodes)
        self.run = run
        self.interval = interval
        self.acked: list[Ack] = []
        self.attempts = 0
        self.errors: list[tuple[float, str]] = []
        self._lock = threading.Lock()

    def acks(self) -> list[Ack]:
        with self._lock:
            return list(self.acked)

    def _run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        next_id = 1
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.conninfo, autocommit=True)
                node = self.nodes.get(conn.info.host, conn.info.host)
                ident, next_id = next_id, next_id + 1
                self.attempts += 1
                cancelled = self._insert(conn, ident)
                with self._lock:
                    self.acked.append(Ack(ident, time.monotonic(), node, cancelled))
            except psycopg.Error as exc:
                self.errors.append((time.monotonic(), str(exc).strip().splitlines()[0][:200]))
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
                self._stop.wait(0.1)
                continue
            self._stop.wait(self.interval)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _insert(self, conn: psycopg.Connection[Any], ident: int) -> bool:
        """Insert ``ident``; True when it returned only after the client cancelled it."""
        query = f"INSERT INTO {SCHEMA}.writes (run, id) VALUES (%s, %s)"
        patience = self.cancel_after
        if patience is None:
            conn.execute(query, (self.run, ident))
            return False
        cancelled = threading.Event()

        def cancel() -> None:
            cancelled.set()
            with contextlib.suppress(Exception):
                conn.cancel_safe(timeout=patience)

        timer = threading.Timer(patience, cancel)
        timer.daemon = True
        timer.start()
        try:
            conn.execute(query, (self.run, ident))
        finally:
            timer.cancel()
        return cancelled.is_set()


class Poller(_Thread):
    """Samples whether each node takes writes: one thread per node, so a frozen server only
    stalls its own samples. ``nodes`` maps a node's name to a conninfo reaching it directly."""

    def __init__(
        self,
        nodes: Mapping[str, str],
        *,
        interval: float = 0.1,
        probe_timeout: float = 1.0,
    ) -> None:
        super().__init__("poller")
        self.nodes = dict(nodes)
        self.interval = interval
        self.probe_timeout = probe_timeout
        self._samples: dict[str, list[Sample]] = {name: [] for name in nodes}
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._poll, args=(name,), name=f"poll {name}", daemon=True)
            for name in nodes
        ]

    def start(self) -> Poller:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def samples(self) -> dict[str, list[Sample]]:
        with self._lock:
            return {name: list(rows) for name, rows in self._samples.items()}

    def latest(self, node: str) -> Sample | None:
        with self._lock:
            rows = self._samples[node]
            return rows[-1] if rows else None

    def _poll(self, node: str) -> None:
        conninfo = f"{self.nodes[node]} connect_timeout=1 application_name=hacore-fault-poller"
        conn: psycopg.Connection[Any] | None = None
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(conninfo, autocommit=True)
                state = self._probe(conn, node)
            except psycopg.Error:
                state = DOWN
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
            with self._lock:
                self._samples[node].append(Sample(node, start, time.monotonic(), state))
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - start)))
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _probe(self, conn: psycopg.Connection[Any], node: str) -> str:
        row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        if row is None or row[0]:
            return READ_ONLY
        cancelled = threading.Event()

        def cancel() -> None:
            cancelled.set()
            with contextlib.suppress(Exception):
                conn.cancel_safe(timeout=self.probe_timeout)

        timer = threading.Timer(self.probe_timeout, cancel)
        timer.daemon = True
        timer.start()
        try:
            conn.execute(f"INSERT INTO {SCHEMA}.probes (node) VALUES (%s)", (node,))
        except psycopg.errors.ReadOnlySqlTransaction:
            return READ_ONLY
        except psycopg.errors.QueryCanceled:
            return READ_WRITE
        finally:
            timer.cancel()
        # A cancelled synchronous commit returns as a success: it was not acknowledged.
        return READ_WRITE if cancelled.is_set() else ACKS


@attrs.frozen
class Overlap:
    """Evidence that ``a`` and ``b`` both took writes: the stretch where both surely did
    (``seconds`` > 0), or a sample of one inside a stretch where the other surely did."""

    a: str
    b: str
    start: float
    end: float
    kind: str

    @property
    def seconds(self) -> float:
        return max(0.0, self.end - self.start)


def writable_runs(
    samples: Sequence[Sample], states: Iterable[str] = WRITABLE
) -> list[list[Sample]]:
    """Maximal runs of consecutive samples whose state is in ``states``."""
    wanted = set(states)
    runs: list[list[Sample]] = []
    current: list[Sample] = []
    for sample in samples:
        if sample.state in wanted:
            current.append(sample)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


def overlaps(
    samples: Mapping[str, Sequence[Sample]], states: Iterable[str] = WRITABLE
) -> list[Overlap]:
    """Every piece of evidence that two nodes were in ``states`` at the same moment."""
    states = frozenset(states)
    sure = {
        node: [(run[0].end, run[-1].start) for run in writable_runs(rows, states) if len(run) > 1]
        for node, rows in samples.items()
    }
    found: list[Overlap] = []
    names = sorted(samples)
    for a in names:
        for b in names:
            if a == b:
                continue
            for lo, hi in sure[a]:
                for sample in samples[b]:
                    if sample.state in states and lo < sample.start and sample.end < hi:
                        found.append(Overlap(a, b, sample.start, sample.end, "sample"))
                if a < b:
                    for blo, bhi in sure[b]:
                        if max(lo, blo) < min(hi, bhi):
                            found.append(Overlap(a, b, max(lo, blo), min(hi, bhi), "stretch"))
    return found


@attrs.frozen
class Verdict:
    """What a scenario's witnesses saw, relative to the fault at ``fault_at``."""

    scenario: str
    old_active: str
    new_active: str
    acked: int
    lost: tuple[int, ...]
    attempts: int
    #: the old active was seen not taking writes this long after the fault (upper bound)
    fence_s: float | None
    #: another node was seen acknowledging writes this long after the fault (upper bound)
    takeover_s: float | None
    #: the writer's first write acknowledged by another node than the old active
    first_ack_s: float | None
    #: writes the old active acknowledged after the fault (replicated before the cut, or lost)
    old_acks_after: int
    #: the writer's longest wait between two acknowledgements after the fault
    longest_stall_s: float | None
    #: from the old active's last writable sample to the first one of another node
    handover_gap_s: float | None
    overlaps_rw: tuple[Overlap, ...]
    overlaps_ack: tuple[Overlap, ...]
    #: how long after the fault the old active was last seen writable
    last_writable_old_s: float | None

    def summary(self) -> str:
        def fmt(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}s"

        return (
            f"[{self.scenario}] old active {self.old_active} -> {self.new_active}: "
            f"acked {self.acked}/{self.attempts} attempts, lost {len(self.lost)}; "
            f"fence {fmt(self.fence_s)}, takeover {fmt(self.takeover_s)}, "
            f"first ack elsewhere {fmt(self.first_ack_s)}, "
            f"old acks after fault {self.old_acks_after}, "
            f"longest write stall {fmt(self.longest_stall_s)}, "
            f"handover gap {fmt(self.handover_gap_s)}, "
            f"old last writable {fmt(self.last_writable_old_s)}; "
            f"overlap read-write {sum(o.seconds for o in self.overlaps_rw):.2f}s "
            f"({len(self.overlaps_rw)} evidence), "
            f"acknowledging {sum(o.seconds for o in self.overlaps_ack):.2f}s "
            f"({len(self.overlaps_ack)} evidence)"
        )


def _longest_stall(acks: Sequence[Ack], since: float) -> float | None:
    times = [since, *(a.at for a in acks if a.at > since)]
    if len(times) < 2:
        return None
    return max(b - a for a, b in itertools.pairwise(times))


def present_ids(conninfo: str, run: str, ids: Iterable[int]) -> set[int]:
    """Which of ``ids`` the node at ``conninfo`` holds for ``run``."""
    wanted = sorted(set(ids))
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
        rows = conn.execute(
            f"SELECT id FROM {SCHEMA}.writes WHERE run = %s AND id = ANY(%s)", (run, wanted)
        ).fetchall()
    return {int(row[0]) for row in rows}


def judge(
    scenario: str,
    writer: Writer,
    poller: Poller,
    *,
    fault_at: float,
    old_active: str,
    new_active: str,
    final_conninfo: str,
) -> Verdict:
    """The verdict, once the writer and poller are stopped and ``new_active`` is the active
    node whose database ``final_conninfo`` reaches."""
    acks = writer.acks()
    present = present_ids(final_conninfo, writer.run, (a.id for a in acks))
    lost = tuple(sorted({a.id for a in acks} - present))
    samples = poller.samples()
    old = samples.get(old_active, [])
    after = [s for s in old if s.start >= fault_at]
    fenced = next((s for s in after if not s.writable), None)
    old_writable = [s for s in old if s.writable]
    last_old = old_writable[-1] if old_writable else None
    takeover = min(
        (
            s
            for node, rows in samples.items()
            if node != old_active
            for s in rows
            if s.state == ACKS and s.start >= fault_at
        ),
        key=lambda s: s.end,
        default=None,
    )
    first_ack = next((a for a in acks if a.at > fault_at and a.node != old_active), None)
    return Verdict(
        scenario=scenario,
        old_active=old_active,
        new_active=new_active,
        acked=len(acks),
        lost=lost,
        attempts=writer.attempts,
        fence_s=None if fenced is None else fenced.end - fault_at,
        takeover_s=None if takeover is None else takeover.end - fault_at,
        first_ack_s=None if first_ack is None else first_ack.at - fault_at,
        old_acks_after=sum(1 for a in acks if a.at > fault_at and a.node == old_active),
        longest_stall_s=_longest_stall(acks, fault_at),
        handover_gap_s=(
            None if takeover is None or last_old is None else takeover.start - last_old.end
        ),
        overlaps_rw=tuple(overlaps(samples, WRITABLE)),
        overlaps_ack=tuple(overlaps(samples, {ACKS})),
        last_writable_old_s=None if last_old is None else last_old.end - fault_at,
    )


def timeline(poller: Poller, writer: Writer, *, since: float, until: float | None = None) -> str:
    """State changes of every node and the writer's acknowledgements per node, as text for a
    failure message or a bug report."""
    lines = []
    for node, rows in sorted(poller.samples().items()):
        previous = None
        for sample in rows:
            if sample.start < since or (until is not None and sample.start > until):
                continue
            if sample.state != previous:
                lines.append((sample.start, f"{node}: {sample.state}"))
                previous = sample.state
    by_node: dict[str, list[Ack]] = {}
    for ack in writer.acks():
        if ack.at >= since and (until is None or ack.at <= until):
            by_node.setdefault(ack.node, []).append(ack)
    for node, acks in by_node.items():
        lines.append((acks[0].at, f"writer: first ack on {node} (id {acks[0].id})"))
        lines.append((acks[-1].at, f"writer: last ack on {node} (id {acks[-1].id}, {len(acks)})"))
    return "\n".join(f"{at - since:+8.3f}s  {text}" for at, text in sorted(lines))
