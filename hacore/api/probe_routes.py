"""The load balancers' probes and ``/metrics``: answered from the loop's cached snapshot only,
so a probe never waits for the store, the database or the loop."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from hacore.agent.snapshot import NodeSnapshot
from hacore.api.facade import AgentFacade, probe_json
from hacore.api.messages import Request, Response, json_response
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


class ProbeRoutes:
    """``/status`` and the other probes, and ``/metrics``."""

    def __init__(self, facade: AgentFacade) -> None:
        self.facade = facade
        self._collector = SnapshotCollector(facade.snapshot)

    def routes(self) -> list[Route]:
        probe = {method: self._probe for method in READ_METHODS}
        return [
            *(Route(re.compile(re.escape(path)), probe, probe=True) for path in PROBES),
            Route(re.compile("/metrics"), {"GET": self._metrics}, probe=True, metrics=True),
        ]

    def _probe(self, req: Request, params: dict[str, str]) -> Response:
        path = req.path.rstrip("/")
        now = time.monotonic()
        snap = self.facade.snapshot()
        status = 200 if PROBES[path](snap, now) else 503
        if req.method != "GET":
            return Response(status, content_type="")
        body = probe_json(snap, now)
        if req.role is None:
            # not for anyone on the network: the fencing token and the exact version
            for secret in _PROBE_PRIVATE:
                body.pop(secret, None)
        return json_response(status, body)

    def _metrics(self, req: Request, params: dict[str, str]) -> Response:
        return Response(200, render(self._collector), METRICS_CONTENT_TYPE)
