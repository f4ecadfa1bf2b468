"""One row at a time into a cluster's database, keeping every acknowledged id: the evidence a
test of a failover, a removal, a repair or a restore needs to say that nothing was lost.

Each test used to carry its own copy; they differ only in where they connect (one node, or
whichever node is active now), what they insert and how they treat an error, which are the
parameters here.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from hacore.testing.procs import wait_for

Connect = Callable[[], "psycopg.Connection[Any] | None"]


class RowWriter:
    """Inserts ids ``first``, ``first + 1``… with ``statement`` (one ``%s`` for the id) on the
    connection ``connect`` gives (None: no target yet, try again shortly), one autocommit
    statement each.

    ``acked`` holds the ids whose commit returned, ``acked_at`` when (monotonic), ``errors``
    each failure with its time; an id whose statement failed is never used again, so a row
    that is present but not acknowledged cannot be mistaken for one that is. With
    ``stop_on_error`` the first failure ends the writer (``failed`` holds it): a test that
    kills the server under it wants to know what was acknowledged before.
    """

    def __init__(
        self,
        connect: Connect,
        statement: str,
        *,
        first: int = 1,
        interval: float = 0.01,
        stop_on_error: bool = False,
        after_each: Callable[[], None] | None = None,
    ) -> None:
        self._connect = connect
        self.statement = statement
        self.next = first
        self.interval = interval
        self.stop_on_error = stop_on_error
        self._after_each = after_each
        self.acked: list[int] = []
        self.acked_at: list[float] = []
        self.errors: list[tuple[float, str]] = []
        self.failed: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self, *, rows: int = 5, timeout: float = 120.0) -> RowWriter:
        """Start writing, and return once ``rows`` rows are acknowledged (0: at once)."""
        self._thread.start()
        if rows:
            wait_for(lambda: len(self.acked) >= rows, timeout, what="the writer's first rows")
        return self

    def stop(self, timeout: float = 60.0) -> list[int]:
        self._stop.set()
        self._thread.join(timeout)
        return list(self.acked)

    def __enter__(self) -> RowWriter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_more(self, count: int, timeout: float = 120.0) -> None:
        """Wait until ``count`` more rows than now are acknowledged."""
        target = len(self.acked) + count
        wait_for(lambda: len(self.acked) >= target, timeout, what=f"{count} more acknowledged rows")

    def missing(self, present: set[int]) -> set[int]:
        """The acknowledged ids that are not in ``present``."""
        return set(self.acked) - present

    def _run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = self._connect()
                    if conn is None:
                        time.sleep(0.1)
                        continue
                conn.execute(self.statement, (self.next,))
                self.acked.append(self.next)
                self.acked_at.append(time.monotonic())
            except psycopg.Error as err:
                self.errors.append((time.monotonic(), f"row {self.next}: {err}"))
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
                conn = None
                if self.stop_on_error:
                    self.failed = err
                    return
                time.sleep(0.1)
            self.next += 1
            if self._after_each is not None:
                self._after_each()
            if self.interval:
                time.sleep(self.interval)
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
