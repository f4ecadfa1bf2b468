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
- :class:`StatusPoller` asks each node's agent ``GET /status`` every ``interval``, as a load
  balancer would, and records the HTTP code.

Exactness, which the verdict relies on:

- **Attribution.** A sample records, besides the interval its probe took, the narrowest
  interval in which its state was certainly true (``seen_from``..``seen_to``): the server's
  ``clock_timestamp()`` when it executed the probe ``INSERT`` (the same kernel clock as the
  test's, mapped to ``time.monotonic()``), up to the acknowledgement for ``acks``. A long
  probe (a commit waiting for a standby, a server that thaws) is attributed to when the server
  actually wrote, not to when the probe began.
- **Every probe is bounded**: a connect timeout, a ``statement_timeout`` on the session, a
  client cancel at ``probe_timeout`` and a client-side ``deadline`` after which the poller
  stops waiting. A probe still unanswered at its deadline (a frozen server) is recorded as
  ``unknown`` and left to finish on its own thread: when it completes, its real outcome
  replaces the placeholder (``late``); one that never completes stays ``unknown`` with its
  probe id, and the verdict lists it as *unresolved*: a write whose moment nobody knows,
  which a safety assertion must treat as a failure to prove safety.
- **Probe writes are loss-checked**: every acknowledged probe ``INSERT`` carries an id, and
  the verdict lists those missing on the final active, as for the writer's rows.

:func:`judge` turns what they saw into a :class:`Verdict`: the acknowledged ids missing on the
final active, every moment where two nodes took writes at once, every handover of the
writable role with its gap, and every moment two agents answered ``/status`` 200. Overlap is
only claimed on evidence: a node is *surely* writable between the attributed end of one
writable sample and the attributed start of the next writable sample of the same run (the one
assumption: a node does not flip roles and back between two consecutive samples), and overlap
is a sample of another node attributed inside such a stretch (or two such stretches that
intersect). Sampling can then only under-report an overlap by up to one sampling interval
(0.1 s by default), never invent one.

All times are ``time.monotonic()`` seconds.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import httpx
import psycopg

SCHEMA = "hacore_fault"
DOWN, READ_ONLY, READ_WRITE, ACKS = "down", "read-only", "read-write", "acks"
#: a probe that did not answer by its deadline (see the module's docstring)
UNKNOWN = "unknown"
WRITABLE = frozenset({READ_WRITE, ACKS})
#: the state of a :class:`StatusPoller` sample whose agent answered ``/status`` 200
STATUS_OK = "200"
#: PostgreSQL's warning on a commit whose synchronous-replication wait was cancelled
_SYNC_CANCELLED = "wait for synchronous replication"


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
            " (node text, at timestamptz DEFAULT clock_timestamp(), run text, id bigint)"
        )
        conn.execute(
            f"ALTER TABLE {SCHEMA}.probes"
            " ADD COLUMN IF NOT EXISTS run text, ADD COLUMN IF NOT EXISTS id bigint"
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
    """One probe of one node: it ran from ``start`` to ``end``; its ``state`` was true at some
    moment between ``seen_from`` and ``seen_to`` (the whole probe when not narrowed)."""

    node: str
    start: float
    end: float
    state: str
    seen_from: float | None = None
    seen_to: float | None = None
    #: the id of the probe ``INSERT`` this sample sent, if it sent one
    probe: int | None = None
    #: completed after its deadline; it replaced an ``unknown`` placeholder
    late: bool = False

    @property
    def writable(self) -> bool:
        return self.state in WRITABLE

    @property
    def at_from(self) -> float:
        return self.start if self.seen_from is None else self.seen_from

    @property
    def at_to(self) -> float:
        return self.end if self.seen_to is None else self.seen_to


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


class _Attempt:
    """One probe on its own thread, so the poller can stop waiting for a frozen server and
    still learn the outcome if the server ever answers."""

    def __init__(self, poller: Poller, node: str, conn: psycopg.Connection[Any] | None) -> None:
        self.poller = poller
        self.node = node
        self.conn = conn
        self.start = time.monotonic()
        self.probe: int | None = None
        self.result: Sample | None = None
        #: where the poller put this attempt's ``unknown`` placeholder when it gave up waiting
        self.placeholder: int | None = None
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name=f"probe {node}", daemon=True)

    def _run(self) -> None:
        state: str = DOWN
        seen: tuple[float | None, float | None] = (None, None)
        try:
            if self.conn is None or self.conn.closed:
                self.conn = self.poller._connect(self.node)
            state, seen = self.poller._probe(self.conn, self.node, self)
        except psycopg.Error:
            state = DOWN
            self._close()
        except Exception:  # a probe must always end in a sample
            state = UNKNOWN
            self._close()
        sample = Sample(
            self.node, self.start, time.monotonic(), state, seen[0], seen[1], self.probe
        )
        with self.lock:
            if self.placeholder is None:
                self.result = sample
                return
        self.poller._resolve(self.node, self.placeholder, attrs.evolve(sample, late=True))
        self._close()

    def _close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
        self.conn = None


class Poller(_Thread):
    """Samples whether each node takes writes: one thread per node, so a frozen server only
    stalls its own samples. ``nodes`` maps a node's name to a conninfo reaching it directly.

    Each probe is bounded (module docstring): ``connect_timeout``, a session
    ``statement_timeout`` of ``probe_timeout`` + 0.5 s, a client cancel of the ``INSERT`` at
    ``probe_timeout``, and a client-side ``deadline`` (default ``probe_timeout`` +
    ``connect_timeout`` + 1 s) for the whole probe. ``run`` names this poller's probe rows."""

    def __init__(
        self,
        nodes: Mapping[str, str],
        *,
        interval: float = 0.1,
        probe_timeout: float = 1.0,
        connect_timeout: int = 1,
        deadline: float | None = None,
        run: str | None = None,
    ) -> None:
        super().__init__("poller")
        self.nodes = dict(nodes)
        self.interval = interval
        self.probe_timeout = probe_timeout
        self.connect_timeout = connect_timeout
        self.deadline = probe_timeout + connect_timeout + 1.0 if deadline is None else deadline
        self.run = run or f"probes-{secrets.token_hex(4)}"
        self._samples: dict[str, list[Sample]] = {name: [] for name in nodes}
        self._acked: dict[str, list[int]] = {name: [] for name in nodes}
        self._ids = itertools.count(1)
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

    def acked_probes(self) -> dict[str, list[int]]:
        """The ids of the probe ``INSERT`` s each node acknowledged (late ones included)."""
        with self._lock:
            return {name: list(ids) for name, ids in self._acked.items()}

    def unresolved(self) -> list[Sample]:
        """Probe ``INSERT`` s sent that never answered: their outcome and moment are unknown."""
        with self._lock:
            return [
                s
                for rows in self._samples.values()
                for s in rows
                if s.state == UNKNOWN and s.probe is not None
            ]

    def _record(self, node: str, sample: Sample) -> int:
        with self._lock:
            self._samples[node].append(sample)
            if sample.state == ACKS and sample.probe is not None:
                self._acked[node].append(sample.probe)
            return len(self._samples[node]) - 1

    def _resolve(self, node: str, index: int, sample: Sample) -> None:
        with self._lock:
            self._samples[node][index] = sample
            if sample.state == ACKS and sample.probe is not None:
                self._acked[node].append(sample.probe)

    def _connect(self, node: str) -> psycopg.Connection[Any]:
        conn = psycopg.connect(
            f"{self.nodes[node]} connect_timeout={self.connect_timeout}"
            " application_name=hacore-fault-poller",
            autocommit=True,
        )
        try:
            conn.execute(f"SET statement_timeout = {int((self.probe_timeout + 0.5) * 1000)}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _poll(self, node: str) -> None:
        conn: psycopg.Connection[Any] | None = None
        while not self._stop.is_set():
            attempt = _Attempt(self, node, conn)
            attempt.thread.start()
            attempt.thread.join(self.deadline)
            with attempt.lock:
                if attempt.result is None:
                    attempt.placeholder = self._record(
                        node,
                        Sample(node, attempt.start, time.monotonic(), UNKNOWN, probe=attempt.probe),
                    )
                    # the attempt keeps its connection and closes it if the server answers
                    conn = None
                    continue
            self._record(node, attempt.result)
            conn = attempt.conn
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - attempt.start)))
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def _probe(
        self, conn: psycopg.Connection[Any], node: str, attempt: _Attempt
    ) -> tuple[str, tuple[float | None, float | None]]:
        started = time.monotonic()
        row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        if row is None or row[0]:
            return READ_ONLY, (started, time.monotonic())
        warned: list[str] = []

        def cancel() -> None:
            with contextlib.suppress(Exception):
                conn.cancel_safe(timeout=self.probe_timeout)

        def notice(diag: psycopg.errors.Diagnostic) -> None:
            if _SYNC_CANCELLED in (diag.message_primary or ""):
                warned.append(diag.message_primary or "")

        ident = next(self._ids)
        attempt.probe = ident
        conn.add_notice_handler(notice)
        timer = threading.Timer(self.probe_timeout, cancel)
        timer.daemon = True
        sent = time.monotonic()
        timer.start()
        try:
            written = conn.execute(
                f"INSERT INTO {SCHEMA}.probes (node, run, id) VALUES (%s, %s, %s)"
                " RETURNING extract(epoch FROM clock_timestamp())",
                (node, self.run, ident),
            ).fetchone()
        except psycopg.errors.ReadOnlySqlTransaction:
            return READ_ONLY, (sent, time.monotonic())
        except psycopg.errors.QueryCanceled:
            return READ_WRITE, (sent, time.monotonic())
        finally:
            timer.cancel()
            conn.remove_notice_handler(notice)
        done = time.monotonic()
        at = sent if written is None else _monotonic(float(written[0]), sent, done)
        # A cancelled synchronous commit returns as a success, with a warning: it was not
        # acknowledged. (A cancel that never reached the server, frozen, changes nothing.)
        if warned:
            return READ_WRITE, (at, at)
        return ACKS, (at, done)


def _monotonic(wall: float, lo: float, hi: float) -> float:
    """A server's ``clock_timestamp()`` (the same kernel's wall clock) as ``time.monotonic()``,
    kept inside the probe's own interval."""
    at = wall - (time.time() - time.monotonic())
    return min(max(at, lo), hi)


class StatusPoller(_Thread):
    """``GET /status`` of every node's agent every ``interval`` (one thread per node, each
    request bounded by ``timeout``), as a load balancer sees it. ``urls`` maps a node's name to
    its agent's base URL; a sample's state is the HTTP code, or ``down``."""

    def __init__(
        self, urls: Mapping[str, str], *, interval: float = 0.1, timeout: float = 0.5
    ) -> None:
        super().__init__("status poller")
        self.urls = dict(urls)
        self.interval = interval
        self.timeout = timeout
        self._samples: dict[str, list[Sample]] = {name: [] for name in urls}
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._poll, args=(name,), name=f"status {name}", daemon=True)
            for name in urls
        ]

    def start(self) -> StatusPoller:
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

    def _poll(self, node: str) -> None:
        with httpx.Client(timeout=self.timeout) as client:
            while not self._stop.is_set():
                start = time.monotonic()
                try:
                    state = str(client.get(f"{self.urls[node]}/status").status_code)
                except httpx.HTTPError:
                    state = DOWN
                with self._lock:
                    self._samples[node].append(Sample(node, start, time.monotonic(), state))
                self._stop.wait(max(0.0, self.interval - (time.monotonic() - start)))


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
    """Every piece of evidence that two nodes were in ``states`` at the same moment, each
    sample taken at its attributed interval (``seen_from``..``seen_to``)."""
    states = frozenset(states)
    ordered = {node: sorted(rows, key=lambda s: s.at_from) for node, rows in samples.items()}
    sure = {
        node: [
            (run[0].at_to, run[-1].at_from)
            for run in writable_runs(rows, states)
            if len(run) > 1 and run[0].at_to < run[-1].at_from
        ]
        for node, rows in ordered.items()
    }
    found: list[Overlap] = []
    names = sorted(samples)
    for a in names:
        for b in names:
            if a == b:
                continue
            for lo, hi in sure[a]:
                for sample in ordered[b]:
                    if sample.state in states and lo < sample.at_from and sample.at_to < hi:
                        found.append(Overlap(a, b, sample.at_from, sample.at_to, "sample"))
                if a < b:
                    for blo, bhi in sure[b]:
                        if max(lo, blo) < min(hi, bhi):
                            found.append(Overlap(a, b, max(lo, blo), min(hi, bhi), "stretch"))
    return found


@attrs.frozen
class Handover:
    """The role in ``states`` passed from ``old`` to ``new``: ``old`` was last seen in it at
    ``last_old`` (the end of its sample's attributed interval), ``new`` first at ``first_new``
    (the start of its). A positive ``gap`` proves ``old`` left before ``new`` came."""

    old: str
    new: str
    last_old: float
    first_new: float

    @property
    def gap(self) -> float:
        return self.first_new - self.last_old


def handovers(
    samples: Mapping[str, Sequence[Sample]],
    states: Iterable[str] = WRITABLE,
    since: float = float("-inf"),
) -> list[Handover]:
    """Every change of the node seen in ``states`` whose new holder was first seen at or
    after ``since`` (the holder before ``since`` counts as the old one). Each node's runs of
    such samples (taken at their attributed intervals) are its stints; a stint of another
    node than the previous one is a handover from the node whose stint ended last, and a
    stint that began before that end (a shared role) has a gap <= 0."""
    wanted = frozenset(states)
    stints = sorted(
        (run[0].at_from, max(s.at_to for s in run), node)
        for node, rows in samples.items()
        for run in writable_runs(sorted(rows, key=lambda s: s.at_from), wanted)
    )
    found: list[Handover] = []
    ends: dict[str, float] = {}
    previous: str | None = None
    for start, end, node in stints:
        others = {name: at for name, at in ends.items() if name != node}
        if previous is not None and node != previous and others and start >= since:
            old = max(others, key=lambda name: others[name])
            found.append(Handover(old, node, others[old], start))
        ends[node] = max(ends.get(node, end), end)
        previous = node
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
    #: how long after the fault the old active was last seen writable (attributed)
    last_writable_old_s: float | None
    #: acknowledged probe INSERTs (``node#id``) missing on the final active
    lost_probes: tuple[str, ...] = ()
    #: probe INSERTs that never answered: when (and whether) they wrote is unknown
    unresolved: tuple[Sample, ...] = ()
    #: every change of the writable node after the fault
    handovers: tuple[Handover, ...] = ()
    #: evidence of two agents answering ``/status`` 200 at once (when a status poller ran)
    overlaps_status: tuple[Overlap, ...] = ()
    #: how long after the fault the old active last acknowledged a probe (attributed)
    last_acks_old_s: float | None = None

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
            f"old last writable {fmt(self.last_writable_old_s)}, "
            f"last acknowledging {fmt(self.last_acks_old_s)}; "
            f"overlap read-write {sum(o.seconds for o in self.overlaps_rw):.2f}s "
            f"({len(self.overlaps_rw)} evidence), "
            f"acknowledging {sum(o.seconds for o in self.overlaps_ack):.2f}s "
            f"({len(self.overlaps_ack)} evidence), "
            f"/status 200 twice {len(self.overlaps_status)} evidence; "
            f"lost probes {len(self.lost_probes)}, unresolved probes {len(self.unresolved)}, "
            f"handovers {len(self.handovers)}"
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


def present_probes(conninfo: str, run: str, ids: Iterable[tuple[str, int]]) -> set[tuple[str, int]]:
    """Which of the probe rows ``(node, id)`` the node at ``conninfo`` holds for ``run``."""
    wanted = sorted({ident for _, ident in ids})
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
        rows = conn.execute(
            f"SELECT node, id FROM {SCHEMA}.probes WHERE run = %s AND id = ANY(%s)",
            (run, wanted),
        ).fetchall()
    return {(str(row[0]), int(row[1])) for row in rows}


def judge(
    scenario: str,
    writer: Writer,
    poller: Poller,
    *,
    fault_at: float,
    old_active: str,
    new_active: str,
    final_conninfo: str,
    status: StatusPoller | None = None,
) -> Verdict:
    """The verdict, once the writer and poller are stopped and ``new_active`` is the active
    node whose database ``final_conninfo`` reaches."""
    acks = writer.acks()
    present = present_ids(final_conninfo, writer.run, (a.id for a in acks))
    lost = tuple(sorted({a.id for a in acks} - present))
    probes = {(node, ident) for node, ids in poller.acked_probes().items() for ident in ids}
    lost_probes = probes - present_probes(final_conninfo, poller.run, probes)
    samples = poller.samples()
    old = sorted(samples.get(old_active, []), key=lambda s: s.at_from)
    after = [s for s in old if s.at_from >= fault_at]
    fenced = next((s for s in after if not s.writable and s.state != UNKNOWN), None)
    last_old = max((s.at_to for s in old if s.writable), default=None)
    last_acks = max((s.at_to for s in old if s.state == ACKS), default=None)
    takeover = min(
        (
            s
            for node, rows in samples.items()
            if node != old_active
            for s in rows
            if s.state == ACKS and s.at_from >= fault_at
        ),
        key=lambda s: s.at_to,
        default=None,
    )
    changes = handovers(samples, WRITABLE, since=fault_at)
    first_handover = next((h for h in changes if h.old == old_active), None)
    first_ack = next((a for a in acks if a.at > fault_at and a.node != old_active), None)
    return Verdict(
        scenario=scenario,
        old_active=old_active,
        new_active=new_active,
        acked=len(acks),
        lost=lost,
        attempts=writer.attempts,
        fence_s=None if fenced is None else fenced.end - fault_at,
        takeover_s=None if takeover is None else takeover.at_to - fault_at,
        first_ack_s=None if first_ack is None else first_ack.at - fault_at,
        old_acks_after=sum(1 for a in acks if a.at > fault_at and a.node == old_active),
        longest_stall_s=_longest_stall(acks, fault_at),
        handover_gap_s=None if first_handover is None else first_handover.gap,
        overlaps_rw=tuple(overlaps(samples, WRITABLE)),
        overlaps_ack=tuple(overlaps(samples, {ACKS})),
        last_writable_old_s=None if last_old is None else last_old - fault_at,
        lost_probes=tuple(f"{node}#{ident}" for node, ident in sorted(lost_probes)),
        unresolved=tuple(poller.unresolved()),
        handovers=tuple(changes),
        overlaps_status=() if status is None else tuple(overlaps(status.samples(), {STATUS_OK})),
        last_acks_old_s=None if last_acks is None else last_acks - fault_at,
    )


def timeline(poller: Poller, writer: Writer, *, since: float, until: float | None = None) -> str:
    """State changes of every node (at their attributed moments; ``late`` and unresolved probes
    marked) and the writer's acknowledgements per node, as text for a failure message or a bug
    report."""
    lines = []
    for node, rows in sorted(poller.samples().items()):
        previous = None
        for sample in sorted(rows, key=lambda s: s.at_from):
            if sample.at_from < since or (until is not None and sample.at_from > until):
                continue
            if sample.late or (sample.state == UNKNOWN and sample.probe is not None):
                what = "late" if sample.late else "unresolved"
                lines.append(
                    (
                        sample.at_from,
                        f"{node}: {sample.state} ({what} probe {sample.probe}, sent at "
                        f"{sample.start - since:+.3f}s)",
                    )
                )
            elif sample.state != previous:
                lines.append((sample.at_from, f"{node}: {sample.state}"))
            previous = sample.state
    by_node: dict[str, list[Ack]] = {}
    for ack in writer.acks():
        if ack.at >= since and (until is None or ack.at <= until):
            by_node.setdefault(ack.node, []).append(ack)
    for node, acks in by_node.items():
        lines.append((acks[0].at, f"writer: first ack on {node} (id {acks[0].id})"))
        lines.append((acks[-1].at, f"writer: last ack on {node} (id {acks[-1].id}, {len(acks)})"))
    return "\n".join(f"{at - since:+8.3f}s  {text}" for at, text in sorted(lines))
