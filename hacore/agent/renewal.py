"""Renewing the held lease on a thread of its own, so a busy loop does not starve it.

The loop renews once per iteration (hacore/agent/observe.py), so any slow step of an
iteration (a promotion waiting for the database, a slow store call, a check, a pause of the
machine) delays the renewal, and at ``timing.profile: fast`` a promotion alone can outlast the
lease: the new active fenced itself right after promoting. This thread renews whenever the
last confirmed renewal is older than :func:`renewal_interval`; while the loop is on time it
never has to.

What it may not do (DESIGN §3, rule 1; docs/architecture.md, "Lease renewal"):

- move the deadline beyond what the store granted: a renewal counts from when it was *sent*,
  only once the store confirmed that this node still holds the leader key, and only for the
  lease the loop still holds (:meth:`LeaseState.renewed_in_time`);
- run past the self-fencing deadline: no renewal is sent unless ``retry_timeout`` still fits
  before it, and one answered after it is thrown away (the loop may be fencing);
- decide anything: a lost lease only wakes the loop, which fences and drops it;
- keep a hung loop in office: it stops renewing once the loop's current iteration has run
  :data:`~hacore.agent.lease.STALL_TTLS` times ``ttl`` (the ``loop`` check fails then too),
  so a loop stuck for good still loses its lease, and the fence keeper fences its database.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from hacore.agent.counters import Event, EventCounters
from hacore.agent.deadline import Deadline
from hacore.agent.hooks import NodeLog
from hacore.agent.lease import STALL_TTLS, LeaseState
from hacore.agent.vocabulary import DecisionConfig
from hacore.backends.consensus import ConsensusBackend
from hacore.backends.records import Lease
from hacore.errors import HacoreError

Clock = Callable[[], float]

#: After a renewal that failed, the next attempt waits this long (if it still fits).
RETRY_PAUSE = 0.1


def renewal_interval(cfg: DecisionConfig) -> float:
    """Seconds after the last confirmed renewal at which the thread renews.

    Half the time from a renewal to the last moment a next one may be sent (``ttl -
    safety_margin - retry_timeout``): a second attempt still fits when the first fails. It is
    longer than ``loop_wait`` at the shipped profiles (1.75 s at the default's loop of 1 s,
    0.7 s at fast's 0.5 s), so a loop that is on time renews first and the thread sends
    nothing.
    """
    return max(0.05, (cfg.ttl - cfg.safety_margin - cfg.retry_timeout) / 2)


def next_renewal(
    *,
    now: float,
    last_renewal: float | None,
    every: float,
    gate: float | None,
    retry_timeout: float,
    busy_since: float | None,
    stall: float,
) -> float | None:
    """When the thread should send the next renewal (now or later), or None when it must
    not send one: no lease, a renewal would no longer end before the self-fencing deadline
    ``gate``, or the loop's current iteration (begun at ``busy_since``) has run ``stall``."""
    if last_renewal is None:
        return None
    if busy_since is not None and now - busy_since >= stall:
        return None
    due = last_renewal + every
    if gate is not None:
        last_call = gate - retry_timeout
        if now > last_call:
            return None
        due = min(due, last_call)
    return due


class Renewal:
    """The renewal thread of one agent; :attr:`busy_since` is set by the loop."""

    def __init__(
        self,
        consensus: ConsensusBackend,
        lease: LeaseState,
        deadline: Deadline,
        cfg: DecisionConfig,
        *,
        log: NodeLog,
        wake: Callable[[], None],
        counters: EventCounters,
        clock: Clock = time.monotonic,
    ) -> None:
        self.consensus = consensus
        self.lease = lease
        self.deadline = deadline
        self.cfg = cfg
        self.log = log
        self.wake = wake
        self.counters = counters
        self.clock = clock
        self.every = renewal_interval(cfg)
        #: When the loop's current iteration began; None while the loop waits between them.
        self.busy_since: float | None = None
        #: Renewals this thread sent that the store confirmed (for the logs and the tests).
        self.renewals = 0
        self._lost: Lease | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, name: str) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"hacore-renewal-{name}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        pause = self.every
        while not self._stop.wait(pause):
            try:
                pause = self.step()
            except Exception:
                # a bug here must not end the thread for good: the loop still renews
                self.log.exception("the renewal thread failed; it goes on")
                pause = self.every

    def step(self) -> float:
        """Renew if it is time; the seconds until the thread should look again."""
        with self.lease.lock:
            lease, last = self.lease.lease, self.lease.last_renewal
        now = self.clock()
        if lease is None or lease is self._lost:
            return self.every
        due = next_renewal(
            now=now,
            last_renewal=last,
            every=self.every,
            gate=self.deadline.gate(),
            retry_timeout=self.cfg.retry_timeout,
            busy_since=self.busy_since,
            stall=STALL_TTLS * self.cfg.ttl,
        )
        if due is None:
            return self.every
        if due > now:
            return due - now
        return 0.0 if self._renew(lease) else RETRY_PAUSE

    def _renew(self, lease: Lease) -> bool:
        sent = self.clock()
        try:
            held = self.consensus.renew(lease)
        except HacoreError as err:
            self.counters.add(Event.STORE_ERROR)
            self.log.debug("the renewal thread could not renew the lease: %s", err)
            return False
        if not held:
            # The loop's own renewal finds it lost too, and fences: it is woken for that.
            self._lost = lease
            self.log.warning("the renewal thread found the lease lost")
            self.wake()
            return False
        if not self.lease.renewed_in_time(lease, sent, self.clock(), self.deadline.gate):
            return False
        self.renewals += 1
        busy = self.busy_since
        self.log.debug(
            "lease renewed by the renewal thread (the loop has been busy %.1fs)",
            0.0 if busy is None else sent - busy,
        )
        return True
