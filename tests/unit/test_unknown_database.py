"""A database that does not answer is *unknown* (DESIGN rule 7, issue 9): how the loop reads
it, and how the health checks report it. ``decide``'s side is in test_decide.py."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from typing import Any

import pytest

from hacore.agent.checks import DatabaseAnswers, DatabaseServesRole, LoopFacts
from hacore.agent.observe import DatabaseReader, DbReading, read_database
from hacore.backends.replication import UNKNOWN_STATUS, ReplicationRole, ReplicationStatus
from hacore.errors import ReplicationError
from hacore.testing.procs import wait_for
from hacore_plugins.postgresql import server

PRIMARY = ReplicationStatus(
    running=True, role=ReplicationRole.PRIMARY, writable=True, position=5, timeline=1
)


class FakeDb:
    """Just what ``read_database`` calls; ``hang`` blocks ``status()`` until released."""

    def __init__(self, status: ReplicationStatus | Exception = PRIMARY) -> None:
        self.result = status
        self.token: int | Exception | None = 7
        self.hang = threading.Event()
        self.release = threading.Event()
        self.calls = 0
        #: seconds every ``status()`` takes (a slow database, not a hung one)
        self.delay = 0.0

    def is_initialized(self) -> bool:
        return True

    def status(self) -> ReplicationStatus:
        self.calls += 1
        time.sleep(self.delay)
        if self.hang.is_set():
            self.release.wait(10)
        if isinstance(self.result, Exception):
            raise self.result
        return self.result

    def fencing_token(self) -> int | None:
        if isinstance(self.token, Exception):
            raise self.token
        return self.token


def reader(db: FakeDb, timeout: float = 0.2, late_for: float = 0.0) -> DatabaseReader:
    fake: Any = db
    return DatabaseReader(fake, timeout=timeout, late_for=late_for)


def test_a_status_that_raises_is_unknown_not_stopped() -> None:
    fake: Any = FakeDb(ReplicationError("no answer"))
    reading = read_database(fake)
    assert not reading.status_known and reading.status is UNKNOWN_STATUS
    assert not reading.status.known and reading.status.role == "unknown"
    assert reading.token is None


def test_a_token_read_that_fails_makes_the_reading_unknown() -> None:
    """A "no token" answer from a database that stopped answering reads as a half-done promotion."""
    db = FakeDb()
    db.token = ReplicationError("connection timed out")
    fake: Any = db
    reading = read_database(fake)
    assert not reading.status_known and reading.status is UNKNOWN_STATUS


def test_a_database_without_hacore_s_table_has_no_token_but_is_known() -> None:
    db = FakeDb()
    db.token = RuntimeError("relation hacore.leadership does not exist")
    fake: Any = db
    reading = read_database(fake)
    assert reading.status_known and reading.token is None and reading.status is PRIMARY


def test_the_loop_waits_at_most_its_timeout_for_a_hung_database() -> None:
    db = FakeDb()
    db.hang.set()
    timeout = 2.0
    r = reader(db, timeout=timeout)
    started = time.monotonic()
    first = r.read()
    # not the 10 s the database hangs
    assert time.monotonic() - started < 5.0
    assert not first.status_known and first.initialized
    # still hanging: unknown at once (not after another timeout), and no second question
    started = time.monotonic()
    assert not r.read().status_known
    assert time.monotonic() - started < timeout / 2
    assert db.calls == 1
    # it answers late: the next reading asks again (the late answer, 10 s after the question,
    # is far too old to stand in for it)
    # (readings while the late answer is still on its way are unknown, and ask nothing)
    db.hang.clear()
    db.release.set()
    again = wait_for(lambda: (found := r.read()).status_known and found, 10, interval=0.01)
    assert isinstance(again, DbReading)
    assert again.status is PRIMARY and again.token == 7
    assert db.calls == 2


def test_a_slow_database_is_known_from_its_late_answers_until_the_loop_acts_on_it() -> None:
    """Every answer 1.5 timeouts late, a loop every 0.75 timeout: after the first loop each
    reading is the answer that arrived since the previous loop, so its check passes; a hung
    database still reads unknown, and so does one the loop has just acted on."""
    timeout = 0.2
    db = FakeDb()
    db.delay = 1.5 * timeout
    r = reader(db, timeout=timeout, late_for=5 * timeout)
    assert not r.read().status_known  # nothing answered yet
    known = []
    for _ in range(4):
        time.sleep(0.75 * timeout)
        known.append(r.read().status_known)
    assert known == [True] * 4
    # the loop promoted or fenced meanwhile: what the database said before does not stand
    time.sleep(0.75 * timeout)
    r.forget()
    assert not r.read().status_known
    # without late_for (the default), a late answer never stands in
    strict = reader(db, timeout=timeout)
    assert not strict.read().status_known
    time.sleep(0.75 * timeout)
    assert not strict.read().status_known


def test_a_reading_in_time_is_passed_on() -> None:
    reading = reader(FakeDb()).read()
    assert reading.status_known and reading.status is PRIMARY and reading.token == 7


def test_a_reading_asked_before_the_store_is_read_answers_meanwhile() -> None:
    """The loop asks the database, reads the store, then takes the answer: the two waits
    overlap (serially this would take both delays)."""
    db = FakeDb()
    db.delay = 0.4
    r = reader(db, timeout=2.0)
    started = time.monotonic()
    answer = r.start()
    time.sleep(0.4)  # the store's reading
    reading = answer()
    assert time.monotonic() - started < 0.7
    assert reading.status_known and reading.status is PRIMARY and reading.token == 7
    assert db.calls == 1


def test_a_reading_asked_early_still_waits_at_most_its_timeout_from_the_question() -> None:
    """A hung database costs the loop no more than before: the timeout runs from the
    question, so a store reading that took the whole timeout leaves no wait at all."""
    db = FakeDb()
    db.hang.set()
    timeout = 0.4
    r = reader(db, timeout=timeout)
    answer = r.start()
    time.sleep(timeout)
    started = time.monotonic()
    try:
        reading = answer()
        assert time.monotonic() - started < timeout / 2
        assert not reading.status_known and reading.initialized
    finally:
        db.release.set()


@pytest.mark.parametrize("active", [True, False])
def test_an_unknown_database_fails_its_checks(active: bool) -> None:
    facts = LoopFacts("a", db=UNKNOWN_STATUS, initialized=True, active=active, leader="a")
    answers = DatabaseAnswers(facts, 5.0).run()
    assert not answers.ok and "unknown" in answers.detail
    role = DatabaseServesRole(facts, 5.0).run()
    assert not role.ok and "unknown" in role.detail


def test_a_stopped_process_is_seen_frozen() -> None:
    """What ``server.stop`` looks at before choosing SIGKILL over a shutdown that cannot
    run: a SIGSTOPped process (and its children) is listed."""
    proc = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        assert server.frozen_processes(proc.pid) == []
        proc.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while not server.frozen_processes(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.frozen_processes(proc.pid) == [proc.pid]
    finally:
        proc.kill()
        proc.wait()
