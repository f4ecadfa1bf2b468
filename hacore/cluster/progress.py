"""The live progress of a ``cluster start`` or ``cluster join`` on the node that runs it.

The agent service runs the operation in the background and shows this record in
``GET /cluster`` (``"operation"``); the CLI polls it and prints a line per step, and the clone's
bytes done/total while the database is copied.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"


class Progress:
    """Mutable by design (it is the operation's live view); every method is thread-safe."""

    def __init__(self, operation: str, steps: Sequence[tuple[str, str]]) -> None:
        self.operation = operation
        self._lock = threading.Lock()
        self._steps = [
            {"name": name, "title": title, "state": PENDING, "detail": ""} for name, title in steps
        ]
        self._state = RUNNING
        self._error: str | None = None
        self._result = ""
        self._clone: tuple[int, int] | None = None
        self._started = time.monotonic()
        self._ended: float | None = None

    def _step(self, name: str) -> dict[str, Any]:
        for step in self._steps:
            if step["name"] == name:
                return step
        raise KeyError(name)

    def begin(self, name: str, detail: str = "") -> None:
        with self._lock:
            step = self._step(name)
            if step["state"] in (PENDING, RUNNING):
                step["state"], step["detail"] = RUNNING, detail

    def finish(self, name: str, detail: str = "") -> None:
        with self._lock:
            step = self._step(name)
            step["state"], step["detail"] = DONE, detail

    def clone(self, done: int, total: int) -> None:
        with self._lock:
            self._clone = (done, total)

    def fail(self, error: str) -> None:
        with self._lock:
            for step in self._steps:
                if step["state"] == RUNNING:
                    step["state"] = FAILED
            self._state, self._error, self._ended = FAILED, error, time.monotonic()

    def complete(self, result: str) -> None:
        with self._lock:
            for step in self._steps:
                step["state"] = DONE
            self._state, self._result, self._ended = DONE, result, time.monotonic()

    @property
    def running(self) -> bool:
        with self._lock:
            return self._state == RUNNING

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            end = self._ended if self._ended is not None else time.monotonic()
            clone = self._clone
            return {
                "operation": self.operation,
                "state": self._state,
                "steps": [dict(step) for step in self._steps],
                "clone": {"done": clone[0], "total": clone[1]} if clone else None,
                "error": self._error,
                "result": self._result,
                "elapsed": round(end - self._started, 3),
            }
