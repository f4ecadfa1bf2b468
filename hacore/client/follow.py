"""The CLI side of ``cluster start`` and ``cluster join``: the local agent, and its progress.

The local agent first takes the bootstrap token, then (once the operation is done) only the
cluster's credentials; :class:`LocalApi` tries them in that order and keeps the one that
works. :func:`follow_operation` polls the operation in ``GET /cluster`` and prints a line per
step and the clone's progress.
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
POLL = 0.5
#: print the clone's progress at most this often (seconds)
CLONE_EVERY = 2.0


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


class _Printer:
    """One line per step when it starts (if it says what it waits for) and when it is done,
    and the clone's bytes every few seconds."""

    def __init__(self, echo: Echo) -> None:
        self.echo = echo
        self.shown: dict[str, tuple[str, str]] = {}
        self.clone_at = 0.0
        self.clone_last: tuple[int, int] | None = None

    def show(self, op: dict[str, Any]) -> None:
        for step in op.get("steps", []):
            name, state, detail = step.get("name"), step.get("state"), step.get("detail") or ""
            if state not in ("running", "done") or self.shown.get(name) == (state, detail):
                continue
            self.shown[name] = (state, detail)
            if state == "running" and not detail:
                continue
            mark = "ok" if state == "done" else ".."
            self.echo(f"  [{mark}] {step.get('title', name)}{f': {detail}' if detail else ''}")
            if name == "clone" and state == "running":
                self.clone_at = 0.0
        clone = op.get("clone")
        if not isinstance(clone, dict) or not clone.get("total"):
            return
        if self.shown.get("clone", ("",))[0] == "done":
            return
        now = time.monotonic()
        current = (int(clone["done"]), int(clone["total"]))
        if current != self.clone_last and now - self.clone_at >= CLONE_EVERY:
            done, total = current
            self.echo(
                f"       copied {human_bytes(done)} of {human_bytes(total)} "
                f"({100 * done // max(total, 1)}%)"
            )
            self.clone_at, self.clone_last = now, current


def follow_operation(
    local: LocalApi,
    *,
    timeout: float,
    echo: Echo | None,
    on_poll: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Poll until the operation is done; its final record. Raises when it failed or timed
    out (the operation itself goes on in the agent). ``on_poll`` runs after each poll (the
    start keeps the CLI profile in step with the node's TLS with it)."""
    deadline = time.monotonic() + timeout
    printer = _Printer(echo) if echo is not None else None
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
                return op
            if op.get("state") == "failed":
                raise HacoreError(str(op.get("error") or "the operation failed"))
        if time.monotonic() > deadline:
            raise HacoreError(_still_running(op, data.get("reason") or problem, timeout))
        time.sleep(POLL)


def _still_running(op: object, reason: object, timeout: float) -> str:
    steps = op.get("steps", []) if isinstance(op, dict) else []
    where = next((s.get("title") for s in steps if s.get("state") == "running"), None)
    at = f" at step: {where}" if where else ""
    why = f" ({reason})" if reason else ""
    return (
        f"still not done after {timeout:g}s{at}{why}; it goes on in the agent: follow it with "
        "hacore cluster status"
    )
