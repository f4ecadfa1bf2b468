"""The REST API's HTTP layer: the real server on loopback ports, real HTTP requests.

The agent behind it is a small in-test facade with a settable snapshot: this tests routing,
authentication, error mapping, keep-alive and metrics, not the agent's decisions.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import re
import shutil
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from hacore.agent.snapshot import NodeSnapshot
from hacore.agent.vocabulary import NodeState
from hacore.api.auth import basic_header, hash_password
from hacore.api.client import ApiClient, find_active
from hacore.api.errors import (
    ApiError,
    ApiUnreachableError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotActiveError,
    NotFoundError,
    UnavailableError,
)
from hacore.api.facade import AgentFacade
from hacore.api.server import ApiServer
from hacore.backends.health import CheckResult
from hacore.backends.records import Member, NodeRole
from hacore.backends.replication import ReplicationRole, ReplicationStatus, StandbyState
from hacore.config.node import ApiAuth, ApiSettings
from hacore.errors import ReplicationError, StoreUnavailableError
from hacore.testing.procs import ServerProcess, free_port, wait_for

USER, PASSWORD = "admin", "the-api-password"
AUTH = (USER, PASSWORD)
SETTINGS = ApiSettings(auth=ApiAuth(USER, hash_password(PASSWORD, iterations=1000)))
REALM = 'Basic realm="hacore"'
JSON_TYPE = {"Content-Type": "application/json"}
DOCS = Path(__file__).resolve().parents[2] / "docs"


def members(active: str = "n1") -> tuple[Member, ...]:
    def member(name: str, position: int) -> Member:
        role = NodeRole.ACTIVE if name == active else NodeRole.STANDBY
        return Member(
            name=name,
            api_url=f"http://{name}:8008",
            host=name,
            role=role,
            healthy=True,
            position=position,
            timeline=3,
            version="0.1.0",
            checks={"db": {"ok": True, "detail": ""}},
        )

    positions = {"n1": 5000, "n2": 4000, "n3": 4990}
    if active != "n1":
        positions[active] = 6000
    return tuple(member(name, pos) for name, pos in positions.items())


def active_snapshot(name: str = "n1") -> NodeSnapshot:
    return NodeSnapshot(
        node_name=name,
        version="0.1.0",
        state=NodeState.ACTIVE,
        is_active=True,
        healthy=True,
        checks={"db": CheckResult(True), "disk": CheckResult(True, "41% used")},
        replication=ReplicationStatus(
            running=True,
            role=ReplicationRole.PRIMARY,
            writable=True,
            position=5000,
            timeline=3,
            standbys=(
                StandbyState("n2", "streaming", 1000, sync=True, sync_state="sync"),
                StandbyState("n3", "streaming", 10),
            ),
        ),
        lease_token=42,
        leader=name,
        members=members(name),
        store_ok=True,
        last_loop_at=time.monotonic(),
        reason="holds the lease",
    )


def standby_snapshot(name: str = "n2", leader: str = "n1") -> NodeSnapshot:
    return NodeSnapshot(
        node_name=name,
        version="0.1.0",
        state=NodeState.STANDBY,
        standby_streaming=True,
        healthy=True,
        checks={"db": CheckResult(True)},
        replication=ReplicationStatus(
            running=True, role=ReplicationRole.STANDBY, position=4000, timeline=3, following=leader
        ),
        leader=leader,
        members=members(leader),
        store_ok=True,
        last_loop_at=time.monotonic(),
    )


class FakeAgent(AgentFacade):
    """A thread-safe stand-in for the agent runtime with a settable snapshot."""

    def __init__(self, snap: NodeSnapshot) -> None:
        self.initial = snap
        self.snap = snap
        self.store_down = False
        self.fail_with: BaseException | None = None
        self.lock = threading.Lock()
        self.started: list[dict[str, Any]] = []
        self.switchovers: list[str | None] = []

    def reset(self) -> None:
        self.snap = attrs.evolve(self.initial, last_loop_at=time.monotonic())
        self.store_down = False
        self.fail_with = None
        self.started.clear()
        self.switchovers.clear()

    def snapshot(self) -> NodeSnapshot:
        return self.snap

    def cluster(self) -> dict[str, Any]:
        if self.store_down:
            raise StoreUnavailableError("the consensus store did not answer within 1 s")
        return {
            "name": "test",
            "leader": self.snap.leader,
            "nodes": [m.name for m in self.snap.members],
        }

    def start_cluster(self, options: dict[str, Any]) -> dict[str, Any]:
        if self.fail_with is not None:
            raise self.fail_with
        with self.lock:
            if self.started:
                raise ConflictError("this node already belongs to a cluster")
            self.started.append(options)
        return {"started": True, "options": options}

    def _require_active(self) -> NodeSnapshot:
        snap = self.snap
        if not snap.is_active:
            raise NotActiveError(f"{snap.node_name} is not the active node (ask {snap.leader})")
        return snap

    def join_ticket(self, request: dict[str, Any]) -> dict[str, Any]:
        snap = self._require_active()
        name = request.get("node_name")
        if not isinstance(name, str):
            raise BadRequestError("node_name is required")
        if snap.member(name) is not None:
            raise ConflictError(f'a node named "{name}" is already in the cluster')
        if request.get("version") != snap.version:
            raise ConflictError(
                f"{name} runs hacore {request.get('version')}, the cluster runs {snap.version}"
            )
        return {"ticket": name, "store": ["http://127.0.0.1:2379"]}

    def remove_node(self, name: str) -> dict[str, Any]:
        snap = self._require_active()
        if snap.member(name) is None:
            raise NotFoundError(f'no node named "{name}" in this cluster')
        if name == snap.node_name:
            raise ConflictError(f"{name} is the active node; switch over before removing it")
        return {"removed": name}

    def switchover(self, to: str | None) -> dict[str, Any]:
        snap = self._require_active()
        if to is not None and snap.member(to) is None:
            raise NotFoundError(f'no node named "{to}" in this cluster')
        self.switchovers.append(to)
        return {"from": snap.node_name, "to": to}


@attrs.define
class Node:
    agent: FakeAgent
    server: ApiServer
    #: one client per node, its connections kept alive across tests
    http: httpx.Client

    @property
    def url(self) -> str:
        return self.server.url

    def stop(self) -> None:
        self.http.close()
        self.server.shutdown()


def _start(snap: NodeSnapshot, settings: ApiSettings = SETTINGS, **kw: Any) -> Node:
    agent = FakeAgent(snap)
    server = ApiServer(agent, settings, port=0, **kw).start()
    # plain HTTP: no CA bundle to load
    return Node(agent, server, httpx.Client(base_url=server.url, timeout=10, verify=False))


@pytest.fixture(scope="module")
def nodes() -> Iterator[dict[str, Node]]:
    started = {
        # /status open, everything else authenticated (the default)
        "active": _start(active_snapshot()),
        "standby": _start(standby_snapshot()),
        # /status and the probes authenticated too
        "closed": _start(active_snapshot(), attrs.evolve(SETTINGS, status_requires_auth=True)),
        # /metrics for anyone (api.metrics_without_credentials)
        "open_metrics": _start(
            active_snapshot(), attrs.evolve(SETTINGS, metrics_without_credentials=True)
        ),
        # before cluster start: no credentials at all
        "bare": _start(active_snapshot(), ApiSettings()),
    }
    yield started
    for node in started.values():
        node.stop()


@pytest.fixture(autouse=True)
def _reset(nodes: dict[str, Node]) -> None:
    for node in nodes.values():
        node.agent.reset()


@pytest.fixture()
def active(nodes: dict[str, Node]) -> Node:
    return nodes["active"]


@pytest.fixture()
def standby(nodes: dict[str, Node]) -> Node:
    return nodes["standby"]


def get(node: Node, path: str, method: str = "GET", **kw: Any) -> httpx.Response:
    return node.http.request(method, path, **kw)


# ---- probes ----

PROBES = ["/status", "/api/v3.1/status", "/standby", "/health", "/liveness", "/readiness"]


@pytest.mark.parametrize(
    ("path", "on_active", "on_standby"),
    [
        ("/status", 200, 503),
        ("/api/v3.1/status", 200, 503),
        ("/standby", 503, 200),
        ("/health", 200, 200),
        ("/liveness", 200, 200),
        ("/readiness", 200, 200),
    ],
)
def test_probe_codes_active_vs_standby(
    active: Node, standby: Node, path: str, on_active: int, on_standby: int
) -> None:
    for node, code, name in ((active, on_active, "n1"), (standby, on_standby, "n2")):
        for method in ("GET", "HEAD", "OPTIONS"):
            resp = get(node, path, method)
            assert resp.status_code == code, (node.url, path, method)
            if method == "GET":
                body = resp.json()
                assert body["node"] == name
                assert body["active"] is (name == "n1")
                assert resp.headers["content-type"] == "application/json"
            else:
                assert resp.content == b""


def test_status_body_says_why(active: Node, standby: Node) -> None:
    body = get(active, "/status").json()
    assert body["state"] == "active"
    # without credentials: no fencing token, no version (issue 10, point 8)
    assert "lease_token" not in body and "version" not in body
    assert body["position"] == 5000 and body["timeline"] == 3
    assert 0 <= body["loop_age"] < 60
    body = get(standby, "/status").json()
    assert body == {**body, "state": "standby", "leader": "n1", "standby_streaming": True}


def test_status_follows_the_snapshot(active: Node) -> None:
    # lease held but database not writable yet: not active for a load balancer
    active.agent.snap = attrs.evolve(active.agent.snap, state=NodeState.PROMOTING, is_active=False)
    assert get(active, "/status").status_code == 503
    assert get(active, "/readiness").status_code == 503
    active.agent.snap = attrs.evolve(active.agent.snap, state=NodeState.ACTIVE, is_active=True)
    assert get(active, "/status").status_code == 200


def test_unhealthy_not_streaming_standby(standby: Node) -> None:
    standby.agent.snap = attrs.evolve(
        standby.agent.snap,
        healthy=False,
        standby_streaming=False,
        checks={"db": CheckResult(False, "connection refused")},
    )
    assert get(standby, "/health").status_code == 503
    assert get(standby, "/readiness").status_code == 503
    assert get(standby, "/standby").status_code == 503
    assert get(standby, "/liveness").status_code == 200


def test_liveness_fails_when_the_loop_is_stuck_or_never_ran(active: Node) -> None:
    snap = active.agent.snap
    active.agent.snap = attrs.evolve(snap, last_loop_at=time.monotonic() - snap.ttl - 1)
    assert get(active, "/liveness").status_code == 503
    active.agent.snap = attrs.evolve(snap, last_loop_at=None)
    assert get(active, "/liveness").status_code == 503
    assert get(active, "/liveness").json()["loop_age"] is None
    active.agent.snap = attrs.evolve(snap, last_loop_at=time.monotonic() - snap.ttl + 1)
    assert get(active, "/liveness").status_code == 200


# ---- authentication ----


@pytest.mark.parametrize("path", PROBES)
def test_probes_need_no_credentials_by_default(active: Node, path: str) -> None:
    assert get(active, path).status_code != 401


@pytest.mark.parametrize("path", [*PROBES, "/metrics"])
def test_status_requires_auth(nodes: dict[str, Node], path: str) -> None:
    closed = nodes["closed"]
    for method in ("GET", "HEAD", "OPTIONS") if path != "/metrics" else ("GET",):
        resp = get(closed, path, method)
        assert resp.status_code == 401, (path, method)
        assert resp.headers["www-authenticate"] == REALM
        assert get(closed, path, method, auth=(USER, "wrong")).status_code == 401
        assert get(closed, path, method, auth=AUTH).status_code in (200, 503)
    assert get(closed, "/status", auth=AUTH).status_code == 200


OPERATIONS = [
    ("GET", "/cluster", None),
    ("GET", "/nodes", None),
    ("GET", "/nodes/n2", None),
    ("POST", "/cluster/start", {"x": 1}),
    ("POST", "/cluster/join", {"node_name": "n9", "version": "0.1.0"}),
    ("DELETE", "/nodes/n2", None),
    ("POST", "/switchover", {"to": "n2"}),
]


@pytest.mark.parametrize(("method", "path", "body"), OPERATIONS)
def test_operations_require_credentials(
    active: Node, method: str, path: str, body: dict[str, Any] | None
) -> None:
    for auth in (None, (USER, "hunter2"), ("root", PASSWORD), (USER, PASSWORD + " ")):
        resp = get(active, path, method, json=body, auth=auth)
        assert resp.status_code == 401, (path, auth)
        assert resp.headers["www-authenticate"] == REALM
        assert "hunter2" not in resp.text and PASSWORD not in resp.text
    assert active.agent.started == [] and active.agent.switchovers == []
    assert get(active, path, method, json=body, auth=AUTH).status_code == 200


def test_401_messages(active: Node) -> None:
    assert get(active, "/cluster").json()["error"].startswith("authentication required")
    assert get(active, "/cluster", auth=(USER, "x")).json()["error"] == "wrong credentials"
    resp = get(active, "/cluster", headers={"Authorization": "Basic !!!"})
    assert resp.status_code == 401 and resp.json()["error"] == "wrong credentials"


def test_without_configured_credentials_everything_protected_is_refused(
    nodes: dict[str, Node],
) -> None:
    bare = nodes["bare"]
    assert get(bare, "/status").status_code == 200
    resp = get(bare, "/cluster", auth=AUTH)
    assert resp.status_code == 401
    assert "no API credentials" in resp.json()["error"]


def test_credentials_can_be_set_while_serving() -> None:
    node = _start(active_snapshot(), ApiSettings())
    try:
        assert get(node, "/cluster", auth=AUTH).status_code == 401
        node.server.set_settings(SETTINGS)
        assert get(node, "/cluster", auth=AUTH).status_code == 200
        assert get(node, "/cluster", auth=(USER, "x")).status_code == 401
    finally:
        node.stop()


# ---- the cluster view ----


def test_cluster_and_nodes(active: Node) -> None:
    assert get(active, "/cluster", auth=AUTH).json() == {
        "name": "test",
        "leader": "n1",
        "nodes": ["n1", "n2", "n3"],
    }
    body = get(active, "/nodes", auth=AUTH).json()
    assert body["leader"] == "n1"
    by_name = {node["name"]: node for node in body["nodes"]}
    assert list(by_name) == ["n1", "n2", "n3"]
    assert by_name["n1"]["active"] and by_name["n1"]["role"] == "active"
    assert not by_name["n2"]["active"] and by_name["n2"]["role"] == "standby"
    assert [by_name[n]["lag_bytes"] for n in ("n1", "n2", "n3")] == [0, 1000, 10]
    # the local node's checks come from the snapshot, with details
    assert by_name["n1"]["checks"] == {
        "db": {"ok": True, "detail": ""},
        "disk": {"ok": True, "detail": "41% used"},
    }
    assert by_name["n2"]["checks"] == {"db": {"ok": True, "detail": ""}}


def test_one_node(active: Node) -> None:
    body = get(active, "/nodes/n3", auth=AUTH).json()
    assert body["name"] == "n3" and body["position"] == 4990 and body["lag_bytes"] == 10
    resp = get(active, "/nodes/nope", auth=AUTH)
    assert resp.status_code == 404
    assert resp.json() == {"error": 'no node named "nope" in this cluster'}


def test_store_unavailable_is_503(active: Node) -> None:
    active.agent.store_down = True
    resp = get(active, "/cluster", auth=AUTH)
    assert resp.status_code == 503
    assert resp.json()["error"] == "the consensus store did not answer within 1 s"
    # probes never depend on the store
    assert get(active, "/status").status_code == 200


# ---- operations: bodies and error mapping ----


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "the request body is not valid JSON: Expecting property name"),
        (b"[1, 2]", "the request body must be a JSON object, not a list"),
        (b'"text"', "must be a JSON object, not a str"),
        (b"\xff\xfe", "not"),
    ],
)
@pytest.mark.parametrize("path", ["/cluster/start", "/cluster/join", "/switchover"])
def test_malformed_bodies_are_400(active: Node, path: str, body: bytes, fragment: str) -> None:
    resp = get(active, path, "POST", content=body, auth=AUTH, headers=JSON_TYPE)
    assert resp.status_code == 400
    assert fragment in resp.json()["error"]
    assert active.agent.started == [] and active.agent.switchovers == []


def test_switchover_body(active: Node) -> None:
    empty = get(active, "/switchover", "POST", auth=AUTH, headers=JSON_TYPE)
    assert empty.json() == {"from": "n1", "to": None}
    assert get(active, "/switchover", "POST", json={"to": None}, auth=AUTH).status_code == 200
    for body, fragment in (
        ({"to": 5}, '"to" must be'),
        ({"target": "n2"}, 'unknown field "target"'),
    ):
        resp = get(active, "/switchover", "POST", json=body, auth=AUTH)
        assert resp.status_code == 400 and fragment in resp.json()["error"]
    resp = get(active, "/switchover", "POST", json={"to": "n7"}, auth=AUTH)
    assert resp.status_code == 404
    assert active.agent.switchovers == [None, None]


def test_error_mapping(active: Node, standby: Node) -> None:
    def call(node: Node, method: str, path: str, body: Any = None) -> tuple[int, str]:
        resp = get(node, path, method, json=body, auth=AUTH)
        return resp.status_code, resp.json().get("error", "")

    assert call(active, "POST", "/cluster/join", {"node_name": "n2", "version": "0.1.0"}) == (
        409,
        'a node named "n2" is already in the cluster',
    )
    assert call(active, "POST", "/cluster/join", {"node_name": "n4", "version": "9"}) == (
        409,
        "n4 runs hacore 9, the cluster runs 0.1.0",
    )
    assert call(active, "POST", "/cluster/join", {}) == (400, "node_name is required")
    assert call(active, "DELETE", "/nodes/n1") == (
        409,
        "n1 is the active node; switch over before removing it",
    )
    assert call(active, "DELETE", "/nodes/n8") == (404, 'no node named "n8" in this cluster')
    assert call(active, "DELETE", "/nodes/n3") == (200, "")
    assert call(standby, "DELETE", "/nodes/n3") == (503, "n2 is not the active node (ask n1)")
    assert call(standby, "POST", "/cluster/join", {"node_name": "n4"})[0] == 503
    assert call(active, "POST", "/cluster/start", {"a": 1}) == (200, "")
    assert call(active, "POST", "/cluster/start", {"a": 1}) == (
        409,
        "this node already belongs to a cluster",
    )


def test_unexpected_errors_are_500_without_internals(active: Node) -> None:
    active.agent.fail_with = ReplicationError("pg_basebackup failed: disk full")
    resp = get(active, "/cluster/start", "POST", json={}, auth=AUTH)
    assert (resp.status_code, resp.json()) == (500, {"error": "pg_basebackup failed: disk full"})
    active.agent.fail_with = RuntimeError("secret internals")
    resp = get(active, "/cluster/start", "POST", json={}, auth=AUTH)
    assert resp.status_code == 500
    assert "secret" not in resp.text and "internal error" in resp.json()["error"]
    assert get(active, "/status").status_code == 200


def test_unknown_paths_and_methods(active: Node) -> None:
    resp = get(active, "/nope")
    assert resp.status_code == 404
    assert resp.json() == {"error": "no such endpoint: GET /nope"}
    assert get(active, "/nodes/a/b", auth=AUTH).status_code == 404
    resp = get(active, "/cluster", "PUT", auth=AUTH)
    assert resp.status_code == 405
    assert resp.headers["allow"] == "GET, OPTIONS"
    resp = get(active, "/status", "POST")
    assert resp.status_code == 405 and "GET" in resp.json()["error"]
    resp = get(active, "/switchover", "OPTIONS")
    assert resp.status_code == 204 and resp.headers["allow"] == "OPTIONS, POST"


def test_query_strings_and_trailing_slashes(active: Node) -> None:
    assert get(active, "/status?verbose=1").status_code == 200
    assert get(active, "/status/").status_code == 200


def test_head_on_a_get_endpoint_has_no_body(active: Node) -> None:
    resp = get(active, "/nodes", "HEAD", auth=AUTH)
    full = get(active, "/nodes", auth=AUTH)
    assert resp.status_code == 200 and resp.content == b""
    assert resp.headers["content-length"] == str(len(full.content))


def test_oversized_and_chunked_bodies(active: Node) -> None:
    with socket.create_connection(("127.0.0.1", active.server.port), timeout=10) as sock:
        sock.sendall(b"POST /cluster/start HTTP/1.1\r\nHost: x\r\nContent-Length: 9999999\r\n\r\n")
        reply = _read_all(sock)
    assert reply.startswith(b"HTTP/1.1 413 ")
    assert b"Connection: close" in reply

    def chunks() -> Iterator[bytes]:
        yield b"{}"

    resp = httpx.post(active.url + "/cluster/start", content=chunks(), auth=AUTH, timeout=10)
    assert resp.status_code == 411
    assert active.agent.started == []


# ---- metrics ----


def _metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_need_credentials_by_default(active: Node) -> None:
    resp = get(active, "/metrics")
    assert resp.status_code == 401
    assert resp.headers["www-authenticate"] == REALM
    assert "hacore_" not in resp.text
    assert get(active, "/metrics", auth=AUTH).status_code == 200
    # the probes stay open
    assert get(active, "/status").status_code == 200


def test_metrics_without_credentials_when_the_node_says_so(nodes: dict[str, Node]) -> None:
    resp = get(nodes["open_metrics"], "/metrics")
    assert resp.status_code == 200
    samples = _metrics(resp.text)
    assert samples[("hacore_is_active", (("node", "n1"),))] == 1
    assert not any(name in ("hacore_lease_token", "hacore_node_info") for name, _ in samples)
    # the rest of the API still asks for them
    assert get(nodes["open_metrics"], "/nodes").status_code == 401


def test_metrics_on_the_active(active: Node) -> None:
    resp = get(active, "/metrics", auth=AUTH)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = _metrics(resp.text)
    node = ("node", "n1")
    assert samples[("hacore_is_active", (node,))] == 1
    assert samples[("hacore_state", (node, ("state", "active")))] == 1
    assert samples[("hacore_state", (node, ("state", "standby")))] == 0
    # neither the fencing token (42 here) nor the version, even to a scrape with credentials:
    # the scrape's are the load balancer's probe user (issue 10, points 1 and 8)
    assert not any(name in ("hacore_lease_token", "hacore_node_info") for name, _ in samples)
    assert not any(name == "version" for _, labels in samples for name, _ in labels)
    assert "0.1.0" not in resp.text
    assert samples[("hacore_db_position_bytes", (node,))] == 5000
    assert samples[("hacore_db_timeline", (node,))] == 3
    assert samples[("hacore_replication_lag_bytes", (node, ("standby", "n2")))] == 1000
    assert samples[("hacore_replication_lag_bytes", (node, ("standby", "n3")))] == 10
    assert samples[("hacore_replication_sync", (node, ("standby", "n2")))] == 1
    assert samples[("hacore_replication_sync", (node, ("standby", "n3")))] == 0
    assert samples[("hacore_check_ok", (("check", "disk"), node))] == 1
    assert 0 <= samples[("hacore_loop_age_seconds", (node,))] < 60
    assert samples[("hacore_store_ok", (node,))] == 1
    assert samples[("hacore_cluster_members", (node,))] == 3
    # no label whose value follows the active (issue 13.8): a failover changes values only
    assert not any(name == "leader" for _, labels in samples for name, _ in labels)


def test_metrics_on_a_standby_and_before_the_first_loop(standby: Node) -> None:
    standby.agent.snap = attrs.evolve(
        standby.agent.snap,
        checks={"db": CheckResult(False, "down")},
        last_loop_at=None,
    )
    samples = _metrics(get(standby, "/metrics", auth=AUTH).text)
    node = ("node", "n2")
    assert samples[("hacore_is_active", (node,))] == 0
    assert samples[("hacore_state", (node, ("state", "standby")))] == 1
    assert samples[("hacore_check_ok", (("check", "db"), node))] == 0
    assert ("hacore_lease_token", (node,)) not in samples
    assert ("hacore_loop_age_seconds", (node,)) not in samples
    assert not any(name == "hacore_replication_lag_bytes" for name, _ in samples)


def test_metrics_stay_out_of_the_global_registry(active: Node) -> None:
    assert get(active, "/metrics", auth=AUTH).status_code == 200
    assert not [m.name for m in REGISTRY.collect() if m.name.startswith("hacore")]


# ---- the transport ----


def test_keep_alive_serves_many_requests_on_one_connection(active: Node) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", active.server.port, timeout=10)
    try:
        conn.request("GET", "/status")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read()
        sock = conn.sock
        assert sock is not None
        local = sock.getsockname()
        auth = {"Authorization": basic_header(USER, PASSWORD), **JSON_TYPE}
        requests: list[tuple[str, str, bytes | None, dict[str, str], int]] = [
            ("HEAD", "/status", None, {}, 200),
            ("OPTIONS", "/standby", None, {}, 503),
            ("POST", "/switchover", b'{"to": "n2"}', JSON_TYPE, 401),  # refused, body consumed
            ("POST", "/switchover", b"{broken", auth, 400),
            ("POST", "/switchover", b'{"to": "n2"}', auth, 200),
            ("GET", "/nope", None, {}, 404),
            ("GET", "/metrics", None, {}, 401),
            ("GET", "/metrics", None, auth, 200),
            ("GET", "/nodes", None, auth, 200),
        ] * 3
        for method, path, body, headers, code in requests:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == code, (method, path)
            assert not resp.will_close
            assert conn.sock is sock and sock.getsockname() == local
    finally:
        conn.close()
    assert active.agent.switchovers == ["n2"] * 3


def test_http10_request_is_answered_and_closed(active: Node) -> None:
    # what an HAProxy check sends by default
    with socket.create_connection(("127.0.0.1", active.server.port), timeout=10) as sock:
        sock.sendall(b"GET /status HTTP/1.0\r\nConnection: close\r\n\r\n")
        reply = _read_all(sock)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert re.search(rb"Content-Length: (\d+)", head)[1] == str(len(body)).encode()  # type: ignore[index]


@pytest.mark.parametrize(
    ("raw", "code", "fragment"),
    [
        (b"GET /a b HTTP/1.1\r\n\r\n", 400, b"malformed request line"),
        (b"GET /status\r\n\r\n", 400, b"malformed request line"),  # HTTP/0.9
        (b"GET /status HTTP/2.0\r\n\r\n", 505, b"not supported"),
        (b"GET /status HTTP/1.1\r\nHost : x\r\n\r\n", 400, b"malformed request header"),
        (b"GET /status HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400, b"malformed request"),
        (b"GET /status HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431, b"too long"),
        (b"GET /status HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431, b"more than 100"),
        (
            b"POST /switchover HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
            400,
            b"Content-Length is not a number",
        ),
    ],
)
def test_malformed_requests_get_a_json_error_and_a_close(
    active: Node, raw: bytes, code: int, fragment: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", active.server.port), timeout=10) as sock:
        sock.sendall(raw)
        reply = _read_all(sock)  # returns only once the server closed the connection
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % code), reply[:200]
    assert b"Content-Type: application/json" in head
    assert b"Connection: close" in head
    assert fragment in body


def test_expect_100_continue(active: Node) -> None:
    with socket.create_connection(("127.0.0.1", active.server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /switchover HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            b"Content-Length: 12\r\nConnection: close\r\nContent-Type: application/json\r\n"
            b"Authorization: " + basic_header(USER, PASSWORD).encode() + b"\r\n\r\n"
        )
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b'{"to": "n3"}')
        reply = _read_all(sock)
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert active.agent.switchovers == ["n3"]


def test_concurrent_requests(active: Node) -> None:
    failures: list[str] = []
    counts: list[int] = []

    def worker(index: int) -> None:
        done = 0
        with httpx.Client(base_url=active.url, timeout=30) as client:
            for i in range(200):
                path = "/status" if i % 4 else "/nodes"
                resp = client.get(path, auth=AUTH if path == "/nodes" else None)
                if resp.status_code != 200:
                    failures.append(f"{index}/{i}: {resp.status_code}")
                else:
                    done += 1
        counts.append(done)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    elapsed = time.monotonic() - start
    assert not failures
    assert sum(counts) == 1600, elapsed


def test_shutdown_ends_keep_alive_connections_and_frees_the_port() -> None:
    node = _start(active_snapshot())
    node.http.close()
    port = node.server.port
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/status")
    assert conn.getresponse().read()
    kept = conn.sock  # a kept-alive connection, its handler thread waiting for a request
    assert kept is not None
    start = time.monotonic()
    node.server.shutdown()
    assert time.monotonic() - start < 5
    kept.settimeout(5)
    assert kept.recv(1) == b""  # closed by the server, not left to the idle timeout
    conn.close()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    # the port can be bound again at once
    again = ApiServer(FakeAgent(active_snapshot()), SETTINGS, port=port)
    again.shutdown()


def test_port_in_use_is_a_clear_error(active: Node) -> None:
    with pytest.raises(
        Exception, match=r"cannot listen on 127\.0\.0\.1:\d+: Address already in use"
    ):
        ApiServer(active.agent, SETTINGS, port=active.server.port)


def test_tls(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    node = _start(active_snapshot(), ssl_context=context)
    try:
        assert node.url.startswith("https://127.0.0.1:")
        with ApiClient(node.url, AUTH, verify=str(cert)) as client:
            assert client.status()["active"] is True
            assert client.cluster()["leader"] == "n1"
        unverified = ApiClient(node.url, AUTH, verify=True)
        with unverified, pytest.raises(ApiUnreachableError, match="cannot reach the hacore agent"):
            unverified.status()
        # a plain-HTTP client gets nothing, and the server keeps serving
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{node.server.port}/status", timeout=5)
        with ApiClient(node.url, verify=str(cert)) as client:
            assert client.status()["node"] == "n1"
    finally:
        node.stop()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hacore test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


# ---- the client ----


def test_client_calls(active: Node) -> None:
    with ApiClient(active.url, AUTH) as client:
        assert client.status()["active"] is True
        assert client.cluster()["name"] == "test"
        assert [node["name"] for node in client.nodes()] == ["n1", "n2", "n3"]
        assert client.node("n2")["role"] == "standby"
        assert client.start_cluster({"x": 1}) == {"started": True, "options": {"x": 1}}
        assert client.join_ticket({"node_name": "n4", "version": "0.1.0"})["ticket"] == "n4"
        assert client.remove_node("n3") == {"removed": "n3"}
        assert client.switchover("n2") == {"from": "n1", "to": "n2"}
        assert client.switchover() == {"from": "n1", "to": None}
        assert "hacore_is_active" in client.metrics()


def test_client_status_of_a_standby_is_an_answer(standby: Node) -> None:
    with ApiClient(standby.url) as client:
        status = client.status()
    assert status["active"] is False and status["state"] == "standby"


def test_client_error_mapping(active: Node, standby: Node) -> None:
    with ApiClient(active.url, AUTH) as client:
        with pytest.raises(ConflictError, match=r"^n1 is the active node; switch over"):
            client.remove_node("n1")
        with pytest.raises(NotFoundError, match=r'^no node named "zz" in this cluster$'):
            client.node("zz")
        with pytest.raises(NotFoundError):
            client.node("a/b")  # quoted, so not another path
        with pytest.raises(BadRequestError, match="node_name is required"):
            client.join_ticket({})
        active.agent.store_down = True
        with pytest.raises(UnavailableError, match="did not answer"):
            client.cluster()
        active.agent.fail_with = ReplicationError("clone failed")
        with pytest.raises(ApiError, match=r"^clone failed$"):
            client.start_cluster({})
    with (
        ApiClient(standby.url, AUTH) as client,
        pytest.raises(UnavailableError, match="not the active"),
    ):
        client.switchover()
    # a server of its own: the module's servers have spent this address's failed-login
    # budget in the tests before (AttemptLimiter), and would answer 429 instead
    fresh = _start(active_snapshot())
    try:
        with ApiClient(fresh.url, (USER, "nope")) as client:
            with pytest.raises(AuthenticationError) as info:
                client.cluster()
            assert str(info.value) == f"wrong credentials for {fresh.url}"
            assert "nope" not in str(info.value)
    finally:
        fresh.stop()
    with (
        ApiClient(active.url) as client,
        pytest.raises(AuthenticationError, match="none were given"),
    ):
        client.nodes()


def test_client_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with ApiClient(url, AUTH, timeout=2) as client, pytest.raises(ApiUnreachableError) as info:
        client.status()
    assert str(info.value).startswith(f"cannot reach the hacore agent at {url}: ")
    assert "refused" in str(info.value).lower()


def test_client_timeout() -> None:
    # a listener that never answers
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with ApiClient(url, timeout=0.5) as client, pytest.raises(ApiUnreachableError) as info:
            client.status()
    assert str(info.value) == f"cannot reach the hacore agent at {url}: no answer within 0.5 s"


def test_find_active_skips_dead_nodes_and_standbys(nodes: dict[str, Node]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    not_an_agent = nodes["standby"].url + "/elsewhere"  # answers 404 to /status
    urls = [dead, not_an_agent, nodes["standby"].url, nodes["active"].url]
    with find_active(urls, AUTH, timeout=5) as client:
        assert client.base_url == nodes["active"].url
        assert client.cluster()["leader"] == "n1"
    with pytest.raises(UnavailableError) as info:
        find_active([dead, nodes["standby"].url], AUTH, timeout=5)
    message = str(info.value)
    assert message.startswith("no active node found (")
    assert f"{nodes['standby'].url}: standby" in message and dead in message
    with pytest.raises(UnavailableError, match="no such endpoint: GET /elsewhere/status"):
        find_active([not_an_agent], AUTH)


def test_find_active_with_status_requiring_auth(nodes: dict[str, Node]) -> None:
    closed = nodes["closed"]
    with find_active([nodes["standby"].url, closed.url], AUTH) as client:
        assert client.base_url == closed.url
    with pytest.raises(AuthenticationError, match="wrong credentials"):
        find_active([closed.url, nodes["active"].url], (USER, "bad"))


# ---- HAProxy: the documented configurations ----

HAPROXY = shutil.which("haproxy")
needs_haproxy = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed")


def _doc_configs() -> list[str]:
    text = (DOCS / "haproxy.md").read_text()
    return re.findall(r"```haproxy\n(.*?)```", text, re.S)


def test_docs_hold_both_haproxy_variants() -> None:
    configs = _doc_configs()
    assert len(configs) == 2
    assert "hdr Authorization" not in configs[0]
    expected = basic_header("admin", "the-api-password")
    assert f'hdr Authorization "{expected}"' in configs[1]


def _cluster_pki(tmp_path: Path) -> tuple[Any, Any]:
    """A hacore cluster CA and one node certificate for 127.0.0.1, as agents have them."""
    from hacore import pki

    ca = pki.create_ca("haproxy", tmp_path / "ca")
    return ca, pki.issue_node_certificate(ca, "n", ["127.0.0.1"], tmp_path / "node")


@needs_haproxy
@pytest.mark.parametrize("index", [0, 1])
def test_documented_haproxy_config_is_valid(tmp_path: Path, index: int) -> None:
    import subprocess

    ca, _ = _cluster_pki(tmp_path)
    config = _doc_configs()[index]
    assert "check-ssl verify required ca-file /etc/hacore/ca.crt" in config
    path = tmp_path / "haproxy.cfg"
    path.write_text(config.replace("/etc/hacore/ca.crt", str(ca.cert_file)))
    result = subprocess.run(
        [str(HAPROXY), "-c", "-f", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_haproxy
def test_haproxy_sends_traffic_to_the_active_only(tmp_path: Path) -> None:
    """The documented authenticated check over TLS, run by a real HAProxy against two agents
    whose roles are then swapped. Traffic (TLS, passed through) is routed to the agents' own
    API ports, so each answer names the node that got it."""
    from hacore import pki
    from hacore.api.server import PlainHttp

    settings = ApiSettings(
        auth=ApiAuth("admin", hash_password("the-api-password", iterations=1000)),
        status_requires_auth=True,
    )
    ca, cert = _cluster_pki(tmp_path)
    tls: dict[str, Any] = {
        "ssl_context": pki.ssl_server_context(cert, ca, require_client_cert=False),
        "plain": PlainHttp.PROBES,
    }
    one = _start(active_snapshot("n1"), settings, **tls)
    two = _start(standby_snapshot("n2", leader="n1"), settings, **tls)
    front = free_port()
    config = _doc_configs()[1]
    config = config.replace("bind :443", f"bind 127.0.0.1:{front}")
    config = config.replace("bind :5432", f"bind 127.0.0.1:{free_port()}")
    config = re.sub(
        r"default-server .*",
        "default-server inter 200ms rise 2 fall 2 check-ssl verify required "
        f"ca-file {ca.cert_file}",
        config,
    )
    config = re.sub(r"\n    server node3 .*", "", config)
    for name, node in (("node1", one), ("node2", two)):
        config = re.sub(
            rf"server {name} .*", f"server {name} 127.0.0.1:{node.server.port} check", config
        )
    (tmp_path / "haproxy.cfg").write_text(config)
    proc = ServerProcess(
        "haproxy", [str(HAPROXY), "-db", "-f", str(tmp_path / "haproxy.cfg")], tmp_path / "log"
    ).start()

    client_tls = pki.ssl_client_context(ca)

    def routed_to() -> str:
        resp = httpx.get(
            f"https://127.0.0.1:{front}/status", auth=AUTH, timeout=5, verify=client_tls
        )
        return str(resp.json()["node"])

    def only(name: str) -> bool:
        return all(routed_to() == name for _ in range(12))

    try:
        wait_for(lambda: only("n1"), timeout=30, interval=0.2, what="traffic on n1 only")
        one.agent.snap = standby_snapshot("n1", leader="n2")
        two.agent.snap = active_snapshot("n2")
        wait_for(lambda: only("n2"), timeout=30, interval=0.2, what="traffic on n2 only")
    except TimeoutError:
        pytest.fail(f"haproxy did not follow the active:\n{proc.log_tail()}")
    finally:
        proc.stop(signal.SIGTERM)
        one.stop()
        two.stop()
