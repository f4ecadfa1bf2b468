"""Where the status endpoint's tail comes from: the agent's loop iterations and garbage
collections on a timeline, beside the probes that were slow.

A hacore benchmark node (:mod:`_hacore_cluster`) records each loop iteration (start, end, the
loop thread's CPU) and each collection (start, end, generation) with :func:`record`, on
``CLOCK_MONOTONIC``, which every process of the machine shares. During the status load the
benchmark reads them back (:func:`read`, :func:`summary`); with ``--status-timeline`` a
timed client on one more keep-alive connection (:func:`timed_probes`) notes when each of its
requests was sent and how long it took, so a slow one can be laid against what the agent's
interpreter was doing then (:func:`attribute`).
"""

from __future__ import annotations

import gc
import http.client
import json
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

#: a probe slower than this is "slow" (the target p99 of issue 15)
SLOW = 0.002
#: collections shorter than this are not worth a line
_GC_SHOWN = 0.001

Span = tuple[str, float, float, float]


def record(agent: Any, path: Path) -> None:
    """Append this process's loop iterations and collections to ``path`` (JSON lines), once a
    second from a thread of its own."""
    spans: list[Span] = []
    iterate: Callable[[], float] = agent._iterate_once

    def timed() -> float:
        start, cpu = time.monotonic(), time.thread_time()
        try:
            return iterate()
        finally:
            spans.append(("loop", start, time.monotonic(), time.thread_time() - cpu))

    agent._iterate_once = timed
    started: list[float] = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.monotonic()
        else:
            spans.append(("gc", started[0], time.monotonic(), float(info["generation"])))

    gc.callbacks.append(on_gc)

    def flush() -> None:
        while True:
            time.sleep(1.0)
            batch = spans[:]
            del spans[: len(batch)]
            with path.open("a") as out:
                out.writelines(json.dumps(span) + "\n" for span in batch)

    threading.Thread(target=flush, name="bench-timeline", daemon=True).start()


def read(path: Path, start: float, end: float) -> list[Span]:
    """The spans that overlap ``[start, end]``."""
    if not path.exists():
        return []
    spans = [tuple(json.loads(line)) for line in path.read_text().splitlines() if line]
    return [s for s in spans if s[2] > start and s[1] < end]  # type: ignore[misc]


def summary(spans: list[Span], start: float, end: float) -> dict[str, Any]:
    """What the agent's interpreter did during a load: its loop's CPU per iteration and the
    share of the time an iteration ran, and the collections over a millisecond."""
    loops = [s for s in spans if s[0] == "loop"]
    pauses = [s[2] - s[1] for s in spans if s[0] == "gc" and s[2] - s[1] >= _GC_SHOWN]
    busy = sum(min(s[2], end) - max(s[1], start) for s in loops)
    cpu = [s[3] * 1000 for s in loops]
    return {
        "loop_iterations": len(loops),
        "loop_cpu_ms_p50": round(statistics.median(cpu), 2) if cpu else None,
        "loop_cpu_ms_max": round(max(cpu), 2) if cpu else None,
        "loop_wall_share": round(busy / (end - start), 3) if end > start else None,
        "gc_pauses_over_1ms": len(pauses),
        "gc_pause_max_ms": round(max(pauses) * 1000, 2) if pauses else None,
    }


def timed_probes(url: str, seconds: float) -> list[tuple[float, float]]:
    """(sent at, seconds to the answer) of each request on one keep-alive connection, in a
    row, for ``seconds``."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=5.0)
    samples: list[tuple[float, float]] = []
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            sent = time.monotonic()
            conn.request("GET", parts.path)
            conn.getresponse().read()
            samples.append((sent, time.monotonic() - sent))
    finally:
        conn.close()
    return samples


def attribute(samples: list[tuple[float, float]], spans: list[Span]) -> dict[str, Any]:
    """How many slow probes overlapped a loop iteration or a collection, beside the share of
    all probes that did: a tail the loop causes shows as a much larger share among the slow."""

    def overlaps(sent: float, took: float, kind: str) -> bool:
        return any(s[0] == kind and s[1] < sent + took and s[2] > sent for s in spans)

    slow = [(t, d) for t, d in samples if d > SLOW]
    everyone = len(samples) or 1
    return {
        "timed_probes": len(samples),
        "slow": len(slow),
        "slow_in_loop": sum(overlaps(t, d, "loop") for t, d in slow),
        "slow_in_gc": sum(overlaps(t, d, "gc") for t, d in slow),
        "all_in_loop_share": round(sum(overlaps(t, d, "loop") for t, d in samples) / everyone, 3),
    }
