"""Long work (clone, rewind) on a worker thread, so the loop keeps renewing its lease.

At most one job runs at a time; the loop reports it in ``Observation.job`` and ``decide``
starts no second one. A job that fails is logged and forgotten: the next loop decides again
from what it finds, which is what makes an interrupted clone or rewind resumable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from hacore.agent.hooks import NodeLog
from hacore.agent.vocabulary import Action

log = logging.getLogger(__name__)


class Jobs:
    def __init__(self, node: str, on_done: Callable[[], None]) -> None:
        self.log = NodeLog(log, node)
        self._on_done = on_done
        self._lock = threading.Lock()
        self._action: Action | None = None
        self._thread: threading.Thread | None = None
        #: The last job's failure, for the API and the logs ("" when it succeeded).
        self.last_error = ""

    def running(self) -> Action | None:
        with self._lock:
            return self._action

    def submit(self, action: Action, what: str, work: Callable[[], None]) -> bool:
        """Start ``work`` in the background unless a job already runs (then do nothing and
        answer False: an operator's request, ``nodes restart`` or ``reinit``, says so)."""
        if not action.off_loop:
            raise ValueError(f"{action.value} does not run off the loop")
        with self._lock:
            if self._action is not None:
                return False
            self._action = action
            self._thread = threading.Thread(
                target=self._run,
                args=(action, what, work),
                name=f"hacore-{action.value}",
                daemon=True,
            )
            self._thread.start()
        return True

    def _run(self, action: Action, what: str, work: Callable[[], None]) -> None:
        started = time.monotonic()
        self.log.info("%s: started", what)
        try:
            work()
        except Exception as err:
            self.last_error = f"{what} failed: {err}"
            self.log.warning("%s failed after %.1fs: %s", what, time.monotonic() - started, err)
        else:
            self.last_error = ""
            self.log.info("%s: done in %.1fs", what, time.monotonic() - started)
        finally:
            with self._lock:
                self._action = None
            self._on_done()

    def join(self, timeout: float) -> bool:
        """Wait for the running job; False when it is still running after ``timeout``."""
        with self._lock:
            thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        return not thread.is_alive()
