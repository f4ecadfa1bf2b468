"""Keeping the managed store's leadership off the active's host.

The founding node bootstraps the store and is the first active, so the store's raft leader
and the active usually share a host. When that host dies the store must first elect a
leader, and etcd's new leader then extends every lease by a full ttl (its lessor's
promotion): the dead active's lease outlives it by the election *and* a whole ttl, and the
takeover waits for both (issue 15, target 0). With the leadership on a standby's host, the
active's host can die without taking the store's leader along.

So, while its node is active and the store answers, the agent asks its managed store every
``CHECK_EVERY`` seconds to hand over the leadership if its own server holds it
(:meth:`~hacore.backends.consensus.ManagedStore.move_leadership_off`; only stores that
declare ``moves_leadership`` can). The call runs on a thread of its own: it talks to the
store's servers and must never hold up the loop's renewal.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from hacore.backends.consensus import ManagedStore

#: seconds between two looks at who leads the store, while active
CHECK_EVERY = 5.0
#: seconds the node must have been active, with the store answering, before the first move:
#: a leadership change right after a promotion or a store election adds to the turbulence
SETTLE = 10.0


class StoreLeadership:
    """Asks the managed store to move its leadership off this node while it is active."""

    def __init__(
        self,
        store: ManagedStore | None,
        log: logging.LoggerAdapter,  # type: ignore[type-arg]
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store if store is not None and type(store).moves_leadership else None
        self.log = log
        self._clock = clock
        self._steady_since: float | None = None
        self._next_at = 0.0
        self._thread: threading.Thread | None = None
        #: how many times the leadership was moved off this node, for the logs and tests
        self.moves = 0

    def tick(self, *, active: bool, store_ok: bool) -> None:
        """One look per loop; ``active``: this node holds the lease and runs as active."""
        if self.store is None:
            return
        now = self._clock()
        if not (active and store_ok):
            self._steady_since = None
            return
        if self._steady_since is None:
            self._steady_since = now
        if now - self._steady_since < SETTLE or now < self._next_at:
            return
        if self._thread is not None and self._thread.is_alive():
            return
        self._next_at = now + CHECK_EVERY
        self._thread = threading.Thread(
            target=self._move, args=(self.store,), name="store-leadership", daemon=True
        )
        self._thread.start()

    def _move(self, store: ManagedStore) -> None:
        try:
            heir = store.move_leadership_off()
        except Exception as err:  # a plugin's bug must not end the agent
            self.log.warning("could not move the store's leadership off this node: %s", err)
            return
        if heir:
            self.moves += 1
            self.log.info(
                "moved the store's leadership to %s: this node is active, and its host dying "
                "must not take the store's leader along",
                heir,
            )
