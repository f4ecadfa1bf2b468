"""Dialing back a peer whose call this node refused (see :func:`.folders.dials`).

Only one node of a pair dials; if it learns of the other first, its call is refused and
Syncthing 1.19 tries again no sooner than 5 s later (``minConnectionLoopSleep``). The node
that refused the call dials back instead, once it knows the caller. It learns of the refusal
two ways, because neither alone sees every one:

- the pending devices it asks for when it learns of new peers (a call refused earlier);
- the ``PendingDevicesChanged`` events the enforcer hands it: a call refused between that
  question and the configuration naming the caller leaves no pending device (Syncthing
  forgets those it now knows at that commit), only the event. Measured before this: a
  joining node connected at 5.7 s instead of 0.7 s, about one join in four.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from hacore_plugins.syncthing.folders import dial_backs

#: seconds a node dials back a peer whose call it refused
DIAL_BACK_S = 20.0
#: the event a refused call of an unknown device raises
REFUSED_EVENT = "PendingDevicesChanged"


def refused_callers(events: Iterable[Mapping[str, Any]]) -> set[str]:
    """The device IDs whose calls these events say were refused."""
    found: set[str] = set()
    for event in events:
        if event.get("type") != REFUSED_EVENT:
            continue
        data = event.get("data")
        added = data.get("added") if isinstance(data, Mapping) else None
        for entry in added if isinstance(added, list) else []:
            device = entry.get("deviceID") if isinstance(entry, Mapping) else None
            if isinstance(device, str):
                found.add(device)
    return found


class DialBacks:
    """The peers this node dials although it is their turn, each until connected or
    ``window`` seconds later; and the refused calls seen, for peers not yet known.

    :meth:`note` runs on the enforcer's thread without the backend's lock (a refusal must
    not wait for it); the other methods run under that lock.
    """

    def __init__(self, window: float = DIAL_BACK_S) -> None:
        self.window = window
        self._refused_lock = threading.Lock()
        #: device ID -> monotonic time its refusal is forgotten
        self._refused: dict[str, float] = {}
        #: device ID -> monotonic time this node stops dialing it
        self._dialing: dict[str, float] = {}

    @property
    def devices(self) -> frozenset[str]:
        return frozenset(self._dialing)

    @property
    def idle(self) -> bool:
        """Nothing dialed back nor any refusal to act on: no need to ask the connections."""
        return not self._dialing and not self._refused

    def note(self, events: Iterable[Mapping[str, Any]]) -> None:
        callers = refused_callers(events)
        if not callers:
            return
        until = time.monotonic() + self.window
        with self._refused_lock:
            for device in callers:
                self._refused[device] = until

    def begin(
        self,
        peers: Collection[str],
        *,
        pending: Collection[str] = (),
        connected: Collection[str] = (),
        own_id: str,
        managed: bool,
    ) -> bool:
        """Start dialing those of ``peers`` (device IDs) whose call was refused, unless
        connected or dialed already; True when the configuration must change."""
        now = time.monotonic()
        with self._refused_lock:
            for device in [d for d, until in self._refused.items() if until <= now]:
                del self._refused[device]
            refused = set(self._refused) | set(pending)
            for device in refused & set(peers):
                self._refused.pop(device, None)
        candidates = set(peers) - set(connected) - set(self._dialing)
        due = dial_backs(refused, candidates, own_id, managed)
        for device in due:
            self._dialing[device] = now + self.window
        return bool(due)

    def end(self, connected: Collection[str]) -> bool:
        """Listen again to the peers connected (or given up on), so that no later call
        crosses theirs; True when the configuration must change."""
        now = time.monotonic()
        done = [d for d, until in self._dialing.items() if d in connected or now > until]
        for device in done:
            del self._dialing[device]
        return bool(done)
