"""The live progress of a ``cluster start`` or ``cluster join`` on the node that runs it.

The agent service runs the operation in the background and shows this record in
``GET /cluster`` (``"operation"``); the CLI polls it and prints a line per step, and the clone's
bytes done/total, rate and estimated time left while the database is copied.

Every step carries when it began and ended (seconds since the operation began), so a join's
record says where its time went without reading the agents' logs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
#: seconds of clone samples the rate is measured over: long enough to smooth pg_basebackup's
#: once-a-second reports, short enough to follow a copy that slows down
RATE_WINDOW = 5.0


def clone_rate(samples: Sequence[tuple[float, int]]) -> float | None:
    """Bytes per second over ``(time, done)`` samples, oldest first; None before two samples
    at different moments."""
    if len(samples) < 2:
        return None
    (t0, d0), (t1, d1) = samples[0], samples[-1]
    if t1 - t0 <= 0:
        return None
    return max(d1 - d0, 0) / (t1 - t0)


def eta(done: int, total: int, rate: float | None) -> float | None:
    """Seconds left at ``rate``; None while the rate is unknown or zero."""
    if rate is None or rate <= 0:
        return None
    return max(total - done, 0) / rate


class Progress:
    """Mutable by design (it is the operation's live view); every method is thread-safe."""

    def __init__(self, operation: str, steps: Sequence[tuple[str, str]]) -> None:
        self.operation = operation
        self._lock = threading.Lock()
        self._steps: list[dict[str, Any]] = [
            {
                "name": name,
                "title": title,
                "state": PENDING,
                "detail": "",
                "began": None,
                "ended": None,
            }
            for name, title in steps
        ]
        self._state = RUNNING
        self._error: str | None = None
        self._result = ""
        self._clone: tuple[int, int] | None = None
        self._clone_began: float | None = None
        self._samples: list[tuple[float, int]] = []
        self._started = time.monotonic()
        self._ended: float | None = None

    def _step(self, name: str) -> dict[str, Any]:
        for step in self._steps:
            if step["name"] == name:
                return step
        raise KeyError(name)

    def _now(self) -> float:
        return round(time.monotonic() - self._started, 3)

    def begin(self, name: str, detail: str = "") -> None:
        with self._lock:
            step = self._step(name)
            if step["state"] in (PENDING, RUNNING):
                step["state"], step["detail"] = RUNNING, detail
                if step["began"] is None:
                    step["began"] = self._now()

    def finish(self, name: str, detail: str = "") -> None:
        with self._lock:
            step = self._step(name)
            if step["state"] != DONE:
                now = self._now()
                step["ended"] = now
                if step["began"] is None:
                    step["began"] = now
            step["state"], step["detail"] = DONE, detail

    def clone(self, done: int, total: int) -> None:
        with self._lock:
            now = time.monotonic()
            if self._clone_began is None:
                self._clone_began = now
                # the copy started before its first report; count from the zero it began at
                self._samples.append((now, 0))
            self._clone = (done, total)
            self._samples.append((now, done))
            while len(self._samples) > 2 and now - self._samples[1][0] >= RATE_WINDOW:
                self._samples.pop(0)

    def fail(self, error: str) -> None:
        with self._lock:
            for step in self._steps:
                if step["state"] == RUNNING:
                    step["state"] = FAILED
            self._state, self._error, self._ended = FAILED, error, time.monotonic()

    def complete(self, result: str) -> None:
        with self._lock:
            now = self._now()
            for step in self._steps:
                if step["state"] != DONE:
                    step["ended"] = now
                    if step["began"] is None:
                        step["began"] = now
                step["state"] = DONE
            self._state, self._result, self._ended = DONE, result, time.monotonic()

    @property
    def running(self) -> bool:
        with self._lock:
            return self._state == RUNNING

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            end = self._ended if self._ended is not None else time.monotonic()
            return {
                "operation": self.operation,
                "state": self._state,
                "steps": [dict(step) for step in self._steps],
                "clone": self._clone_json(end),
                "error": self._error,
                "result": self._result,
                "elapsed": round(end - self._started, 3),
            }

    def _clone_json(self, end: float) -> dict[str, Any] | None:
        """The copy's bytes, its rate (bytes/s, over the last few seconds while it runs, over
        the whole copy once done) and the seconds left at that rate."""
        if self._clone is None or self._clone_began is None:
            return None
        done, total = self._clone
        finished = done >= total > 0
        whole = [(self._clone_began, 0), self._samples[-1]]
        rate = clone_rate(whole if finished else self._samples)
        stop = self._samples[-1][0] if finished else end
        return {
            "done": done,
            "total": total,
            "rate": round(rate) if rate is not None else None,
            "eta": round(left, 1) if (left := eta(done, total, rate)) is not None else None,
            "began": round(self._clone_began - self._started, 3),
            "elapsed": round(stop - self._clone_began, 3),
        }
