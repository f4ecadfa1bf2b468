"""The thread that wakes the agent loop as soon as the leader key changes.

Without it a standby would notice a lost active only on its next loop (``loop_wait`` later).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from hacore.agent import keys
from hacore.backends.consensus import ConsensusBackend, Watcher

log = logging.getLogger(__name__)


class LeaderWatch:
    """A thread that wakes the loop as soon as the leader key changes.

    It survives a store outage: a watch that fails is made again once the store answers.
    """

    def __init__(self, consensus: ConsensusBackend, wake: Callable[[], None]) -> None:
        self._consensus = consensus
        self._wake = wake
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="hacore-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)

    def _run(self) -> None:
        watcher: Watcher | None = None
        while not self._stop.is_set():
            if watcher is None:
                try:
                    watcher = self._consensus.watch(keys.LEADER_KEY)
                except Exception as err:
                    log.debug("leader watch not in force: %s", err)
                    self._stop.wait(1.0)
                    continue
            began = time.monotonic()
            try:
                event = watcher.get(1.0)
            except Exception as err:
                log.debug("leader watch failed: %s", err)
                event = None
            if event is not None:
                self._wake()
            elif time.monotonic() - began < 0.5:
                # A closed or broken watch answers at once: make a new one, without spinning.
                with contextlib.suppress(Exception):
                    watcher.close()
                watcher = None
                self._stop.wait(0.5)
        if watcher is not None:
            with contextlib.suppress(Exception):
                watcher.close()
