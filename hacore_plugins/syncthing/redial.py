"""Calling again, soon, a peer this node dials and is not connected to (:func:`.folders.dials`).

Only one node of a pair dials. When it learns of the other first, the other refuses its
call. Syncthing 1.19 then calls again at once, but at most three times in two minutes
(``dialCoolDownMaxAttemps``), and after that no sooner than its connection loop's next
turn: 5 s, or up to 32 s in a process's first minute. So the pair would wait that long.

Letting the refusing node call back instead (what hacore did before) makes two calls cross
whenever the caller's own quick retry comes at the same moment. Syncthing 1.19 takes its
connections one at a time, the Hello exchange included, with a 20 s deadline, so crossed
calls stall both for 20 s. Seen in the tests' own setup (29 s instead of 1 s).

So the caller alone calls again. A changed address makes Syncthing dial at once, whatever
its loop's schedule: this node gives the peer's address a new ``?redial=N`` (the TCP dialer
reads only the scheme and the host) every :data:`REDIAL_S` while the peer is not connected,
for :data:`WINDOW_S` after this node learned of the peer, started, or lost a connection
that had lasted. A refused call (connected, then dropped within moments) opens no new
window, so a peer that keeps refusing is left to Syncthing's own pace.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Iterable, Mapping
from typing import Any

#: seconds between two calls to a peer this node dials and is not connected to
REDIAL_S = 1.0
#: seconds this node keeps calling after it learned of a peer or lost a lasting connection
WINDOW_S = 20.0
#: seconds a connection must last for its loss to open a new window; a refusal lasts less
LASTING_S = 2.0
#: a call due this much later is made now: the enforcer's wait comes in whole seconds
EARLY_S = 0.25
#: the events that tell this node of its connections
EVENTS = ("DeviceConnected", "DeviceDisconnected")


def with_redial(address: str, count: int) -> str:
    """``address`` as the ``count``-th call sees it: a new string is a new dial for
    Syncthing; 0 is the address itself."""
    if not count:
        return address
    return f"{address}{'&' if '?' in address else '?'}redial={count}"


class Redials:
    """The peers (device IDs) this node calls again, and how many times it has.

    :meth:`note` runs on the enforcer's thread, the others under the backend's lock; a
    lock of its own keeps the two apart.
    """

    def __init__(
        self, interval: float = REDIAL_S, window: float = WINDOW_S, lasting: float = LASTING_S
    ) -> None:
        self.interval = interval
        self.window = window
        self.lasting = lasting
        self._lock = threading.Lock()
        #: device ID -> monotonic time its window ends
        self._until: dict[str, float] = {}
        #: device ID -> monotonic time of its next call
        self._next: dict[str, float] = {}
        #: device ID -> calls made so far (the address suffix)
        self._count: dict[str, int] = {}
        #: device ID -> monotonic time its connection was seen made
        self._connected_at: dict[str, float] = {}

    @property
    def idle(self) -> bool:
        with self._lock:
            return not self._until

    def counts(self) -> Mapping[str, int]:
        with self._lock:
            return dict(self._count)

    def watch(self, devices: Iterable[str], now: float | None = None) -> None:
        """Open a window for ``devices``: learned of, or this node just started."""
        now = time.monotonic() if now is None else now
        with self._lock:
            for device in devices:
                self._until[device] = now + self.window
                self._next[device] = now + self.interval

    def note(self, events: Iterable[Mapping[str, Any]], now: float | None = None) -> None:
        """A lasting connection lost opens a window; a refused call (to the caller, a
        connection made and dropped at once) does not."""
        now = time.monotonic() if now is None else now
        for event in events:
            data = event.get("data")
            device = data.get("id") if isinstance(data, Mapping) else None
            if not isinstance(device, str):
                continue
            if event.get("type") == "DeviceConnected":
                with self._lock:
                    self._connected_at[device] = now
            elif event.get("type") == "DeviceDisconnected":
                with self._lock:
                    since = self._connected_at.pop(device, None)
                if since is not None and now - since >= self.lasting:
                    self.watch([device], now)

    def due(
        self, dialed: Collection[str], connected: Collection[str], now: float | None = None
    ) -> dict[str, int]:
        """Count one more call for each peer in ``dialed`` whose turn came and that is not
        ``connected``: those peers, with their new counts.

        A window ends when its time is up, not when the peer is seen connected: a refused
        call is a connection too, for a moment, and ending the window then would leave the
        caller to Syncthing's pace."""
        now = time.monotonic() if now is None else now
        changed: dict[str, int] = {}
        with self._lock:
            for device in list(self._until):
                if device not in dialed or now >= self._until[device]:
                    del self._until[device]
                    self._next.pop(device, None)
                elif device not in connected and now >= self._next[device] - EARLY_S:
                    self._count[device] = changed[device] = self._count.get(device, 0) + 1
                    self._next[device] = now + self.interval
            for device in [d for d in self._count if d not in dialed]:
                del self._count[device]
        return changed

    def wake_in(self, now: float | None = None) -> float | None:
        """Seconds until the next call is due; None when no window is open."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if not self._next:
                return None
            return max(0.0, min(self._next.values()) - now)
