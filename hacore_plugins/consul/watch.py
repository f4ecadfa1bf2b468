"""Watching a key prefix with Consul blocking queries.

Consul has no change stream for the KV store: a blocking query answers with the whole prefix
once anything under it changed after the given index. The watcher diffs each answer against
the previous one, so two changes to one key between two answers arrive as one event (the
latest value), and a key deleted and written again in between arrives as one PUT. That is why
the backend does not claim ``ordered_watch``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping
from typing import Any

from hacore.backends.consensus import Watcher
from hacore.backends.records import EventKind, WatchEvent
from hacore.errors import HacoreError
from hacore_plugins.consul.client import ConsulPool

log = logging.getLogger(__name__)

#: How long one blocking query may hang; also how long a closed watcher's thread may linger.
BLOCKING_WAIT = 5.0

#: key -> (ModifyIndex, value)
Snapshot = dict[str, tuple[int, bytes]]


def snapshot(items: list[Mapping[str, Any]] | None, root: str) -> Snapshot:
    return {
        item["Key"][len(root) :]: (int(item["ModifyIndex"]), item.get("Value") or b"")
        for item in items or ()
        if item["Key"].startswith(root)
    }


def diff(old: Snapshot, new: Snapshot) -> list[WatchEvent]:
    """Events that turn ``old`` into ``new``: writes in the order Consul applied them, then
    deletions (Consul keeps no index for a deleted key, so their place cannot be known)."""
    written = sorted(
        (index, key) for key, (index, _) in new.items() if old.get(key, (None,))[0] != index
    )
    events = [WatchEvent(EventKind.PUT, key, new[key][1]) for _, key in written]
    events += [WatchEvent(EventKind.DELETE, key) for key in sorted(old.keys() - new.keys())]
    return events


class ConsulWatcher(Watcher):
    def __init__(self, pool: ConsulPool, root: str, prefix: str) -> None:
        self._pool = pool
        self._root = root
        self._key = root + prefix
        self._events: queue.Queue[WatchEvent] = queue.Queue()
        self._stop = threading.Event()
        # The first read happens here, so the watch is in force when the constructor returns.
        self._index, self._snapshot = self._read(index=None)
        self._thread = threading.Thread(
            target=self._run, name=f"consul-watch:{self._key}", daemon=True
        )
        self._thread.start()

    def _read(self, index: int | None) -> tuple[int, Snapshot]:
        wait = f"{BLOCKING_WAIT:g}s"

        def query(client: Any) -> tuple[str, list[Mapping[str, Any]] | None]:
            result: tuple[str, list[Mapping[str, Any]] | None] = client.kv.get(
                self._key, recurse=True, index=index, wait=wait
            )
            return result

        budget = None if index is None else BLOCKING_WAIT * 17 / 16 + self._pool.retry_timeout
        raw_index, items = self._pool.call(
            query, what=f"watch of {self._key!r}", timeout=budget, blocking=index is not None
        )
        return int(raw_index), snapshot(items, self._root)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                # Consul's rules: never block on index 0, start over when the index goes back.
                index, new = self._read(index=max(self._index, 1))
            except HacoreError as exc:
                failures += 1
                if failures == 1:
                    log.warning("consul watch of %r interrupted: %s", self._key, exc)
                self._stop.wait(min(0.05 * 2**failures, 2.0))
                continue
            if failures:
                log.info("consul watch of %r resumed", self._key)
            failures = 0
            if self._stop.is_set():
                return
            for event in diff(self._snapshot, new):
                self._events.put(event)
            self._snapshot = new
            self._index = index if index >= self._index else 0
            if time.monotonic() - started < 0.01 and index == self._index:
                # An answer that returns at once without news would spin the loop.
                self._stop.wait(0.05)

    def get(self, timeout: float) -> WatchEvent | None:
        try:
            return self._events.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None

    def close(self) -> None:
        # The thread ends after its current blocking query (BLOCKING_WAIT at most).
        self._stop.set()
