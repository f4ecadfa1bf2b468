"""The built-in health checks, and the runner that turns every check into a HealthReport.

Built-in checks look at what the loop already read this iteration (:class:`LoopFacts`), so
they add no store round trip and at most one TCP connect. Plugin checks (the
``hacore_health_checks`` hook) run next to them. The runner runs all checks at once in worker
threads and waits at most ``timeout`` for them: a check that hangs is reported as failing
instead of starving the lease renewal.

A check's result is valid for ``check.ttl * check_ttl_multiplier`` seconds; one that has not
passed within that time is *expired*. *Failing* means its last run failed. ``decide`` makes a
standby with either ineligible, and makes the active step down on an expired check (or on a
failing one with ``check_fail_fast``).

Active-only checks start running when the node becomes active, while the services they look at
are still starting: for ``active_grace`` seconds after that, a failing active-only check is
shown (with the time left) but counts neither as failing nor as expired, or
``check_fail_fast`` would undo every promotion on its first loop.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import socket
import threading
from collections.abc import Sequence

import attrs

from hacore.agent.hooks import HookCaller
from hacore.agent.lease import STALL_TTLS
from hacore.agent.vocabulary import HealthReport
from hacore.backends.filesync import FilesyncBackend, SyncState
from hacore.backends.health import CheckResult, HealthCheck
from hacore.backends.records import ClusterView
from hacore.backends.replication import ReplicationRole, ReplicationStatus
from hacore.backends.services import ServiceBackend
from hacore.errors import ConfigError, HacoreError

log = logging.getLogger(__name__)

_STOPPED = ReplicationStatus(running=False, role=ReplicationRole.STOPPED)


@attrs.define
class LoopFacts:
    """This loop's readings, filled in by the loop before the checks run."""

    node_name: str
    db: ReplicationStatus = _STOPPED
    initialized: bool = False
    #: The leader key's holder, None when there is none or the store did not answer.
    leader: str | None = None
    #: The node was active when this loop began (active-only checks run only then).
    active: bool = False
    #: When the store last answered (monotonic), None if never.
    store_ok_at: float | None = None
    loop_at: float = 0.0
    previous_loop_at: float | None = None

    def update(
        self,
        loop_at: float,
        db: ReplicationStatus,
        initialized: bool,
        view: ClusterView | None,
        store_ok_at: float | None,
    ) -> None:
        self.previous_loop_at, self.loop_at = self.loop_at or None, loop_at
        self.db, self.initialized, self.store_ok_at = db, initialized, store_ok_at
        self.leader = view.leader.name if view is not None and view.leader else None


class _FactCheck(HealthCheck):
    def __init__(self, facts: LoopFacts, ttl: float) -> None:
        self.facts = facts
        self.ttl = ttl


class DatabaseListening(_FactCheck):
    """The database accepts TCP connections where the other nodes reach it."""

    name = "database_listening"

    def __init__(self, facts: LoopFacts, ttl: float, address: tuple[str, int]) -> None:
        super().__init__(facts, ttl)
        self.address = address

    def run(self) -> CheckResult:
        if not self.facts.initialized:
            return CheckResult(False, "no database on this node yet")
        if self.facts.db.known and not self.facts.db.running:
            return CheckResult(False, "the database is not running")
        host, port = self.address
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return CheckResult(True, f"listening on {host}:{port}")
        except OSError as err:
            return CheckResult(False, f"nothing accepts connections on {host}:{port}: {err}")


class DatabaseAnswers(_FactCheck):
    """The database answered this loop's status query (the ``select 1`` of this agent)."""

    name = "database_queries"

    def run(self) -> CheckResult:
        db = self.facts.db
        if not db.known:
            # A hung database is a failed check (DESIGN rule 7): this is what makes a hung
            # active step down, after the check's TTL or at once with check_fail_fast.
            return CheckResult(False, "the database did not answer this loop: state unknown")
        if not db.running:
            return CheckResult(False, "the database is not running")
        if db.position is None:
            return CheckResult(False, "the database did not answer the status query")
        return CheckResult(True, f"{db.role} at position {db.position}")


class DatabaseServesRole(_FactCheck):
    """The active's database is writable; a standby streams from the current leader."""

    name = "replication"

    def run(self) -> CheckResult:
        facts, db = self.facts, self.facts.db
        if not db.known:
            return CheckResult(False, "the database did not answer: its role is unknown")
        if facts.active:
            if db.writable:
                return CheckResult(True, "the active's database is writable")
            return CheckResult(False, f"the active's database is not writable ({db.role})")
        leader = facts.leader
        if leader is None or leader == facts.node_name:
            return CheckResult(True, "no other leader to follow")
        if db.following == leader:
            return CheckResult(True, f"streaming from {leader}")
        return CheckResult(
            False, f"not streaming from the leader {leader} (following {db.following or 'nobody'})"
        )


class ActiveServices(_FactCheck):
    """Every active-only service runs (checked on the active only)."""

    name = "active_services"
    active_only = True

    def __init__(
        self, facts: LoopFacts, ttl: float, services: ServiceBackend, names: Sequence[str]
    ) -> None:
        super().__init__(facts, ttl)
        self.services = services
        self.names = tuple(names)

    def run(self) -> CheckResult:
        stopped = []
        for name in self.names:
            status = self.services.status(name)
            if not status.running:
                stopped.append(f"{name} ({status.detail})" if status.detail else name)
        if stopped:
            return CheckResult(False, f"not running: {', '.join(stopped)}")
        return CheckResult(True, f"running: {', '.join(self.names)}")


class FilesInSync(_FactCheck):
    """A standby holds the active's files (the file sync's own view of it).

    Failing until the standby's first complete copy since the agent started: a node that
    joined is not a healthy standby, nor a candidate, before it has the manager's files.
    Afterwards a lag (a file just written on the active is on its way) is only reported:
    failing it would make every standby ineligible during each burst of writes.
    """

    name = "files"
    #: seconds to wait for the file sync's answer; a slower one (a frozen Syncthing) is
    #: "unknown", which must not fail a standby that has its copy: the runner would
    #: report the whole check as hanging
    answer_within = 0.5

    def __init__(self, facts: LoopFacts, ttl: float, filesync: FilesyncBackend) -> None:
        super().__init__(facts, ttl)
        self.filesync = filesync
        #: the last state read, published in the member record for ``nodes list``
        self.last: SyncState | None = None
        self._copied = False
        self._reading: cf.Future[SyncState] | None = None

    def _ask(self) -> cf.Future[SyncState]:
        # a daemon thread per question: nothing to shut down when the agent goes away
        future: cf.Future[SyncState] = cf.Future()

        def ask() -> None:
            try:
                future.set_result(self.filesync.state())
            except BaseException as err:
                future.set_exception(err)

        threading.Thread(target=ask, name="hacore-files-check", daemon=True).start()
        return future

    def _read(self) -> SyncState | None:
        """The file sync's state, or None when it does not answer in time (the question
        stays asked: the next run takes its answer instead of asking again)."""
        if self._reading is None:
            self._reading = self._ask()
        try:
            state = self._reading.result(timeout=self.answer_within)
        except cf.TimeoutError:
            return None
        finally:
            if self._reading.done():
                self._reading = None
        return state

    def run(self) -> CheckResult:
        facts = self.facts
        if not facts.active and (facts.leader is None or facts.leader == facts.node_name):
            return CheckResult(True, "no active node to copy files from")
        try:
            state = self._read()
        except HacoreError as err:
            return CheckResult(self._copied or facts.active, f"file sync state unknown: {err}")
        if state is None:
            return CheckResult(
                self._copied or facts.active,
                f"file sync state unknown: no answer within {self.answer_within:g}s",
            )
        self.last = state
        if facts.active:
            return CheckResult(True, f"the source of the files; {state.detail}")
        if state.in_sync:
            self._copied = True
            return CheckResult(True, state.detail or "in sync")
        progress = f"{state.completion:.0f}% here, {state.need_bytes} bytes to fetch"
        if not self._copied:
            return CheckResult(
                False, f"first copy of the files not complete ({progress}): {state.detail}"
            )
        return CheckResult(True, f"catching up ({progress}): {state.detail}")


class StoreReachable(_FactCheck):
    """The consensus store answered within one ``ttl``.

    A shorter outage is not a failure: the self-fencing deadline already handles it, and a
    failing check would make a ``check_fail_fast`` active step down on every store hiccup.
    """

    name = "store"

    def run(self) -> CheckResult:
        seen = self.facts.store_ok_at
        if seen is None:
            return CheckResult(False, "the store has not answered yet")
        age = self.facts.loop_at - seen
        if age > self.ttl:
            return CheckResult(False, f"the store has not answered for {age:.1f}s")
        return CheckResult(True, f"answered {age:.1f}s ago")


class LoopHeartbeat(_FactCheck):
    """The previous loop iteration began less than ``STALL_TTLS * ttl`` ago: the loop is not
    stuck. Not ``ttl``: the renewal thread keeps the lease through a long iteration (a slow
    promotion), and fails it only once an iteration has run that long (renewal.py)."""

    name = "loop"

    def run(self) -> CheckResult:
        previous = self.facts.previous_loop_at
        if previous is None:
            return CheckResult(True, "first loop")
        gap = self.facts.loop_at - previous
        if gap > STALL_TTLS * self.ttl:
            return CheckResult(False, f"{gap:.1f}s between two loops")
        return CheckResult(True, f"{gap:.1f}s since the previous loop")


def builtin_checks(
    facts: LoopFacts,
    *,
    ttl: float,
    address: tuple[str, int],
    services: ServiceBackend | None,
    active_only_services: Sequence[str],
    filesync: FilesyncBackend | None = None,
) -> list[HealthCheck]:
    checks: list[HealthCheck] = [
        DatabaseListening(facts, ttl, address),
        DatabaseAnswers(facts, ttl),
        DatabaseServesRole(facts, ttl),
        StoreReachable(facts, ttl),
        LoopHeartbeat(facts, ttl),
    ]
    if services is not None and active_only_services:
        checks.append(ActiveServices(facts, ttl, services, active_only_services))
    if filesync is not None:
        checks.append(FilesInSync(facts, ttl, filesync))
    return checks


@attrs.define
class _Track:
    check: HealthCheck
    #: When the check became eligible to run (agent start, or promotion for active-only ones).
    since: float | None = None
    passed_at: float | None = None
    last: CheckResult | None = None
    running: cf.Future[CheckResult] | None = None


class CheckRunner:
    """Runs the checks each loop; thread-safe only for one caller (the loop)."""

    def __init__(
        self,
        checks: Sequence[HealthCheck],
        *,
        multiplier: float,
        timeout: float,
        active_grace: float = 0.0,
    ) -> None:
        names = [c.name for c in checks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates or not all(names):
            raise ConfigError(
                f"health check names must be unique and non-empty (duplicates: "
                f"{', '.join(duplicates) or 'none'})"
            )
        self._tracks = {c.name: _Track(c) for c in checks}
        self.multiplier = multiplier
        self.timeout = timeout
        self.active_grace = active_grace
        #: each check's result in the last run (what the member record and the snapshot show)
        self.results: dict[str, CheckResult] = {}
        self._pool: cf.ThreadPoolExecutor | None = None

    @property
    def names(self) -> list[str]:
        return list(self._tracks)

    def run(self, *, active: bool, now: float) -> tuple[HealthReport, dict[str, CheckResult]]:
        """Run every check that applies; the report and each check's result."""
        if self._pool is None:
            workers = max(1, min(8, len(self._tracks)))
            self._pool = cf.ThreadPoolExecutor(workers, thread_name_prefix="hacore-check")
        due: dict[str, cf.Future[CheckResult]] = {}
        for name, track in self._tracks.items():
            if track.check.active_only and not active:
                track.since = track.passed_at = track.last = None
                continue
            if track.since is None:
                track.since = now
            if track.running is None:
                track.running = self._pool.submit(_run_one, track.check)
            due[name] = track.running
        cf.wait(due.values(), timeout=self.timeout)
        results: dict[str, CheckResult] = {}
        failing: list[str] = []
        expired: list[str] = []
        for name, future in due.items():
            track = self._tracks[name]
            if future.done():
                track.running = None
                result = future.result()
                if result.ok:
                    track.passed_at = now
            else:
                result = CheckResult(False, f"no answer within {self.timeout:g}s (still running)")
            track.last = result
            results[name] = result
            grace_left = self._grace_left(track, now)
            if not result.ok and grace_left > 0:
                results[name] = CheckResult(
                    False, f"{result.detail} (not counted for {grace_left:.1f}s after promotion)"
                )
                continue
            if not track.check.gating:
                continue  # reported only: never a reason to step down or not to campaign
            if not result.ok:
                failing.append(name)
            valid_for = track.check.ttl * self.multiplier
            if now - (track.passed_at if track.passed_at is not None else track.since or now) > (
                valid_for
            ):
                expired.append(name)
        self.results = results
        return HealthReport(failing=failing, expired=expired), results

    def restart_windows(self, now: float) -> None:
        """After a promotion: every check's validity window starts again at ``now``.

        The promotion's own iteration (campaign, promote, services: seconds on a busy machine)
        ran no check, so a window counted from the last pass before it could be spent
        already, and the first reading after it that is late stepped the new active down at
        once. A check that then fails for a whole window still counts.
        """
        for track in self._tracks.values():
            if track.since is not None:
                track.since, track.passed_at = now, None

    def _grace_left(self, track: _Track, now: float) -> float:
        """Seconds an active-only check's failures are still forgiven after the promotion."""
        if not track.check.active_only or track.since is None:
            return 0.0
        return track.since + self.active_grace - now

    def close(self) -> None:
        """Stop the worker threads (a check still running is left to finish)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        for track in self._tracks.values():
            track.running = None


def _run_one(check: HealthCheck) -> CheckResult:
    try:
        result = check.run()
    except Exception as err:  # a plugin's bug must not take the agent down
        log.debug("health check %s raised", check.name, exc_info=True)
        return CheckResult(False, f"{type(err).__name__}: {err}")
    if not isinstance(result, CheckResult):
        return CheckResult(False, f"returned {type(result).__name__}, not a CheckResult")
    return result


def plugin_checks(hooks: HookCaller) -> list[HealthCheck]:
    """The checks every plugin adds (``hacore_health_checks``)."""
    found: list[HealthCheck] = []
    for plugin, checks in hooks.call("hacore_health_checks"):
        if not isinstance(checks, list) or not all(isinstance(c, HealthCheck) for c in checks):
            hooks.log.error("%s's hacore_health_checks did not return a list of checks", plugin)
            continue
        found.extend(checks)
    return found
