"""The abilities only the node service has (explain, history, salvage, repair, pause, teardown,
failsafe, the CA, the cluster-wide settings): a facade that lacks one answers 404 naming the
node, never a 500."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hacore.agent.snapshot import NodeSnapshot
from hacore.agent.vocabulary import NodeState
from hacore.api.app import ApiApp
from hacore.api.auth import basic_header, hash_password
from hacore.api.facade import AgentFacade
from hacore.api.messages import JSON, Request
from hacore.config.node import ApiAuth, ApiSettings

USER, PASSWORD = "admin", "secret"
SETTINGS = ApiSettings(auth=ApiAuth(USER, hash_password(PASSWORD, iterations=1000)))


class CoreOnly(AgentFacade):
    """A stand-in for the agent with the core abilities only (as a benchmark's is)."""

    def snapshot(self) -> NodeSnapshot:
        return NodeSnapshot(node_name="n1", version="1", state=NodeState.ACTIVE, is_active=True)

    def cluster(self) -> dict[str, Any]:
        return {}

    def start_cluster(self, options: dict[str, Any]) -> dict[str, Any]:
        return {}

    def join_ticket(self, request: dict[str, Any]) -> dict[str, Any]:
        return {}

    def remove_node(self, name: str) -> dict[str, Any]:
        return {}

    def switchover(self, to: str | None) -> dict[str, Any]:
        return {}


@pytest.mark.parametrize(
    ("method", "path", "message"),
    [
        ("GET", "/cluster/ca", "n1 has no cluster CA"),
        ("GET", "/nodes/n1/explain", "n1 explains nothing"),
        ("GET", "/history", "n1 keeps no history"),
        ("GET", "/salvage", "n1 keeps no salvage archives"),
        ("GET", "/salvage/x", "n1 keeps no salvage archives"),
        ("POST", "/cluster/teardown", "n1 takes no teardown"),
        ("POST", "/nodes/n1/restart", "n1 restarts nothing"),
        ("POST", "/nodes/n1/reinit", "n1 re-clones nothing"),
        ("POST", "/failover", "n1 takes no failover"),
        ("POST", "/pause", "n1 takes no pause"),
        ("POST", "/resume", "n1 takes no resume"),
        ("POST", "/failsafe", "n1 takes no failsafe questions"),
        ("GET", "/cluster/config", "n1 keeps no cluster-wide settings"),
        ("PUT", "/cluster/config", "n1 takes no settings change"),
    ],
)
def test_a_missing_ability_answers_404_naming_the_node(
    method: str, path: str, message: str
) -> None:
    app = ApiApp(CoreOnly(), SETTINGS)
    headers = {"authorization": basic_header(USER, PASSWORD), "content-type": JSON}
    resp = app.respond(Request(method, path, headers, b"{}", client="127.0.0.1"))
    assert (resp.status, json.loads(resp.body)) == (404, {"error": message})
