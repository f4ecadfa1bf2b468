"""The REST API's operations: what changes the cluster (start, join tickets, teardown, node
removal, switchover, restart, re-clone, failover, pause and resume, the cluster-wide
settings) and the failsafe question one active asks the other members, signed with the
cluster's key."""

from __future__ import annotations

import re
from urllib.parse import unquote

from hacore.agent.failsafe import PATH as FAILSAFE_PATH
from hacore.agent.failsafe import SIGNATURE_HEADER as FAILSAFE_SIGNATURE
from hacore.api import admin_secret
from hacore.api.auth import parse_basic
from hacore.api.errors import BadRequestError, ForbiddenError
from hacore.api.facade import AgentFacade
from hacore.api.messages import JSON, Request, Response, json_object, json_response
from hacore.api.routes import Route


class OperationRoutes:
    """The POST routes, and ``DELETE /nodes/<name>`` (:meth:`remove`)."""

    def __init__(self, facade: AgentFacade) -> None:
        self.facade = facade

    def routes(self) -> list[Route]:
        return [
            Route(re.compile("/cluster/start"), {"POST": self._start}),
            Route(re.compile("/cluster/join"), {"POST": self._join}, join=True),
            Route(re.compile("/cluster/teardown"), {"POST": self._teardown}),
            Route(re.compile("/cluster/admin-password"), {"POST": self._admin_password}),
            Route(re.compile("/nodes/(?P<name>[^/]+)/restart"), {"POST": self._restart}),
            Route(re.compile("/nodes/(?P<name>[^/]+)/reinit"), {"POST": self._reinit}),
            Route(re.compile("/failover"), {"POST": self._manual_failover}),
            Route(re.compile("/pause"), {"POST": self._pause}),
            Route(re.compile("/resume"), {"POST": self._resume}),
            Route(re.compile("/switchover"), {"POST": self._switchover}),
            Route(
                re.compile("/cluster/config"),
                {"GET": self._config_show, "PUT": self._config_change},
            ),
            # failsafe questions are signed with the cluster's key, checked by the agent
            Route(re.compile(FAILSAFE_PATH), {"POST": self._failsafe}, public=True),
        ]

    def _start(self, req: Request, params: dict[str, str]) -> Response:
        return json_response(200, self.facade.start_cluster(json_object(req)))

    def _join(self, req: Request, params: dict[str, str]) -> Response:
        body = json_object(req)
        body.pop("join_token", None)
        body.pop("join_client", None)
        if req.join_token is not None:
            action = body.get("action", "ticket")
            if action not in ("ticket", "cancel"):
                raise ForbiddenError(f'a join token may ask for a ticket or cancel, not "{action}"')
            body["join_token"], body["join_client"] = req.join_token, req.client
        # a ticket, a token or a removal signs with the CA key, sealed under this password
        with admin_secret.presented(admin_secret.from_request(req)):
            return json_response(200, self.facade.join_ticket(body))

    def _admin_password(self, req: Request, params: dict[str, str]) -> Response:
        """The current password is the one this request authenticated with: it unseals the
        CA key to reseal it under the new one."""
        with admin_secret.presented(admin_secret.from_request(req)):
            return json_response(200, self.facade.change_admin_password(json_object(req)))

    def _teardown(self, req: Request, params: dict[str, str]) -> Response:
        return json_response(200, self.facade.teardown())

    def remove(self, req: Request, params: dict[str, str]) -> Response:
        """``DELETE /nodes/<name>`` (its route also takes the GET that shows the node)."""
        with admin_secret.presented(admin_secret.from_request(req)):
            return json_response(200, self.facade.remove_node(unquote(params["name"])))

    def _switchover(self, req: Request, params: dict[str, str]) -> Response:
        body = json_object(req)
        unknown = sorted(set(body) - {"to"})
        if unknown:
            raise BadRequestError(
                f'unknown field "{unknown[0]}" in the switchover request (only "to")'
            )
        to = body.get("to")
        if to is not None and (not isinstance(to, str) or not to):
            raise BadRequestError('"to" must be a node name or null')
        return json_response(200, self.facade.switchover(to))

    def _restart(self, req: Request, params: dict[str, str]) -> Response:
        return json_response(
            200, self.facade.restart_node(unquote(params["name"]), json_object(req))
        )

    def _reinit(self, req: Request, params: dict[str, str]) -> Response:
        return json_response(200, self.facade.reinit_node(unquote(params["name"])))

    def _manual_failover(self, req: Request, params: dict[str, str]) -> Response:
        return json_response(200, self.facade.failover(json_object(req)))

    def _pause(self, req: Request, params: dict[str, str]) -> Response:
        return json_response(200, self.facade.pause(json_object(req), _asked_by(req)))

    def _config_show(self, req: Request, params: dict[str, str]) -> Response:
        return json_response(200, self.facade.cluster_config())

    def _config_change(self, req: Request, params: dict[str, str]) -> Response:
        return json_response(
            200, self.facade.change_cluster_config(json_object(req), _asked_by(req))
        )

    def _resume(self, req: Request, params: dict[str, str]) -> Response:
        return json_response(200, self.facade.resume(json_object(req)))

    def _failsafe(self, req: Request, params: dict[str, str]) -> Response:
        body, signature = self.facade.failsafe(req.body, req.headers.get(FAILSAFE_SIGNATURE, ""))
        return Response(200, body, JSON, ((FAILSAFE_SIGNATURE, signature),))


def _asked_by(req: Request) -> str:
    """``user@client``: who a change is recorded as coming from (the pause, the settings)."""
    credentials = parse_basic(req.headers.get("authorization"))
    user = credentials[0] if credentials is not None else "?"
    return f"{user}@{req.client or '?'}"
