"""The probes' answers encoded once per snapshot (hacore/api/probe_routes.py): the cache must
never outlive its snapshot, the clock-driven parts (``loop_age``, ``/liveness``) must still
follow the clock, and the transport's short reads must still see pipelined requests and a
client's half-close.

A real :class:`~hacore.api.server.ApiServer` on loopback, in front of a facade whose snapshot
the test replaces, as the agent's loop does.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import attrs
import httpx
import pytest

from hacore.agent.snapshot import NodeSnapshot
from hacore.agent.vocabulary import NodeState
from hacore.api.facade import AgentFacade, probe_json
from hacore.api.probe_routes import ProbeBody
from hacore.api.server import ApiServer
from hacore.backends.replication import ReplicationRole, ReplicationStatus
from hacore.config.node import ApiSettings


def _snapshot(**changes: object) -> NodeSnapshot:
    snap = NodeSnapshot(
        node_name="n1",
        version="0.1.0",
        state=NodeState.ACTIVE,
        is_active=True,
        healthy=True,
        replication=ReplicationStatus(
            running=True, role=ReplicationRole.PRIMARY, writable=True, position=5000, timeline=3
        ),
        lease_token=42,
        leader="n1",
        store_ok=True,
        last_loop_at=time.monotonic(),
        ttl=6.0,
    )
    return attrs.evolve(snap, **changes)


class _Facade(AgentFacade):
    """The loop's side: ``snap`` is replaced whole, as the loop publishes a new snapshot."""

    def __init__(self, snap: NodeSnapshot) -> None:
        self.snap = snap

    def snapshot(self) -> NodeSnapshot:
        return self.snap

    def cluster(self) -> dict[str, object]:
        return {}


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[_Facade, ApiServer, httpx.Client]]:
    facade = _Facade(_snapshot())
    server = ApiServer(facade, ApiSettings(), port=0).start()
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield facade, server, client
    server.shutdown()


@pytest.mark.parametrize(
    "snap",
    [
        _snapshot(),
        _snapshot(state=NodeState.STANDBY, is_active=False, leader="n2", lease_token=None),
        _snapshot(last_loop_at=None, replication=None, paused={"by": "admin", "at": 1.0}),
    ],
)
def test_encoded_body_is_the_probe_json(snap: NodeSnapshot) -> None:
    now = time.monotonic()
    full = probe_json(snap, now)
    body = ProbeBody.of(snap)
    assert json.loads(body.render(now, private=True)) == full
    public = {k: v for k, v in full.items() if k not in ("lease_token", "version")}
    assert body.render(now, private=False) == json.dumps(public).encode()


def test_answer_follows_each_new_snapshot(
    served: tuple[_Facade, ApiServer, httpx.Client],
) -> None:
    facade, _, client = served
    first = facade.snap = _snapshot()
    answer = client.get("/status")
    assert answer.status_code == 200
    assert answer.json()["leader"] == "n1" and answer.json()["position"] == 5000
    # the loop publishes another snapshot: demoted, another leader, another position
    repl = attrs.evolve(first.replication, role=ReplicationRole.STANDBY, position=7000)
    facade.snap = _snapshot(state=NodeState.STANDBY, is_active=False, leader="n2", replication=repl)
    answer = client.get("/status")
    assert answer.status_code == 503
    body = answer.json()
    assert (body["state"], body["leader"], body["position"]) == ("standby", "n2", 7000)
    facade.snap = first
    assert client.get("/status").json()["leader"] == "n1"


def test_loop_age_follows_the_clock_within_one_snapshot(
    served: tuple[_Facade, ApiServer, httpx.Client],
) -> None:
    facade, _, client = served
    facade.snap = _snapshot()
    before = client.get("/status").json()["loop_age"]
    time.sleep(0.3)
    after = client.get("/status").json()["loop_age"]
    assert after - before >= 0.25


def test_liveness_turns_503_as_the_same_snapshot_ages(
    served: tuple[_Facade, ApiServer, httpx.Client],
) -> None:
    facade, _, client = served
    # the loop's last iteration ended just within one ttl ago, and the loop is stuck there
    facade.snap = _snapshot(last_loop_at=time.monotonic() - 6.0 + 0.4)
    assert client.get("/liveness").status_code == 200
    time.sleep(0.6)
    answer = client.get("/liveness")
    assert answer.status_code == 503
    assert answer.json()["loop_age"] > 6.0


def _read_until_closed(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_pipelined_requests_and_a_half_close_are_all_answered(
    served: tuple[_Facade, ApiServer, httpx.Client],
) -> None:
    facade, server, _ = served
    facade.snap = _snapshot()
    request = b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request * 3 + b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n")
        # the client sends nothing more: the server answers everything, then closes
        sock.shutdown(socket.SHUT_WR)
        reply = _read_until_closed(sock)
    assert reply.count(b"HTTP/1.1 200 OK\r\n") == 4
    assert reply.count(b'"node": "n1"') == 3
