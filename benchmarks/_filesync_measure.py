"""Propagation of single files: written on the active, timed until whole on every standby.

A file is written in a staging directory beside the active's mirrored one (same file
system, out of the engines' sight) and renamed into it: the engines only ever see it whole.
One watcher thread per standby polls every 10 ms; a file counts as arrived at the first
poll that finds it at its size, provided its content then hashes right (the hash is taken
after the poll's timestamp and not counted).
"""

from __future__ import annotations

import math
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
from _filesync_tree import Entry, random_file, sha256_of

POLL = 0.01


@attrs.define
class Pending:
    entry: Entry
    written: float


class Watcher(threading.Thread):
    """Notes when each announced file is first whole in one standby's directory."""

    def __init__(self, directory: Path) -> None:
        super().__init__(name=f"watch-{directory.parent.name}", daemon=True)
        self.directory = directory
        self.pending: dict[str, Pending] = {}
        self.arrived: dict[str, float] = {}
        #: what a file was when its hash last did not match: not hashed again until it changes
        self._wrong: dict[str, tuple[int, int, int]] = {}
        self._lock = threading.Lock()
        self._halt = threading.Event()

    def expect(self, name: str, entry: Entry, written: float) -> None:
        with self._lock:
            self.pending[name] = Pending(entry, written)

    def latency(self, name: str) -> float | None:
        with self._lock:
            return self.arrived.get(name)

    def run(self) -> None:
        while not self._halt.is_set():
            with self._lock:
                todo = list(self.pending.items())
            for name, want in todo:
                seen = time.monotonic()
                path = self.directory / name
                try:
                    info = path.stat()
                    if info.st_size != want.entry.size:
                        continue
                    key = (info.st_ino, info.st_size, info.st_mtime_ns)
                    if self._wrong.get(name) == key:
                        continue
                    if sha256_of(path) != want.entry.sha256:
                        self._wrong[name] = key
                        continue
                except OSError:
                    continue
                with self._lock:
                    self.pending.pop(name, None)
                    self.arrived[name] = seen - want.written
            self._halt.wait(POLL)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)


@attrs.define
class Sample:
    name: str
    size: int
    #: seconds until whole on each standby, None where it never came
    per_standby: list[float | None]
    #: seconds the call after the write took (a scan), inside the time
    after_write_s: float | None = None

    @property
    def both(self) -> float | None:
        if any(t is None for t in self.per_standby):
            return None
        return max(t for t in self.per_standby if t is not None)


class Propagation:
    """Writes files on the active and collects when they are whole on every standby."""

    def __init__(
        self,
        active_files: Path,
        standby_files: Sequence[Path],
        staging: Path,
        *,
        after_write: Callable[[], None] | None = None,
        seed: int = 0,
    ) -> None:
        self.active_files = active_files
        self.staging = staging
        staging.mkdir(parents=True, exist_ok=True)
        self.after_write = after_write
        self.watchers = [Watcher(d) for d in standby_files]
        self.rng = random.Random(seed)
        self.samples: list[Sample] = []
        self._serial = 0

    def __enter__(self) -> Propagation:
        for watcher in self.watchers:
            watcher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for watcher in self.watchers:
            watcher.stop()

    def _write(self, prefix: str, size: int) -> tuple[str, Entry, float | None]:
        self._serial += 1
        name = f"{prefix}-{self._serial:04d}-{uuid.uuid4().hex[:8]}.bin"
        staged = self.staging / name
        entry = random_file(staged, size)
        written = time.monotonic()
        for watcher in self.watchers:
            watcher.expect(name, entry, written)
        os.rename(staged, self.active_files / name)
        if self.after_write is None:
            return name, entry, None
        self.after_write()
        return name, entry, time.monotonic() - written

    def _collect(self, names: list[tuple[str, int, float | None]], timeout: float) -> list[Sample]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(w.latency(n) is not None for w in self.watchers for n, _, _ in names):
                break
            time.sleep(POLL)
        done = [Sample(n, s, [w.latency(n) for w in self.watchers], a) for n, s, a in names]
        self.samples += done
        return done

    def sequential(
        self, prefix: str, size: int, count: int, *, phase: float, timeout: float
    ) -> list[Sample]:
        """One file at a time, each after the previous is everywhere (or timed out) and a
        random pause of up to ``phase`` seconds, so a write does not fall at the same point
        of an engine's timer every time."""
        samples: list[Sample] = []
        for _ in range(count):
            time.sleep(self.rng.uniform(0, phase))
            name, _entry, after = self._write(prefix, size)
            samples += self._collect([(name, size, after)], timeout)
        return samples

    def open_loop(
        self, prefix: str, size: int, count: int, *, mean_gap: float, timeout: float
    ) -> list[Sample]:
        """Files written at random moments (gaps uniform in 0..2 x ``mean_gap``) without
        waiting for them: for an engine on a long timer, where waiting for each file would
        phase-lock the writes to the pulls and take ``count`` timer periods."""
        names: list[tuple[str, int, float | None]] = []
        for _ in range(count):
            time.sleep(self.rng.uniform(0, 2 * mean_gap))
            name, _entry, after = self._write(prefix, size)
            names.append((name, size, after))
        return self._collect(names, timeout)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest rank: the smallest value with at least ``p`` percent of them at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def summary(samples: Sequence[Sample]) -> dict[str, Any]:
    both = [s.both for s in samples if s.both is not None]
    first = [min(t for t in s.per_standby if t is not None) for s in samples if s.both is not None]
    result: dict[str, Any] = {"n": len(samples), "timeouts": len(samples) - len(both)}
    if both:
        for p in (50, 95, 99):
            result[f"p{p}_s"] = round(percentile(both, p), 3)
        result["max_s"] = round(max(both), 3)
        result["min_s"] = round(min(both), 3)
        result["first_standby_p50_s"] = round(percentile(first, 50), 3)
    after = [s.after_write_s for s in samples if s.after_write_s is not None]
    if after:
        result["scan_p50_s"] = round(percentile(after, 50), 3)
    return result
