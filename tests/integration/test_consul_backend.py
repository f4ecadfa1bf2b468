"""The Consul backend: what holds without a server, then the behaviour of a real cluster.

No Consul binary ships for this machine, so the server tests skip here with the harness's
reason. The tests without a server use real sockets only: a closed loopback port (connection
refused) and a listener that never answers (an agent that hangs).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import consul
import consul.std
import pytest

from hacore.backends.records import EventKind, Member, NodeRole
from hacore.errors import ConfigError, StoreUnavailableError
from hacore.plugins.registry import load_plugins
from hacore.testing.procs import free_port, wait_for
from hacore_plugins.consul.backend import ConsulConsensus
from hacore_plugins.consul.testing import ConsulHarness
from hacore_plugins.consul.watch import diff

RETRY = 0.5
SLACK = 0.75


def backend(settings: dict[str, Any], *, ttl: float = 20.0, node: str = "n1") -> ConsulConsensus:
    return ConsulConsensus(settings, namespace="test", node_name=node, ttl=ttl, retry_timeout=RETRY)


def closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


class SilentAgent:
    """A port that accepts connections (in the kernel's backlog) and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def connections(self) -> int:
        count = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1


@contextlib.contextmanager
def silent_agent() -> Iterator[SilentAgent]:
    agent = SilentAgent()
    try:
        yield agent
    finally:
        agent.sock.close()


# -- settings ------------------------------------------------------------------------------


def test_registered_in_the_plugin_registry() -> None:
    registry = load_plugins().registry
    assert registry.consensus("consul") is ConsulConsensus
    assert registry.get("test_harness", "consul") is ConsulHarness


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "endpoints"),
        ({"endpoints": []}, "endpoints"),
        ({"endpoints": ["ftp://h:1"]}, "http:// or https://"),
        ({"endpoints": ["http://h:8500/v1"]}, "must not have a path"),
        ({"endpoints": ["http://h:notaport"]}, "invalid port"),
        (
            {"endpoints": ["http://h"], "tokn": "x"},
            'unknown key "tokn" in consensus; did you mean "token"?',
        ),
        ({"endpoints": ["http://h"], "lock_delay": 1e-7}, "lock_delay"),
        ({"endpoints": ["http://h"], "lock_delay": 61}, "lock_delay"),
        ({"endpoints": ["http://h"], "lock_delay": "1s"}, "number of seconds"),
        ({"endpoints": ["http://h"], "prefix": "/abs"}, "prefix"),
        ({"endpoints": ["http://h"], "cert_file": "c.pem"}, "go together"),
        ({"endpoints": ["http://h"], "round_up_ttl": "yes"}, "true or false"),
    ],
)
def test_validate_settings_rejects(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ConsulConsensus.validate_settings(settings)


def test_validate_settings_accepts_a_full_section() -> None:
    ConsulConsensus.validate_settings(
        {
            "endpoints": ["http://10.0.0.1:8500", "https://consul.example:8501", "10.0.0.3"],
            "token": "secret",
            "datacenter": "dc2",
            "lock_delay": 0,
            "min_session_ttl": 1,
            "ca_file": "/etc/ca.pem",
            "cert_file": "/etc/c.pem",
            "key_file": "/etc/k.pem",
        }
    )


def test_ttl_below_twice_the_consul_minimum_is_refused() -> None:
    with pytest.raises(
        ConfigError, match=r"ttl 15s needs a Consul session TTL of 7.5s, below .* minimum .* 10s"
    ):
        backend({"endpoints": [closed_url()]}, ttl=15)


def test_session_ttl_is_half_the_ttl_since_consul_doubles_it() -> None:
    assert backend({"endpoints": [closed_url()]}, ttl=20).session_ttl == 10


def test_undoubled_session_ttl_on_request() -> None:
    b = backend({"endpoints": [closed_url()], "halve_session_ttl": False}, ttl=12)
    assert b.session_ttl == 12
    with pytest.raises(ConfigError, match="use ttl >= 10"):
        backend({"endpoints": [closed_url()], "halve_session_ttl": False}, ttl=9)


def test_ttl_rounding_is_explicit_and_never_shortens() -> None:
    b = backend({"endpoints": [closed_url()], "round_up_ttl": True}, ttl=3)
    assert (b.ttl, b.session_ttl) == (3, 10)


def test_lower_server_minimum_allows_short_ttl() -> None:
    assert backend({"endpoints": [closed_url()], "min_session_ttl": 1}, ttl=2.5).session_ttl == 1.25
    with pytest.raises(ConfigError, match="use ttl >= 2"):
        backend({"endpoints": [closed_url()], "min_session_ttl": 1}, ttl=1.5)


def test_ttl_above_two_days_is_refused() -> None:
    with pytest.raises(ConfigError, match="24 h"):
        backend({"endpoints": [closed_url()]}, ttl=200_000)


# -- watch diffing -------------------------------------------------------------------------


def test_diff_orders_writes_by_index_then_deletions() -> None:
    old = {"a": (5, b"1"), "b": (6, b"2"), "c": (7, b"3")}
    new = {"a": (9, b"1b"), "c": (7, b"3"), "d": (8, b"4")}
    assert [(e.kind, e.key, e.value) for e in diff(old, new)] == [
        (EventKind.PUT, "d", b"4"),
        (EventKind.PUT, "a", b"1b"),
        (EventKind.DELETE, "b", None),
    ]


# -- an unreachable store ------------------------------------------------------------------


CALLS = {
    "keepalive": lambda b: b.keepalive(),
    "campaign": lambda b: b.campaign(),
    "leader": lambda b: b.leader(),
    "members": lambda b: b.members(),
    "get": lambda b: b.get("config"),
    "get_prefix": lambda b: b.get_prefix("history/"),
    "put": lambda b: b.put("config", b"x"),
    "delete": lambda b: b.delete("config"),
    "view": lambda b: b.view(),
    "watch": lambda b: b.watch(""),
    "publish_member": lambda b: b.publish_member(Member("n1", role=NodeRole.STANDBY)),
}


@pytest.mark.parametrize("call", sorted(CALLS))
def test_closed_ports_raise_within_retry_timeout(call: str) -> None:
    urls = [closed_url(), closed_url()]
    b = backend({"endpoints": urls})
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError) as err:
        CALLS[call](b)
    elapsed = time.monotonic() - started
    assert RETRY * 0.9 <= elapsed < RETRY + SLACK, elapsed
    assert urls[0] in str(err.value) and urls[1] in str(err.value)


def test_a_hung_agent_is_bounded_by_retry_timeout() -> None:
    with silent_agent() as agent:
        b = backend({"endpoints": [agent.url, closed_url()]})
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match=r"no agent answered within 0\.5s"):
            b.leader()
        assert time.monotonic() - started < RETRY + SLACK


def test_an_unanswered_conditional_write_is_reported_as_unknown_not_retried() -> None:
    with silent_agent() as agent:
        b = backend({"endpoints": [agent.url, closed_url()]})
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="may or may not have been applied"):
            b.put("config", b"x", expect_version=7)
        assert time.monotonic() - started < RETRY + SLACK
        assert agent.connections() == 1


def test_a_hung_agent_does_not_starve_the_next_one() -> None:
    with silent_agent() as first, silent_agent() as second:
        b = backend({"endpoints": [first.url, second.url]})
        with pytest.raises(StoreUnavailableError):
            b.leader()
        assert first.connections() >= 1
        assert second.connections() >= 1


# -- a real Consul cluster (needs the consul binary) -----------------------------------------


@pytest.fixture(scope="session")
def consul_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsulHarness]:
    reason = ConsulHarness.unavailable_reason()
    if reason:
        pytest.skip(reason)
    harness = ConsulHarness(Path(tmp_path_factory.mktemp("consul")))
    try:
        harness.start()
        yield harness
    finally:
        harness.stop()


_namespaces = iter(range(1_000_000))


@pytest.fixture
def make(consul_cluster: ConsulHarness) -> Iterator[Any]:
    """Backends in a namespace of their own, closed after the test."""
    namespace = f"t{next(_namespaces)}"
    made: list[ConsulConsensus] = []

    def factory(node: str, ttl: float = 2.0) -> ConsulConsensus:
        b = ConsulConsensus(
            consul_cluster.settings(),
            namespace=namespace,
            node_name=node,
            ttl=ttl,
            retry_timeout=3.0,
        )
        made.append(b)
        return b

    yield factory
    for b in made:
        with contextlib.suppress(Exception):
            b.close()


def raw_client(harness: ConsulHarness) -> consul.Consul:
    return consul.Consul(host="127.0.0.1", port=harness.http_ports[0])


def test_session_is_ttl_only_with_delete_behaviour(
    consul_cluster: ConsulHarness, make: Any
) -> None:
    a = make("a", ttl=2.0)
    assert a.keepalive()
    session_id = a._session
    _, info = raw_client(consul_cluster).session.info(session_id)
    assert info["Behavior"] == "delete"
    assert consul.std.parse_duration(info["TTL"]) == 1.0  # Consul times it at 2 x TTL
    assert info["LockDelay"] == 1_000_000  # nanoseconds: 1 ms
    assert not info.get("NodeChecks") and not info.get("Checks")


def test_campaign_token_and_resign(make: Any) -> None:
    a, b = make("a"), make("b")
    lease = a.campaign()
    assert lease is not None and lease.holder == "a"
    again = a.campaign()
    assert again is not None and (again.holder, again.token) == (lease.holder, lease.token)
    assert b.campaign() is None
    assert b.leader() == a.leader()
    assert b.leader().token == lease.token
    assert a.renew(lease)
    a.resign(lease)
    assert b.leader() is None
    assert not a.renew(lease)
    second = b.campaign()
    assert second is not None and second.token > lease.token


def test_leader_key_vanishes_after_ttl_and_failover_is_not_delayed(make: Any) -> None:
    a, b = make("a", ttl=2.0), make("b", ttl=2.0)
    started = time.monotonic()
    lease = a.campaign()
    assert lease is not None
    a.publish_member(Member("a", role=NodeRole.ACTIVE))
    # The session (TTL 1 s) was never renewed: Consul ends it 2 x 1 s after creating it.
    wait_for(lambda: b.leader() is None, timeout=10, interval=0.05, what="leader key to expire")
    # Not before the 2 s: the lease never goes early (how late is wait_for's generous bound).
    assert time.monotonic() - started >= 2.0
    assert b.members() == ()
    new = b.campaign()  # lock-delay is 1 ms: no 15 s wait
    assert new is not None and new.token > lease.token
    assert not a.keepalive()
    assert not a.renew(lease)


def test_close_deletes_leader_and_member(make: Any) -> None:
    a, b = make("a"), make("b")
    assert a.campaign() is not None
    a.publish_member(Member("a", api_url="http://a", role=NodeRole.ACTIVE, healthy=True))
    assert [m.name for m in b.members()] == ["a"]
    a.close()
    assert b.leader() is None
    assert b.members() == ()


def test_restarted_node_takes_over_its_old_session(make: Any) -> None:
    first = make("a", ttl=20.0)
    first.publish_member(Member("a", role=NodeRole.STANDBY))
    assert first.campaign() is not None
    second = make("a", ttl=20.0)  # same node after a crash: the old session still lives
    second.publish_member(Member("a", role=NodeRole.STARTING))
    assert [m.role for m in second.members()] == [NodeRole.STARTING]
    assert second.leader() is None
    assert second.campaign() is not None


def test_versioned_keys(make: Any) -> None:
    a = make("a")
    assert a.put("config", b"v1", expect_version=0)
    assert not a.put("config", b"again", expect_version=0)
    first = a.get("config")
    assert first is not None and first.value == b"v1"
    assert a.put("config", b"v2", expect_version=first.version)
    assert not a.put("config", b"stale", expect_version=first.version)
    second = a.get("config")
    assert second is not None and second.value == b"v2" and second.version != first.version
    assert a.put("history/2", b"y") and a.put("history/1", b"x")
    assert [kv.key for kv in a.get_prefix("history/")] == ["history/1", "history/2"]
    assert not a.delete("config", expect_version=first.version)
    assert a.delete("config", expect_version=second.version)
    assert a.get("config") is None
    assert not a.delete("config")
    assert a.delete("history/1") and not a.delete("history/1")


def test_watch_sees_puts_and_deletes(make: Any) -> None:
    a, b = make("a"), make("b")
    with b.watch("") as watcher:
        assert a.put("config", b"1")
        event = watcher.get(timeout=10)
        assert event is not None and (event.kind, event.key, event.value) == (
            EventKind.PUT,
            "config",
            b"1",
        )
        lease = a.campaign()
        assert lease is not None
        event = watcher.get(timeout=10)
        assert event is not None and (event.kind, event.key) == (EventKind.PUT, "leader")
        a.resign(lease)
        event = watcher.get(timeout=10)
        assert event is not None and (event.kind, event.key) == (EventKind.DELETE, "leader")


def test_view_is_one_consistent_snapshot(make: Any) -> None:
    a = make("a")
    lease = a.campaign()
    assert lease is not None
    a.publish_member(Member("a", role=NodeRole.ACTIVE))
    a.put("config", b"{}")
    view = a.view()
    assert view.leader is not None and view.leader.token == lease.token
    assert [m.name for m in view.members] == ["a"]
    assert view.config is not None and view.config.value == b"{}"


def test_a_killed_server_is_survived(consul_cluster: ConsulHarness, make: Any) -> None:
    a = make("a")
    lease = a.campaign()
    assert lease is not None
    consul_cluster.kill_member(0)
    try:
        wait_for(lambda: a.renew(lease), timeout=15, interval=0.2, what="renew via the others")
    finally:
        consul_cluster.restart_member(0)
