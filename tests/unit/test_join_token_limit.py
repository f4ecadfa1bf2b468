"""Failed join tokens are rate-limited per client address before the store is read (issue 10,
point 5 follow-up), on a real :class:`ApiServer` on loopback; the agent behind it counts the
checks it was asked for. The same proof against a real agent and store is
tests/integration/test_security_roles.py::test_failed_join_tokens_are_limited_per_address.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from hacore.agent.snapshot import NodeSnapshot
from hacore.agent.vocabulary import NodeState
from hacore.api.auth import JOIN_TOKEN_USER, hash_password
from hacore.api.errors import AuthenticationError, NotActiveError
from hacore.api.facade import AgentFacade
from hacore.api.server import ApiServer
from hacore.config.node import ApiAuth, ApiSettings

ADMIN = ("admin", "a-pw")
GOOD = "the-one-good-token"
WRONG = "not-a-token-0123456789"


class Facade(AgentFacade):
    """Checks tokens as the active does (one store read each, counted here)."""

    def __init__(self) -> None:
        self.checked: list[str] = []
        self.active = True

    def snapshot(self) -> NodeSnapshot:
        return NodeSnapshot(node_name="n1", version="0", state=NodeState.ACTIVE, is_active=True)

    def cluster(self) -> dict[str, Any]:
        return {}

    def start_cluster(self, options: dict[str, Any]) -> dict[str, Any]:
        return {}

    def join_ticket(self, request: dict[str, Any]) -> dict[str, Any]:
        if not self.active:
            raise NotActiveError("n1 is not the active node")
        token = str(request.get("join_token"))
        self.checked.append(token)
        if token != GOOD:
            raise AuthenticationError("the join token is unknown, expired, used, ...")
        return {"ticket": True}

    def remove_node(self, name: str) -> dict[str, Any]:
        return {}

    def switchover(self, to: str | None) -> dict[str, Any]:
        return {}


@pytest.fixture()
def served() -> Iterator[tuple[Facade, str]]:
    facade = Facade()
    settings = ApiSettings(auth=ApiAuth(ADMIN[0], hash_password(ADMIN[1], 1000)))
    with ApiServer(facade, settings) as server:
        yield facade, server.url


def _ask(url: str, token: str) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=10, trust_env=False) as client:
        return client.post(
            "/cluster/join",
            json={"action": "ticket", "name": "n9", "host": "127.0.0.1"},
            auth=(JOIN_TOKEN_USER, token),
        )


def test_a_client_that_keeps_failing_is_refused_before_the_check(
    served: tuple[Facade, str], caplog: pytest.LogCaptureFixture
) -> None:
    facade, url = served
    caplog.set_level(logging.WARNING, logger="hacore")
    codes = [_ask(url, f"{WRONG}-{i}").status_code for i in range(5)]
    assert codes == [401] * 5
    assert len(facade.checked) == 5
    refused = _ask(url, f"{WRONG}-x")
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    # refused before the agent was asked, and so is the right token now, from this address
    assert _ask(url, GOOD).status_code == 429
    assert len(facade.checked) == 5
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "join token from 127.0.0.1 for node 'n9' refused" in logged
    assert WRONG not in logged and GOOD not in logged


def test_a_good_token_and_other_refusals_spend_nothing(served: tuple[Facade, str]) -> None:
    facade, url = served
    for _ in range(8):
        assert _ask(url, GOOD).status_code == 200
    facade.active = False
    for _ in range(8):
        assert _ask(url, WRONG).status_code == 503
    facade.active = True
    assert _ask(url, GOOD).status_code == 200
