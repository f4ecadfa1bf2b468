"""What the in-memory backend adds beyond the contract: the knobs unit tests of the agent use."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hacore.backends.consensus import LEADER_KEY
from hacore.backends.records import EventKind, Leader, Member, WatchEvent
from hacore.errors import ConfigError, HacoreError, ManagedStoreError, StoreUnavailableError
from hacore.testing.memory import MemoryConsensus, MemoryManagedStore, drop_store, get_store


@pytest.fixture
def store_name() -> Iterator[str]:
    name = f"unit-{uuid.uuid4().hex}"
    yield name
    get_store(name).thaw()
    drop_store(name)


def node(store: str, name: str, ttl: float = 10.0, retry_timeout: float = 0.3) -> MemoryConsensus:
    return MemoryConsensus(
        {"store": store}, namespace="ns", node_name=name, ttl=ttl, retry_timeout=retry_timeout
    )


def test_settings_need_a_store_name() -> None:
    with pytest.raises(ConfigError, match="'store'"):
        MemoryConsensus({}, namespace="ns", node_name="a", ttl=1, retry_timeout=1)
    with pytest.raises(ConfigError):
        MemoryConsensus.validate_settings({"store": ""})


def test_backends_share_a_store_only_by_name(store_name: str) -> None:
    a, b, elsewhere = node(store_name, "a"), node(store_name, "b"), node(store_name + "x", "c")
    assert a.campaign() is not None
    assert b.campaign() is None
    assert elsewhere.campaign() is not None


def test_advance_expires_sessions_and_notifies_watchers(store_name: str) -> None:
    a, b = node(store_name, "a", ttl=5), node(store_name, "b")
    lease = a.campaign()
    assert lease is not None
    a.publish_member(Member(name="a"))
    with b.watch("") as watcher:
        get_store(store_name).advance(4.9)
        assert b.leader() == Leader(name="a", token=lease.token)
        get_store(store_name).advance(0.2)
        events = [watcher.get(timeout=1), watcher.get(timeout=1)]
    assert b.leader() is None
    assert b.members() == ()
    assert sorted((e.kind, e.key) for e in events if e) == [
        (EventKind.DELETE, LEADER_KEY),
        (EventKind.DELETE, "members/a"),
    ]


def test_expired_session_is_reported_then_replaced(store_name: str) -> None:
    a = node(store_name, "a", ttl=5)
    a.publish_member(Member(name="a"))
    assert a.keepalive() is True
    get_store(store_name).advance(6)
    assert a.keepalive() is False
    assert a.keepalive() is False, "keepalive does not open a new session by itself"
    assert a.members() == ()
    lease = a.campaign()
    assert lease is not None
    assert a.keepalive() is True
    assert a.renew(lease) is True


def test_a_lone_watcher_sees_an_expiry_at_once(store_name: str) -> None:
    a, b = node(store_name, "a", ttl=0.5), node(store_name, "b")
    assert a.campaign() is not None
    with b.watch(LEADER_KEY) as watcher:
        started = time.monotonic()
        # Nobody calls the store meanwhile: an expiry noticed only on the next call would
        # leave this get to its own timeout, and it would return None.
        event = watcher.get(timeout=60)
        elapsed = time.monotonic() - started
    assert event == WatchEvent(EventKind.DELETE, LEADER_KEY)
    assert elapsed >= 0.4, f"the session expired {elapsed:.2f}s after its ttl of 0.5 s began"


def test_crash_leaves_the_session_to_expire(store_name: str) -> None:
    a, b = node(store_name, "a", ttl=5), node(store_name, "b")
    assert a.campaign() is not None
    a.crash()
    with pytest.raises(StoreUnavailableError):
        a.leader()
    a.close()
    assert b.leader() is not None
    get_store(store_name).advance(5.1)
    assert b.leader() is None


def test_close_ends_the_session_and_the_backend(store_name: str) -> None:
    a, b = node(store_name, "a"), node(store_name, "b")
    assert a.campaign() is not None
    a.close()
    a.close()
    assert b.leader() is None
    with pytest.raises(HacoreError, match="closed"):
        a.leader()


def test_time_frozen_does_not_count_against_sessions(store_name: str) -> None:
    a, b = node(store_name, "a", ttl=1.0), node(store_name, "b")
    lease = a.campaign()
    assert lease is not None
    store = get_store(store_name)
    store.freeze()
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError):
        b.leader()
    assert time.monotonic() - started >= 0.3
    time.sleep(1.0)
    store.thaw()
    assert b.leader() == Leader(name="a", token=lease.token)
    assert a.renew(lease) is True


def test_managed_store_serves_only_with_a_majority(store_name: str, tmp_path: Path) -> None:
    servers = [
        MemoryManagedStore({}, name=f"m{i}", host="127.0.0.1", data_dir=tmp_path / f"m{i}")
        for i in range(3)
    ]
    servers[0].bootstrap()
    for server in servers[1:]:
        server.join(servers[0].add_member(server.identity()))
    client = MemoryConsensus(
        servers[0].client_settings(), namespace="ns", node_name="c", ttl=10, retry_timeout=0.2
    )
    assert client.put("k", b"1")
    servers[1].stop()
    assert client.put("k", b"2")
    servers[2].stop()
    assert not servers[2].is_running()
    with pytest.raises(StoreUnavailableError):
        client.get("k")
    with pytest.raises(ManagedStoreError, match="quorum"):
        servers[0].remove_member("m2")
    servers[2].start()
    kv = client.get("k")
    assert kv is not None and kv.value == b"2"
    with pytest.raises(ManagedStoreError, match="not empty"):
        MemoryManagedStore({}, name="x", host="127.0.0.1", data_dir=tmp_path / "m0").bootstrap()
