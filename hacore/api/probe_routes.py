"""The load balancers' probes and ``/metrics``: answered from the loop's cached snapshot only,
so a probe never waits for the store, the database or the loop.

A load balancer asks several times a second, and a benchmark thousands of times, for a body
that changes only when the loop publishes a new snapshot: the body is encoded once per
snapshot (:class:`ProbeBody`), around the one field that follows the clock, ``loop_age``. The
status code is still decided on every request, from that snapshot and the time, so a stuck
loop's ``/liveness`` turns 503 on time.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

import attrs

from hacore.agent.snapshot import NodeSnapshot
from hacore.api.facade import AgentFacade, probe_json
from hacore.api.messages import JSON, Request, Response
from hacore.api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from hacore.api.metrics import SnapshotCollector, render
from hacore.api.routes import READ_METHODS, Route

#: probe path -> the snapshot condition it answers 200 for
PROBES: dict[str, Callable[[NodeSnapshot, float], bool]] = {
    "/status": lambda snap, now: snap.is_active,
    "/api/v3.1/status": lambda snap, now: snap.is_active,
    "/standby": lambda snap, now: snap.standby_streaming,
    "/health": lambda snap, now: snap.healthy,
    "/liveness": lambda snap, now: snap.alive(now),
    "/readiness": lambda snap, now: snap.ready,
}

#: probe answer fields shown only on an authenticated probe (``status_requires_auth: true``);
#: open probes check no credentials, so they hide them from everyone
_PROBE_PRIVATE = ("lease_token", "version")
#: the body's field that changes with the clock, not with the snapshot
_CLOCK_FIELD = "loop_age"


@attrs.frozen
class _Encoded:
    """A probe body as the bytes before and after its ``loop_age`` value."""

    before: bytes
    after: bytes

    @classmethod
    def of(cls, body: dict[str, object]) -> _Encoded:
        keys = list(body)
        cut = keys.index(_CLOCK_FIELD)
        head = json.dumps({k: body[k] for k in keys[:cut]})
        tail = json.dumps({k: body[k] for k in keys[cut + 1 :]})
        before = (head[:-1] + ", " if cut else "{") + json.dumps(_CLOCK_FIELD) + ": "
        after = (", " + tail[1:]) if len(tail) > 2 else "}"
        return cls(before.encode(), after.encode())

    def body(self, age: float | None) -> bytes:
        value = b"null" if age is None else repr(round(age, 3)).encode()
        return self.before + value + self.after


@attrs.frozen
class ProbeBody:
    """The probes' JSON body for one snapshot, encoded once: with the private fields (an
    authenticated probe) and without (an open one)."""

    snapshot: NodeSnapshot
    private: _Encoded
    public: _Encoded

    @classmethod
    def of(cls, snap: NodeSnapshot) -> ProbeBody:
        body = probe_json(snap, 0.0)
        public = {k: v for k, v in body.items() if k not in _PROBE_PRIVATE}
        return cls(snap, _Encoded.of(body), _Encoded.of(public))

    def render(self, now: float, *, private: bool) -> bytes:
        """The body at ``now``: what ``json.dumps(probe_json(snapshot, now))`` gives, with
        the private fields dropped unless ``private``."""
        encoded = self.private if private else self.public
        return encoded.body(self.snapshot.loop_age(now))


class ProbeRoutes:
    """``/status`` and the other probes, and ``/metrics``."""

    def __init__(self, facade: AgentFacade) -> None:
        self.facade = facade
        self._collector = SnapshotCollector(facade.snapshot)
        #: the latest snapshot's encoded body, replaced whole (one assignment) when the
        #: facade hands out another snapshot object
        self._body: ProbeBody | None = None

    def routes(self) -> list[Route]:
        probe = {method: self._probe for method in READ_METHODS}
        return [
            *(Route(re.compile(re.escape(path)), probe, probe=True) for path in PROBES),
            Route(re.compile("/metrics"), {"GET": self._metrics}, probe=True, metrics=True),
        ]

    def body_for(self, snap: NodeSnapshot) -> ProbeBody:
        """The encoded body of ``snap``, from the cache while ``snap`` is the snapshot it was
        encoded from (the same object: the loop publishes a new one for every change)."""
        cached = self._body
        if cached is None or cached.snapshot is not snap:
            cached = self._body = ProbeBody.of(snap)
        return cached

    def _probe(self, req: Request, params: dict[str, str]) -> Response:
        path = req.path.rstrip("/")
        now = time.monotonic()
        snap = self.facade.snapshot()
        status = 200 if PROBES[path](snap, now) else 503
        if req.method != "GET":
            return Response(status, content_type="")
        # not for anyone on the network without credentials: the fencing token, the version
        body = self.body_for(snap).render(now, private=req.role is not None)
        return Response(status, body, JSON)

    def _metrics(self, req: Request, params: dict[str, str]) -> Response:
        return Response(200, render(self._collector), METRICS_CONTENT_TYPE)
