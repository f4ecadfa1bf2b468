"""Seeing the agent's clone progress from outside the agent.

The agent clones with ``replication.clone(source)`` and no progress callback; the service
hands the agent its replication backend wrapped in :func:`reporting_clones`, which adds one.
Everything else passes straight through to the real backend.
"""

from __future__ import annotations

from typing import Any, cast

from hacore.backends.replication import ProgressCallback, ReplicationBackend, ReplicationSource


class _CloneReporter:
    def __init__(self, inner: ReplicationBackend, report: ProgressCallback) -> None:
        self._inner = inner
        self._report = report

    def clone(self, source: ReplicationSource, *, progress: ProgressCallback | None = None) -> None:
        def both(done: int, total: int) -> None:
            self._report(done, total)
            if progress is not None:
                progress(done, total)

        # (0, 0): the copy begins now, before the tool's first report (its rate counts from here)
        both(0, 0)
        self._inner.clone(source, progress=both)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __repr__(self) -> str:
        return f"reporting_clones({self._inner!r})"


def reporting_clones(inner: ReplicationBackend, report: ProgressCallback) -> ReplicationBackend:
    """``inner``, with every clone's ``(done, total)`` bytes also sent to ``report``."""
    return cast(ReplicationBackend, _CloneReporter(inner, report))
