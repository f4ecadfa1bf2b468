"""Keeps "the source's files win" true between role changes.

Syncthing alone does not: a receive-only folder keeps local changes (it only stops sending
them), and a send-only folder merely *reports* that a peer announced a newer version. So a
thread watches the event stream and, whenever a folder goes idle, reverts local changes on
a mirror and overrides the cluster from the source.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hacore.errors import FilesyncError
from hacore_plugins.syncthing import redial
from hacore_plugins.syncthing.api import SyncthingApi

log = logging.getLogger(__name__)

#: events after which a folder may hold something to revert or override, or a peer is to be
#: called again (:mod:`.redial`)
EVENTS = ("StateChanged", "LocalChangeDetected", "RemoteIndexUpdated", *redial.EVENTS)


class Enforcer(threading.Thread):
    """Calls ``enforce(api)`` after relevant events, and every ``interval`` seconds anyway
    (sooner when ``wake_in()`` says so); ``observe(events)`` first sees the events
    themselves."""

    def __init__(
        self,
        api: SyncthingApi,
        enforce: Callable[[SyncthingApi], None],
        interval: float,
        observe: Callable[[Sequence[Mapping[str, Any]]], None] | None = None,
        wake_in: Callable[[], float | None] | None = None,
    ) -> None:
        super().__init__(name="syncthing-enforcer", daemon=True)
        self.api = api
        self.enforce = enforce
        self.observe = observe
        self.wake_in = wake_in
        self.interval = interval
        self._stopping = threading.Event()

    def run(self) -> None:
        since = 0
        while not self._stopping.is_set():
            try:
                events = self.api.events(since, EVENTS, timeout=self._wait())
                if events:
                    since = int(events[-1]["id"])
                    if self.observe is not None:
                        self.observe(events)
                if not self._stopping.is_set():
                    self.enforce(self.api)
            except FilesyncError as err:
                log.debug("syncthing enforcer: %s", err)
                self._stopping.wait(self.interval)
            except Exception:
                log.exception("syncthing enforcer failed; retrying")
                self._stopping.wait(self.interval)
        self.api.close()

    def _wait(self) -> float:
        soon = None if self.wake_in is None else self.wake_in()
        return self.interval if soon is None else min(self.interval, soon)

    def request_stop(self) -> None:
        self._stopping.set()

    def stop(self) -> None:
        """Returns within ``interval`` (the long poll's length) plus a request timeout."""
        self._stopping.set()
        self.join(timeout=self.interval + 15)
