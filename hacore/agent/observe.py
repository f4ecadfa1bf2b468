"""Building the loop's :class:`~hacore.agent.vocabulary.Observation`: renew first, then read.

Two rules from docs/agent-states.md shape this module:

- the lease is renewed *before* the view is read, and ``last_renewal`` is when the renew was
  *sent* (the store may have refreshed the lease any time after that);
- while the node may write (it holds a lease and has not fenced), no store call may run past
  the self-fencing deadline: a call is not even started unless ``retry_timeout`` (the longest
  any call takes) still fits before it. The decision then fences on time.

The first store call that fails ends the reading: the store is down, and every further call
would only spend another ``retry_timeout``.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import attrs

from hacore.agent import keys
from hacore.agent.vocabulary import (
    Action,
    ActiveStatus,
    HealthReport,
    LeaseStatus,
    NodeState,
    Observation,
    Pause,
    SwitchoverRequest,
)
from hacore.backends.consensus import ConsensusBackend
from hacore.backends.records import ClusterView, KeyValue, Lease
from hacore.backends.replication import UNKNOWN_STATUS, ReplicationBackend, ReplicationStatus
from hacore.errors import HacoreError, StoreUnavailableError

log = logging.getLogger(__name__)

Clock = Callable[[], float]
_T = TypeVar("_T")


class _Skipped(Exception):
    """A store call that would run past the self-fencing deadline."""


@attrs.frozen
class StoreReading:
    """What the store said this loop; ``view`` is None when it did not (fully) answer."""

    lease_status: LeaseStatus
    lease: Lease | None
    last_renewal: float | None
    view: ClusterView | None = None
    store_error: str = ""
    active_status: ActiveStatus | None = None
    #: The status key's version for compare-and-set (0: the key does not exist).
    status_version: int = 0
    switchover: keys.StoredSwitchover | None = None
    switchover_version: int = 0
    removed: frozenset[str] = frozenset()
    #: The pause key (maintenance mode); only meaningful with a view.
    pause: Pause | None = None
    #: When the store last answered a call this loop (None: it did not).
    answered_at: float | None = None
    #: The cluster-wide settings (hacore/config/cluster_settings.py); None: not stored yet
    #: (or unreadable: then ``settings_version`` is not 0, and nobody seeds it again).
    settings: keys.StoredSettings | None = None
    settings_version: int = 0


def read_store(
    consensus: ConsensusBackend,
    *,
    lease: Lease | None,
    last_renewal: float | None,
    gate: float | None,
    retry_timeout: float,
    clock: Clock = time.monotonic,
) -> StoreReading:
    """Renew (or keep the session alive), then read the view and the agent's keys.

    ``gate`` is the self-fencing deadline while the node may write, else None.
    """

    def call(fn: Callable[[], object]) -> object:
        if gate is not None and clock() + retry_timeout > gate:
            raise _Skipped
        return fn()

    status = LeaseStatus.NONE if lease is None else LeaseStatus.UNCERTAIN
    answered: float | None = None
    try:
        if lease is not None:
            sent = clock()
            held = call(lambda: consensus.renew(lease))
            answered = clock()
            if held:
                status, last_renewal = LeaseStatus.HELD, sent
            else:
                status = LeaseStatus.LOST
        else:
            call(consensus.keepalive)
            answered = clock()
        view = call(consensus.view)
        status_kv = call(lambda: consensus.get(keys.STATUS_KEY))
        switch_kv = call(lambda: consensus.get(keys.SWITCHOVER_KEY))
        removed_kvs = call(lambda: consensus.get_prefix(keys.REMOVED_PREFIX))
        pause_kv = call(lambda: consensus.get(keys.PAUSE_KEY))
        settings_kv = call(lambda: consensus.get(keys.SETTINGS_KEY))
        answered = clock()
    except _Skipped:
        return StoreReading(
            status,
            lease,
            last_renewal,
            store_error="not asked: the self-fencing deadline is closer than retry_timeout",
            answered_at=answered,
        )
    except (StoreUnavailableError, HacoreError) as err:
        return StoreReading(status, lease, last_renewal, store_error=str(err), answered_at=answered)
    assert isinstance(view, ClusterView)
    active_status, status_version = _decoded(status_kv, keys.decode_status)
    switchover, switch_version = _decoded(switch_kv, keys.StoredSwitchover.decode)
    pause = _pause(pause_kv)
    settings, settings_version = _decoded(settings_kv, keys.StoredSettings.decode)
    assert isinstance(removed_kvs, tuple)
    return StoreReading(
        status,
        lease,
        last_renewal,
        view=view,
        active_status=active_status,
        status_version=status_version,
        switchover=switchover,
        switchover_version=switch_version,
        removed=keys.removed_names(tuple(kv.key for kv in removed_kvs)),
        pause=pause,
        answered_at=answered,
        settings=settings,
        settings_version=settings_version,
    )


def _pause(kv: object) -> Pause | None:
    """The pause key; one that cannot be read still pauses (doing nothing is the side an
    unreadable operator's request errs on), and says so."""
    if kv is None:
        return None
    assert isinstance(kv, KeyValue)
    try:
        return keys.decode_pause(kv.value)
    except HacoreError as err:
        log.warning("the pause key is unreadable, the cluster counts as paused: %s", err)
        return Pause(by="?", reason=f"unreadable pause key: {err}")


def _decoded(kv: object, decode: Callable[[bytes], _T]) -> tuple[_T | None, int]:
    if kv is None:
        return None, 0
    assert isinstance(kv, KeyValue)
    try:
        return decode(kv.value), kv.version
    except HacoreError as err:
        log.warning("ignoring the %s key: %s", kv.key, err)
        return None, kv.version


class SwitchoverClock:
    """When this node first saw each switchover request (by the key's version).

    Requests carry another node's wall clock, which cannot be compared with ours; what
    ``decide`` times is how long *this* agent has known about the request.
    """

    def __init__(self) -> None:
        self._version = 0
        self._seen_at = 0.0

    def request(self, reading: StoreReading, now: float) -> SwitchoverRequest | None:
        stored = reading.switchover
        if stored is None:
            if reading.view is not None:
                self._version = 0
            return None
        if reading.switchover_version != self._version:
            self._version, self._seen_at = reading.switchover_version, now
        return SwitchoverRequest(
            stored.from_node, stored.to_node, self._seen_at, manual=stored.failover
        )


@attrs.frozen
class DbReading:
    status: ReplicationStatus
    initialized: bool
    token: int | None
    #: False when the database did not answer (in time): ``status`` is then
    #: :data:`~hacore.backends.replication.UNKNOWN_STATUS`, never a guess (DESIGN rule 7)
    status_known: bool = True


def read_database(replication: ReplicationBackend) -> DbReading:
    """The local database's status, whether it holds data, and its fencing token.

    A backend that raises gives an *unknown* status (DESIGN rule 7), never "stopped" nor
    "not writable": ``decide`` then neither promotes, starts, follows nor campaigns on it,
    and the active's ``database_queries`` check fails. A token read that fails on a
    database that answered makes the whole reading unknown too: "no token" would be read as
    a half-done promotion.
    """
    try:
        initialized = replication.is_initialized()
    except HacoreError as err:
        log.warning("cannot tell whether this node holds a database: %s", err)
        initialized = True
    try:
        status = replication.status()
    except HacoreError as err:
        log.warning("cannot read the local database's status: %s", err)
        return DbReading(UNKNOWN_STATUS, initialized, None, status_known=False)
    token = None
    if status.running and status.position is not None:
        try:
            token = replication.fencing_token()
        except HacoreError as err:
            log.warning("cannot read the local database's fencing token: %s", err)
            return DbReading(UNKNOWN_STATUS, initialized, None, status_known=False)
        except Exception as err:  # e.g. a database hacore did not set up
            log.debug("no fencing token in the local database: %s", err)
    return DbReading(status, initialized, token, status_known=status.known)


class DatabaseReader:
    """:func:`read_database` for the loop, waiting at most ``timeout`` (``retry_timeout``).

    A frozen database accepts connections into the kernel's backlog and never answers, so
    the reading runs on a daemon thread. One that does not answer in time is *unknown*;
    while it still hangs, the next loops read unknown at once instead of piling up threads.

    A database that is only slow (a busy disk: every answer a little over ``timeout``) is not
    hung, and must not fail its check every loop: a late answer that arrived at most
    ``late_for`` seconds ago stands in for a new reading that does not answer in time. Not
    after the loop acted on the database (:meth:`forget`): it would describe the database as
    it was before.
    """

    def __init__(
        self, replication: ReplicationBackend, *, timeout: float, late_for: float = 0.0
    ) -> None:
        self.replication = replication
        self.timeout = timeout
        self.late_for = late_for
        self._pending: cf.Future[tuple[DbReading, float]] | None = None

    def forget(self) -> None:
        """The loop changed the database (promoted, fenced, started...): no earlier
        reading may stand for it."""
        self._pending = None

    def read(self, clock: Clock = time.monotonic) -> DbReading:
        return self.start(clock)()

    def start(self, clock: Clock = time.monotonic) -> Callable[[], DbReading]:
        """Ask the database now, take its answer later: the loop reads the store meanwhile
        instead of after it (the two waits overlap, on the switchover target's path twice).
        The answer is awaited at most ``timeout`` from the question, so a hung database costs
        the loop no more than a reading asked after the store's. The reading may be up to one
        store reading older than it was: a standby's position can then only be lower (it
        waits a loop, never promotes early), and what the loop itself did to the database
        came before (the previous iteration)."""
        pending = self._pending
        if pending is not None and not pending.done():
            unknown = self._unknown("the previous reading still waits for an answer", quiet=True)
            return lambda: unknown
        late = _answer(pending) if pending is not None else None
        if late is not None and clock() - late[1] > self.late_for:
            late = None
        future: cf.Future[tuple[DbReading, float]] = cf.Future()

        def ask() -> None:
            try:
                future.set_result((read_database(self.replication), clock()))
            except BaseException as err:
                future.set_exception(err)

        self._pending = future
        asked = clock()
        threading.Thread(target=ask, name="hacore-db-reading", daemon=True).start()

        def answer() -> DbReading:
            try:
                reading, _ = future.result(timeout=max(0.0, asked + self.timeout - clock()))
            except cf.TimeoutError:
                if late is not None:
                    log.debug(
                        "the local database answers late: its answer of %.1fs ago stands",
                        clock() - late[1],
                    )
                    return late[0]
                return self._unknown(f"no answer within {self.timeout:g}s")
            except Exception as err:
                return self._unknown(f"{type(err).__name__}: {err}")
            if self._pending is future:
                self._pending = None
            return reading

        return answer

    def _unknown(self, why: str, *, quiet: bool = False) -> DbReading:
        (log.debug if quiet else log.warning)("the local database's state is unknown: %s", why)
        try:
            initialized = self.replication.is_initialized()
        except Exception:
            initialized = True
        return DbReading(UNKNOWN_STATUS, initialized, None, status_known=False)


def _answer(done: cf.Future[tuple[DbReading, float]]) -> tuple[DbReading, float] | None:
    """A finished reading's answer and when it came; None when it raised."""
    if done.exception() is not None:
        return None
    return done.result()


def observation(
    name: str,
    now: float,
    reading: StoreReading,
    db: DbReading,
    *,
    health: HealthReport,
    switchover: SwitchoverRequest | None,
    veto_until: float | None,
    last_renewal: float | None,
    previous: NodeState,
    job: Action | None,
    failsafe_expiry: float | None = None,
    promised_until: float | None = None,
    pause: Pause | None = None,
) -> Observation:
    """Everything ``decide`` gets; a lease that does not stand is not passed on."""
    holds = reading.lease_status in (LeaseStatus.HELD, LeaseStatus.UNCERTAIN)
    return Observation(
        now=now,
        node_name=name,
        view=reading.view,
        db=db.status,
        initialized=db.initialized,
        store_error=reading.store_error,
        lease_status=reading.lease_status,
        lease=reading.lease if holds else None,
        last_renewal=last_renewal if holds else None,
        health=health,
        removed=name in reading.removed,
        switchover=switchover,
        db_token=db.token,
        veto_until=veto_until,
        previous=previous,
        active_status=reading.active_status,
        needs_rewind=db.status.needs_rewind,
        job=job,
        failsafe_expiry=failsafe_expiry,
        promised_until=promised_until,
        pause=pause,
    )
