"""Limits that keep the agent's REST API from being turned against the agent's loop.

A flood of connections, slow clients or wrong passwords must cost the agent a bounded amount of
descriptors, threads and CPU (DESIGN rule 8), and each of these bounds is enforced where the
cost would start: the descriptor limit at process start, connections at accept, password checks
before hashing.
"""

from __future__ import annotations

import logging
import resource
import threading
import time

log = logging.getLogger(__name__)

#: descriptors kept for the agent itself (store and database clients, subprocesses, logs)
#: whatever the API holds
RESERVED_DESCRIPTORS = 256


def raise_open_file_limit() -> int:
    """Raise this process's soft descriptor limit to its hard limit; returns the new soft limit.

    A default systemd unit gives 1024, which a few hundred client connections plus the agent's
    own files exhaust; past that, every ``open`` of the agent fails with EMFILE, including the
    reads that tell whether its database runs. Children (the managed store, PostgreSQL) inherit
    the raised limit, which they want too.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as err:
            log.warning("cannot raise the open file limit from %d to %d: %s", soft, target, err)
            return soft
        soft = target
    return soft


def connection_budget() -> int:
    """How many client connections the API may hold with the current descriptor limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 65536
    return max(64, soft - RESERVED_DESCRIPTORS)


class Throttle:
    """At most one ``True`` per key and ``interval``: a flood is logged, not written out line by
    line. Thread-safe; forgets old keys, so a flood from many addresses stays bounded too."""

    def __init__(self, interval: float = 10.0, size: int = 1024) -> None:
        self.interval = interval
        self._size = size
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> int | None:
        """None when ``key`` was let through within ``interval``; else how many were held back
        since the last time (0 or more), and the key is let through."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            if len(self._last) >= self._size:
                self._forget(now)
            self._last[key] = now
            return self._suppressed.pop(key, 0)

    def _forget(self, now: float) -> None:
        for key in [k for k, t in self._last.items() if now - t >= self.interval]:
            del self._last[key]
            self._suppressed.pop(key, None)
        while len(self._last) >= self._size:
            key = next(iter(self._last))
            del self._last[key]
            self._suppressed.pop(key, None)


class AttemptLimiter:
    """A token bucket per client address for password checks that failed.

    Each check that has to hash takes a token and a success gives it back, so a client with
    the right password is never slowed, while one that keeps failing gets ``burst`` tries and
    then one every ``1 / rate`` seconds, refused before any hashing.
    """

    def __init__(self, burst: float = 5.0, rate: float = 0.5, size: int = 4096) -> None:
        self.burst = burst
        self.rate = rate
        self._size = size
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """0 when ``client`` may try now (a token was taken), else seconds until it may."""
        now = time.monotonic()
        with self._lock:
            tokens = self._tokens(client, now)
            if tokens < 1.0:
                self._buckets[client] = (tokens, now)
                return (1.0 - tokens) / self.rate
            if client not in self._buckets and len(self._buckets) >= self._size:
                self._forget(now)
            self._buckets[client] = (tokens - 1.0, now)
            return 0.0

    def give_back(self, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            tokens = self._tokens(client, now) + 1.0
            if tokens >= self.burst:
                self._buckets.pop(client, None)
            else:
                self._buckets[client] = (tokens, now)

    def _tokens(self, client: str, now: float) -> float:
        found = self._buckets.get(client)
        if found is None:
            return self.burst
        tokens, at = found
        return min(self.burst, tokens + (now - at) * self.rate)

    def _forget(self, now: float) -> None:
        full = [c for c in self._buckets if self._tokens(c, now) >= self.burst]
        for client in full:
            del self._buckets[client]
        while len(self._buckets) >= self._size:
            del self._buckets[next(iter(self._buckets))]
