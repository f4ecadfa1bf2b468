"""Helpers of the contract suite: waiting, a killable leader, watch-order checks."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hacore.backends.consensus import ConsensusBackend, ManagedStore, Watcher
from hacore.backends.records import EventKind, Member, NodeRole, WatchEvent
from hacore.errors import StoreUnavailableError
from hacore.testing.harness import ConsensusHarness
from hacore.testing.procs import ServerProcess

T = TypeVar("T")

#: Seconds a freshly written value may take to be visible through another client.
VISIBLE = 5.0
#: What "within retry_timeout" may overshoot by (thread scheduling, a loaded machine).
SLACK = 1.0

#: One write of the watch-order scenario: (kind, key, value).
Change = tuple[EventKind, str, bytes | None]


def eventually(predicate: Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll ``predicate`` until truthy; store outages on the way are retried, not errors."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = predicate()
            if result:
                return result
            last = result
        except StoreUnavailableError as err:
            last = err
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout:g}s: {what} (last: {last!r})")
        time.sleep(0.02)


def answered(call: Callable[[], T], timeout: float, what: str) -> T:
    """The first answer of ``call`` that is not a StoreUnavailableError (e.g. during failover)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except StoreUnavailableError as err:
            if time.monotonic() > deadline:
                raise AssertionError(f"no answer within {timeout:g}s: {what} ({err})") from err
        time.sleep(0.05)


def timed(call: Callable[[], Any]) -> tuple[float, BaseException | None]:
    """Seconds ``call`` took, and what it raised."""
    start = time.monotonic()
    try:
        call()
    except Exception as err:
        return time.monotonic() - start, err
    return time.monotonic() - start, None


def collect_until(watcher: Watcher, key: str, timeout: float) -> list[WatchEvent]:
    """Events until (and without) the first event for ``key``; fails if it never comes."""
    events: list[WatchEvent] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = watcher.get(timeout=max(0.0, deadline - time.monotonic()))
        if event is None:
            break
        if event.key == key:
            return events
        events.append(event)
    raise AssertionError(f"no event for {key} within {timeout:g}s; got {events}")


def check_event_values(events: Sequence[WatchEvent], changes: Sequence[Change]) -> None:
    """A PUT event's value is the value of that write or of a later write of the key.

    Per :class:`~hacore.backends.records.WatchEvent`, stores that do not ship values read the
    key after the event, which can only show a newer value (None once the key is deleted again).
    """
    position = {key: 0 for _, key, _ in changes}
    for event in events:
        history = [c for c in changes if c[1] == event.key]
        start = position[event.key]
        index = next((i for i in range(start, len(history)) if history[i][0] is event.kind), None)
        assert index is not None, f"{event} matches no remaining change of {event.key}"
        position[event.key] = index + 1
        if event.kind is EventKind.PUT:
            later = history[index:]
            allowed = {c[2] for c in later if c[0] is EventKind.PUT}
            if any(c[0] is EventKind.DELETE for c in later):
                allowed.add(None)
            assert event.value in allowed, (
                f"{event}: value is neither the one written ({history[index][2]!r}) nor a later one"
            )


def check_coalesced(events: Sequence[WatchEvent], changes: Sequence[Change]) -> None:
    """For stores that may merge changes: per key, a subsequence ending with the last change."""
    for key in {key for _, key, _ in changes}:
        kinds = [c[0] for c in changes if c[1] == key]
        seen = [e.kind for e in events if e.key == key]
        assert seen, f"no event at all for {key}"
        assert seen[-1] is kinds[-1], f"{key}: last event {seen[-1]}, last change {kinds[-1]}"
        remaining = iter(kinds)
        assert all(kind in remaining for kind in seen), (
            f"{key}: events {seen} are not in the order of the changes {kinds}"
        )


def merge_client_settings(stores: Iterable[ManagedStore]) -> dict[str, Any]:
    """Client settings naming every given server (list values are concatenated)."""
    merged: dict[str, Any] = {}
    for store in stores:
        for key, value in store.client_settings().items():
            if isinstance(value, list):
                merged.setdefault(key, [])
                merged[key] += [v for v in value if v not in merged[key]]
            else:
                merged.setdefault(key, value)
    return merged


class KillableLeader:
    """A node holding the leader key that can die without ending its session.

    Out-of-process harnesses: a ``hacore.testing.holder`` process, killed with SIGKILL (the
    backend must be reachable through the plugin registry). In-process harnesses: a backend
    of the factory, killed by calling its ``crash()`` method when it has one (stop renewing
    without ending the session; a backend that never renews by itself needs none).
    """

    def __init__(
        self,
        harness: ConsensusHarness,
        make_backend: Callable[..., ConsensusBackend],
        namespace: str,
        workdir: Path,
        *,
        name: str,
        ttl: float,
    ) -> None:
        self.harness = harness
        self.make_backend = make_backend
        self.namespace = namespace
        self.workdir = workdir
        self.name = name
        self.ttl = ttl
        self.process: ServerProcess | None = None
        self.backend: ConsensusBackend | None = None

    def start(self, timeout: float = 60.0) -> int:
        """Become leader; returns the fencing token."""
        if not self.harness.out_of_process:
            self.backend = self.make_backend(self.name, ttl=self.ttl)
            lease = eventually(self.backend.campaign, timeout, f"{self.name} wins the campaign")
            self.backend.publish_member(Member(name=self.name, role=NodeRole.ACTIVE))
            return lease.token
        argv = [
            sys.executable,
            "-m",
            "hacore.testing.holder",
            "--backend",
            self.harness.backend_name,
            "--settings",
            json.dumps(self.harness.settings()),
            "--node",
            self.name,
            "--ttl",
            str(self.ttl),
            "--namespace",
            self.namespace,
        ]
        self.process = ServerProcess(self.name, argv, self.workdir / f"{self.name}.log").start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            token = self._token_from_log()
            if token is not None:
                return token
            if not self.process.alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"holder process did not win:\n{self.process.log_tail()}")

    def _token_from_log(self) -> int | None:
        assert self.process is not None
        try:
            lines = self.process.log_path.read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            if line.startswith("{"):
                token: int = json.loads(line)["token"]
                return token
        return None

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
        elif self.backend is not None:
            crash = getattr(self.backend, "crash", None)
            if crash is not None:
                crash()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
