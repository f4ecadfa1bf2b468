"""The read-only views of the REST API: the cluster, its nodes, a node's explanation, the
history of actives, the salvage archives and the cluster's CA certificate."""

from __future__ import annotations

import re
from urllib.parse import unquote

from hacore.agent.snapshot import member_json
from hacore.api.errors import NotFoundError
from hacore.api.facade import AgentFacade
from hacore.api.messages import Request, Response, json_response
from hacore.api.routes import Route


class ViewRoutes:
    """``GET /cluster``, ``/cluster/ca``, ``/nodes``, ``/nodes/<name>``,
    ``/nodes/<name>/explain``, ``/history``, ``/salvage`` and ``/salvage/<id>``."""

    def __init__(self, facade: AgentFacade) -> None:
        self.facade = facade

    def routes(self) -> list[Route]:
        return [
            Route(re.compile("/cluster"), {"GET": self._cluster}),
            Route(re.compile("/cluster/ca"), {"GET": self._cluster_ca}, public=True),
            Route(re.compile("/nodes"), {"GET": self._nodes}),
            Route(re.compile("/nodes/(?P<name>[^/]+)/explain"), {"GET": self._explain}),
            Route(re.compile("/history"), {"GET": self._history}),
            Route(re.compile("/salvage"), {"GET": self._salvage_list}),
            Route(re.compile("/salvage/(?P<ident>[^/]+)"), {"GET": self._salvage_show}),
        ]

    def _cluster(self, req: Request, params: dict[str, str]) -> Response:
        return json_response(200, self.facade.cluster())

    def _cluster_ca(self, req: Request, params: dict[str, str]) -> Response:
        found = self.facade.cluster_ca()
        if found is None:
            raise NotFoundError(f"{self.facade.snapshot().node_name} has no cluster CA")
        return json_response(200, found)

    def _nodes(self, req: Request, params: dict[str, str]) -> Response:
        snap = self.facade.snapshot()
        nodes = [member_json(member, snap) for member in snap.members]
        return json_response(200, {"leader": snap.leader, "nodes": nodes})

    def node(self, req: Request, params: dict[str, str]) -> Response:
        """``GET /nodes/<name>`` (its route also takes the DELETE that removes the node)."""
        name = unquote(params["name"])
        snap = self.facade.snapshot()
        member = snap.member(name)
        if member is None:
            raise NotFoundError(f'no node named "{name}" in this cluster')
        return json_response(200, member_json(member, snap))

    def _explain(self, req: Request, params: dict[str, str]) -> Response:
        return json_response(200, self.facade.explain(unquote(params["name"])))

    def _history(self, req: Request, params: dict[str, str]) -> Response:
        return json_response(200, self.facade.history())

    def _salvage_list(self, req: Request, params: dict[str, str]) -> Response:
        return json_response(200, self.facade.salvage_list())

    def _salvage_show(self, req: Request, params: dict[str, str]) -> Response:
        return json_response(200, self.facade.salvage_show(unquote(params["ident"])))
