"""The CLI side of ``cluster start`` and ``cluster join``: the local agent, and its progress.

The local agent first takes the bootstrap token, then (once the operation is done) only the
cluster's credentials; :class:`LocalApi` tries them in that order and keeps the one that
works. :func:`follow_operation` polls the operation in ``GET /cluster`` and prints a line per
step and the clone's progress (bytes, rate, time left), or hands each change to ``events``
(``--json``: one JSON object per line on stderr).

The poll is short (a tenth of a second, to the local agent) so that a step's line shows
when the step ends, not up to half a second later, and the end of the operation is seen at
once; except during a copy with seconds left: its progress changes once a second, and each
poll costs the agent and its store (two round trips) CPU that a copy on a small machine
needs, so the CLI then looks twice a second, and quickly again as the copy nears its end.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from hacore import pki
from hacore.api.client import ApiClient, Verify
from hacore.api.errors import ApiUnreachableError, AuthenticationError, UnavailableError
from hacore.client.units import human_bytes
from hacore.errors import HacoreError

T = TypeVar("T")
Echo = Callable[[str], None]
Events = Callable[[dict[str, Any]], None]
POLL = 0.1
#: seconds between two polls while a copy has seconds left
COPY_POLL = 0.5
#: print the clone's progress this often (seconds) while it runs
CLONE_EVERY = 1.0


class LocalApi:
    """This node's agent API, with the credentials to try in order.

    Plain HTTP while the node has no cluster CA (``ca_file``, in its data directory), HTTPS
    verified against it while it has one. A start or join creates the file while the CLI
    polls, a join that is rolled back removes it; the agent serves both until the operation
    is over.
    """

    def __init__(
        self,
        url: str,
        candidates: list[tuple[str, str]],
        timeout: float,
        ca_file: Path | None = None,
    ) -> None:
        self.plain_url = url
        self._candidates = candidates
        self._timeout = timeout
        self._index = 0
        self._ca_file = ca_file
        self._context: ssl.SSLContext | None = None

    @property
    def url(self) -> str:
        return self._target()[0]

    def _target(self) -> tuple[str, Verify]:
        if self._ca_file is None or not self._ca_file.exists():
            self._context = None  # none yet, or a failed join removed it
        elif self._context is None:
            self._context = pki.ssl_client_context(pki.load_ca_certificate(self._ca_file))
        if self._context is None:
            return self.plain_url, False
        return f"https://{urlsplit(self.plain_url).netloc}", self._context

    def member_now(self) -> None:
        """The operation is done: the agent has dropped the bootstrap token (the first
        candidate), so try the cluster's credentials first; a wrong login costs the agent a
        password hash and the caller a round trip."""
        if len(self._candidates) > 1 and self._index == 0:
            self._index = 1

    def call(self, request: Callable[[ApiClient], T], timeout: float | None = None) -> T:
        last: AuthenticationError | None = None
        url, verify = self._target()
        for offset in range(len(self._candidates)):
            index = (self._index + offset) % len(self._candidates)
            with ApiClient(
                url,
                self._candidates[index],
                self._timeout if timeout is None else timeout,
                verify=verify,
            ) as client:
                try:
                    result = request(client)
                except AuthenticationError as err:
                    last = err
                    continue
            self._index = index
            return result
        assert last is not None
        raise last


def clone_line(clone: dict[str, Any]) -> str:
    """``copied 310.2 MiB of 1.0 GiB (30%), 95.1 MiB/s, about 7 s left``."""
    done, total = int(clone["done"]), int(clone["total"])
    line = f"copied {human_bytes(done)} of {human_bytes(total)} ({100 * done // max(total, 1)}%)"
    rate, left = clone.get("rate"), clone.get("eta")
    if rate:
        line += f", {human_bytes(rate)}/s"
    if left is not None and done < total:
        line += f", about {left:.0f} s left"
    return line


class _Printer:
    """One line per step when it starts (if it says what it waits for) and when it is done,
    and the clone's bytes, rate and time left every second while it runs; or, for
    ``--json``, one event per change."""

    def __init__(self, echo: Echo | None, events: Events | None = None) -> None:
        self.echo = echo
        self.events = events
        self.shown: dict[str, tuple[str, str]] = {}
        self.clone_at = 0.0
        self.clone_last: tuple[int, int] | None = None

    def _say(self, line: str, event: dict[str, Any]) -> None:
        if self.echo is not None:
            self.echo(line)
        if self.events is not None:
            self.events(event)

    def show(self, op: dict[str, Any]) -> None:
        for step in op.get("steps", []):
            name, state, detail = step.get("name"), step.get("state"), step.get("detail") or ""
            if state not in ("running", "done") or self.shown.get(name) == (state, detail):
                continue
            self.shown[name] = (state, detail)
            if state == "running" and not detail and self.events is None:
                continue
            mark = "ok" if state == "done" else ".."
            self._say(
                f"  [{mark}] {step.get('title', name)}{f': {detail}' if detail else ''}",
                {"event": "step", "at": op.get("elapsed"), **step},
            )
            if name == "clone" and state == "running":
                self.clone_at = 0.0
        clone = op.get("clone")
        if not isinstance(clone, dict) or not clone.get("total"):
            return
        if self.shown.get("clone", ("",))[0] == "done":
            return
        now = time.monotonic()
        current = (int(clone["done"]), int(clone["total"]))
        if now - self.clone_at >= CLONE_EVERY or (
            self.events is not None and current != self.clone_last
        ):
            self._say(
                f"       {clone_line(clone)}",
                {"event": "clone", "at": op.get("elapsed"), **clone},
            )
            self.clone_at, self.clone_last = now, current


def follow_operation(
    local: LocalApi,
    *,
    timeout: float,
    echo: Echo | None,
    on_poll: Callable[[], None] | None = None,
    events: Events | None = None,
) -> dict[str, Any]:
    """Poll until the operation is done; its final record. Raises when it failed or timed
    out (the operation itself goes on in the agent). ``on_poll`` runs after each poll (the
    start keeps the CLI profile in step with the node's TLS with it). ``events`` gets each
    step change and clone report as a dict (the ``--json`` progress)."""
    return follow_view(local, timeout=timeout, echo=echo, on_poll=on_poll, events=events)[0]


def follow_view(
    local: LocalApi,
    *,
    timeout: float,
    echo: Echo | None,
    on_poll: Callable[[], None] | None = None,
    events: Events | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`follow_operation`, with the cluster view the final record came in: the
    caller needs no other request for the members (on a busy node that request costs as
    much as the last steps of the join)."""
    deadline = time.monotonic() + timeout
    printer = _Printer(echo, events) if echo is not None or events is not None else None
    data: dict[str, Any] = {}
    problem = ""
    while True:
        try:
            data, problem = local.call(lambda c: c.cluster()), ""
        except (ApiUnreachableError, UnavailableError) as err:
            problem = str(err)
        if on_poll is not None:
            on_poll()
        op = data.get("operation")
        if isinstance(op, dict):
            if printer is not None:
                printer.show(op)
            if op.get("state") == "done":
                return op, data
            if op.get("state") == "failed":
                raise HacoreError(str(op.get("error") or "the operation failed"))
        if time.monotonic() > deadline:
            raise HacoreError(_still_running(op, data.get("reason") or problem, timeout))
        time.sleep(pause(op))


def pause(op: object) -> float:
    """Seconds until the next poll: :data:`COPY_POLL` while the copy has more than twice that
    left, half its time left as it nears the end, :data:`POLL` otherwise."""
    clone = op.get("clone") if isinstance(op, dict) else None
    steps = op.get("steps", []) if isinstance(op, dict) else []
    copying = any(
        isinstance(s, dict) and s.get("name") == "clone" and s.get("state") == "running"
        for s in steps
    )
    left = clone.get("eta") if isinstance(clone, dict) and copying else None
    if not isinstance(left, (int, float)):
        return POLL
    return max(POLL, min(COPY_POLL, left / 2))


def _still_running(op: object, reason: object, timeout: float) -> str:
    steps = op.get("steps", []) if isinstance(op, dict) else []
    where = next((s.get("title") for s in steps if s.get("state") == "running"), None)
    at = f" at step: {where}" if where else ""
    why = f" ({reason})" if reason else ""
    return (
        f"still not done after {timeout:g}s{at}{why}; it goes on in the agent: follow it with "
        "hacore cluster status"
    )
