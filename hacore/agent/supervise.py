"""Supervision of the servers the agent runs: restarted with back-off, reported, never left down.

A managed store member (etcd, ZooKeeper) or a file sync engine runs detached, so that an agent
restart never costs the store a member. The price is that nothing notices when it dies: with
one store member dead the store's redundancy is silently gone, with two the active fences.
So every loop the agent looks at each server it is responsible for (a pid check, no network)
and starts a dead one again, on a thread of its own: a start waits for the server to answer
(seconds), and the loop must keep renewing its lease meanwhile (DESIGN rule 8).

Restarts back off (:func:`restart_delay`: at once, then 1 s doubling to 30 s) so a server
that cannot start (a port taken, a broken data directory) is not hammered, and the count
starts again once the server has stayed up for ``RESET_AFTER`` seconds.

What is found is *reported*, not acted on: the ``store_server`` / ``files_server`` checks are
``gating = False`` (shown in the checks, ``nodes list`` and the metrics, never a reason to step
down), because a dead local member of a store that still has its quorum is lost redundancy,
not a failed active. Losing the quorum is the lease deadline's business, as always.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

import attrs

from hacore.backends.consensus import ManagedStore
from hacore.backends.health import CheckResult, HealthCheck

log = logging.getLogger(__name__)

#: the first restart is at once; then ``BASE`` seconds, doubling up to ``CAP``
BASE = 1.0
CAP = 30.0
#: seconds a server must stay up before its restart count starts again
RESET_AFTER = 60.0


def restart_delay(attempt: int, *, base: float = BASE, cap: float = CAP) -> float:
    """Seconds to wait after the end of restart ``attempt`` (1-based) before the next one.

    ``attempt`` 0 (the server was just found down) waits nothing: a crash is usually a
    one-off, and the sooner the member is back the shorter the store runs without it.
    """
    if attempt <= 0:
        return 0.0
    return float(min(cap, base * 2 ** (attempt - 1)))


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th ... 11th, 12th, 13th, 21st."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


class RestartLog:
    """When a process was restarted: the total, and how many within a recent window.

    Shared by every supervised process (the fence keeper, the servers below), so "keeps
    exiting" means the same thing everywhere.
    """

    def __init__(self, window: float = 60.0) -> None:
        self.window = window
        self.total = 0
        self._times: list[float] = []

    def record(self, now: float) -> None:
        self.total += 1
        self._times = [t for t in self._times if now - t < self.window] + [now]

    def recent(self, now: float) -> int:
        return sum(1 for t in self._times if now - t < self.window)


class Server(Protocol):
    """A server the agent runs; ``kind`` names the check (``store`` → ``store_server``),
    ``name`` the program (the metrics' ``server`` label)."""

    kind: str
    name: str

    def running(self) -> bool | None:
        """True/False; None when there is nothing to supervise (not set up here)."""

    def start(self) -> None:
        """Start it again; may take seconds (it waits until the server answers)."""


class StoreServer:
    """This node's managed store member, supervised once its data directory exists (before
    that, ``cluster start``/``join`` has not made it a member yet)."""

    kind = "store"

    def __init__(self, store: ManagedStore, name: str) -> None:
        self.store = store
        self.name = name

    def running(self) -> bool | None:
        if not self.store.data_dir.is_dir():
            return None
        return self.store.is_running()

    def start(self) -> None:
        self.store.start()


def supervised_servers(store: ManagedStore | None, store_name: str) -> list[Server]:
    """The servers an agent supervises: its managed store member, when hacore runs the store."""
    return [StoreServer(store, store_name)] if store is not None else []


@attrs.frozen
class ServerStatus:
    """One supervised server as last seen, for the checks, the member record and metrics."""

    kind: str
    name: str
    #: None: not supervised (not set up on this node)
    up: bool | None
    #: restarts since the agent started
    restarts: int = 0
    #: restart attempts in the current outage (0 while up and settled)
    attempt: int = 0
    restarting: bool = False
    detail: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "up": self.up,
            "restarts": self.restarts,
            "attempt": self.attempt,
            "restarting": self.restarting,
            "detail": self.detail,
        }


class _Watched:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.up: bool | None = None
        self.up_since: float | None = None
        self.attempt = 0
        self.next_at = 0.0
        self.thread: threading.Thread | None = None
        self.error = ""
        self.restarts = RestartLog()


class Supervisor:
    """Looks at each server every loop (:meth:`tick`), restarts dead ones off the loop."""

    def __init__(
        self,
        servers: Sequence[Server],
        log: logging.LoggerAdapter,  # type: ignore[type-arg]
        *,
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self._on_change = on_change
        self._clock = clock
        self._lock = threading.Lock()
        self._watched = [_Watched(s) for s in servers]

    def tick(self, *, enabled: bool = True) -> None:
        """One look at every server; ``enabled`` False (a node removed from the cluster,
        whose member was stopped or removed on purpose) only reports."""
        now = self._clock()
        for w in self._watched:
            with self._lock:
                if w.thread is not None:
                    continue  # a restart is under way; its end is looked at next tick
            try:
                up = w.server.running()
            except Exception as err:  # a plugin's bug: unknown, not down
                self.log.debug("cannot tell whether %s runs: %s", w.server.name, err)
                continue
            with self._lock:
                self._seen(w, up, now, enabled)
                if up is False and enabled and now >= w.next_at:
                    self._restart(w)

    def _seen(self, w: _Watched, up: bool | None, now: float, enabled: bool) -> None:
        if up and not w.up:
            w.up_since = now
        if up is False and w.up:
            self.log.warning(
                "this node's %s server (%s) is not running: %s", w.server.kind, w.server.name,
                "restarting it" if enabled else "left down (this node was removed)",
            )  # fmt: skip
        if up and w.up_since is not None and w.attempt and now - w.up_since >= RESET_AFTER:
            w.attempt, w.error = 0, ""
        w.up = up

    def _restart(self, w: _Watched) -> None:
        w.attempt += 1
        w.thread = threading.Thread(
            target=self._run_start, args=(w,), name=f"hacore-restart-{w.server.name}", daemon=True
        )
        w.thread.start()

    def _run_start(self, w: _Watched) -> None:
        began = self._clock()
        what = f"{w.server.name} server ({ordinal(w.attempt)} try)"
        self.log.info("starting the %s", what)
        error = ""
        try:
            w.server.start()
        except Exception as err:
            error = str(err).splitlines()[0] if str(err) else type(err).__name__
        now = self._clock()
        with self._lock:
            w.thread = None
            w.restarts.record(now)
            w.next_at = now + restart_delay(w.attempt)
            if error:
                w.error = error
                self.log.error(
                    "starting the %s failed after %.1fs: %s; next try in %gs",
                    what, now - began, error, restart_delay(w.attempt),
                )  # fmt: skip
            else:
                w.error = ""
                w.up, w.up_since = True, now
                self.log.warning("restarted the %s in %.1fs", what, now - began)
        self._on_change()

    def status(self) -> tuple[ServerStatus, ...]:
        with self._lock:
            return tuple(self._status(w) for w in self._watched)

    def _status(self, w: _Watched) -> ServerStatus:
        name, restarting = w.server.name, w.thread is not None
        if w.up is None:
            detail = f"{name} server not set up on this node"
        elif w.up and not restarting:
            detail = f"{name} server runs"
            if w.restarts.total:
                detail += f" (restarted {w.restarts.total} time(s) since the agent started)"
        elif restarting:
            detail = f"{name} server down, restarting ({ordinal(w.attempt)} try)"
        else:
            wait = max(0.0, w.next_at - self._clock())
            detail = f"{name} server down" + (
                f", next restart in {wait:.0f}s ({ordinal(w.attempt + 1)} try)"
                if w.attempt
                else ", restarting"
            )
        if w.error and not (w.up and not restarting):
            detail += f"; last try failed: {w.error}"
        return ServerStatus(
            kind=w.server.kind,
            name=name,
            up=None if w.up is None else (w.up and not restarting),
            restarts=w.restarts.total,
            attempt=w.attempt,
            restarting=restarting,
            detail=detail,
        )

    def checks(self, ttl: float) -> list[HealthCheck]:
        return [ServerRunning(self, w.server.kind, w.server.name, ttl) for w in self._watched]

    def join(self, timeout: float) -> None:
        """Wait for restarts under way (tests, clean stop)."""
        for w in self._watched:
            thread = w.thread
            if thread is not None:
                thread.join(timeout)


class ServerRunning(HealthCheck):
    """``<kind>_server``: the server runs. Reported only (``gating = False``): a dead local
    store member is lost redundancy while the store keeps its quorum, not a reason to fail
    over; the restart is the remedy, and the check makes it visible."""

    gating = False

    def __init__(self, supervisor: Supervisor, kind: str, server: str, ttl: float) -> None:
        self.supervisor = supervisor
        self.name = f"{kind}_server"
        self.server = server
        self.ttl = ttl

    def run(self) -> CheckResult:
        found = next((s for s in self.supervisor.status() if s.name == self.server), None)
        if found is None or found.up is None:
            return CheckResult(True, found.detail if found else "not supervised")
        return CheckResult(found.up, found.detail)
