"""What a route of the REST API is: a path pattern, a handler per method, and who may call it.

The handlers live by group (:mod:`hacore.api.probe_routes`, :mod:`hacore.api.view_routes`,
:mod:`hacore.api.operation_routes`); :class:`~hacore.api.app.ApiApp` matches a request to a route,
checks its credentials against :meth:`Route.required` and calls the handler.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import attrs

from hacore.api.auth import Role
from hacore.api.messages import Request, Response

Handler = Callable[[Request, dict[str, str]], Response]

#: the methods that change nothing (and that the probes answer)
READ_METHODS = ("GET", "HEAD", "OPTIONS")


@attrs.frozen
class Route:
    pattern: re.Pattern[str]
    methods: Mapping[str, Handler]
    #: the probe role is enough; the probes need credentials only when
    #: ``status_requires_auth``
    probe: bool = False
    #: ``/metrics``: needs credentials (the probe role) unless ``metrics_without_credentials``
    metrics: bool = False
    #: never needs credentials (public material: the CA certificate)
    public: bool = False
    #: a join token may stand in for credentials (the ticket, and its cancellation)
    join: bool = False

    def required(self, method: str) -> Role:
        """The least role for ``method``: probes need the probe role, reading the read-only
        one, anything that changes something (or hands out secrets) the admin."""
        if self.probe:
            return Role.PROBE
        return Role.READ if method in READ_METHODS else Role.ADMIN
