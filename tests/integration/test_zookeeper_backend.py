"""What the ZooKeeper backend does beyond the generic contract, on real ZooKeeper servers.

The contract suite (``tests/contract --hacore-backend=zookeeper``) checks the behaviour every
backend shares; these tests check how it is done here: flat znodes and their mapping back to
keys, the persistent watch across a reconnection, a SUSPENDED session, the granted session
timeout, ACLs, and the managed store's dynamic reconfiguration.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kazoo.client import KazooClient

from hacore.backends.consensus import LEADER_KEY
from hacore.backends.records import EventKind, Member, WatchEvent
from hacore.errors import ConfigError, ManagedStoreError, StoreUnavailableError
from hacore.testing.procs import wait_for
from hacore.testing.pytest_plugin import run_harness
from hacore_plugins.zookeeper import server as zk
from hacore_plugins.zookeeper.backend import ZooKeeperConsensus
from hacore_plugins.zookeeper.keys import key_of, node_name
from hacore_plugins.zookeeper.managed import ZooKeeperManagedStore
from hacore_plugins.zookeeper.testing import ZooKeeperHarness

#: one xdist worker for every ZooKeeper test, so their JVMs do not compete with each other
pytestmark = pytest.mark.xdist_group("zookeeper")

SLACK = 1.0
#: retry_timeout of the calls a test does not time. Every write (the session a backend opens
#: on its first call included) waits for ZooKeeper to fsync its log on two servers, which a
#: busy disk (a full test run: PostgreSQL, etcd, package builds) stretches to a second or more.
PATIENT = 30.0
#: retry_timeout of the calls whose bound a test measures
QUICK = 1.0
Factory = Callable[..., ZooKeeperConsensus]


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperHarness]:
    for started in run_harness(ZooKeeperHarness, tmp_path_factory.mktemp("zk")):
        assert isinstance(started, ZooKeeperHarness)
        yield started


@pytest.fixture
def namespace() -> str:
    return f"zk{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make(harness: ZooKeeperHarness, namespace: str) -> Iterator[Factory]:
    made: list[ZooKeeperConsensus] = []

    def factory(
        name: str,
        *,
        ttl: float = 10.0,
        retry_timeout: float = PATIENT,
        settings: dict[str, Any] | None = None,
    ) -> ZooKeeperConsensus:
        backend = ZooKeeperConsensus(
            settings or harness.settings(),
            namespace=namespace,
            node_name=name,
            ttl=ttl,
            retry_timeout=retry_timeout,
        )
        made.append(backend)
        return backend

    yield factory
    for backend in made:
        backend.close()


@pytest.fixture
def raw(harness: ZooKeeperHarness) -> Iterator[KazooClient]:
    """A plain kazoo client, to look at and poke the znodes behind the backend's back."""
    client = KazooClient(hosts=",".join(harness.settings()["hosts"]))
    client.start(timeout=30)
    yield client
    client.stop()
    client.close()


def _timed(call: Callable[[], Any]) -> tuple[float, BaseException | None]:
    start = time.monotonic()
    try:
        call()
    except Exception as err:
        return time.monotonic() - start, err
    return time.monotonic() - start, None


def _events_until(watcher: Any, key: str, timeout: float = 15.0) -> list[WatchEvent]:
    events: list[WatchEvent] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            event = watcher.get(timeout=max(deadline - time.monotonic(), 0.0))
        except StoreUnavailableError:  # the replay after a reconnection: get() again
            continue
        if event is None:
            break
        if event.key == key:
            return events
        events.append(event)
    raise AssertionError(f"no event for {key} within {timeout:g}s; got {events}")


# -- settings and key mapping (no server) -------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, '"hosts" must be a non-empty list'),
        ({"hosts": "127.0.0.1:2181"}, '"hosts" must be a non-empty list'),
        ({"hosts": ["127.0.0.1"]}, 'must look like "host:port"'),
        ({"hosts": ["127.0.0.1:2181/chroot"]}, 'must look like "host:port"'),
        ({"hosts": ["127.0.0.1:99999"]}, 'must look like "host:port"'),
        (
            {"hosts": ["h:1"], "host": "x"},
            'unknown key "host" in consensus; did you mean "hosts"?',
        ),
        ({"hosts": ["h:1"], "auth": "user:pw"}, '"auth" must be {user: NAME'),
        ({"hosts": ["h:1"], "auth": {"user": "u"}}, '"auth.password" must be'),
        ({"hosts": ["h:1"], "auth": {"user": "a:b", "password": "p"}}, '"auth.user" must be'),
        ({"hosts": ["h:1"], "auth": {"scheme": "sasl", "user": "u", "password": "p"}}, "digest"),
    ],
)
def test_settings_are_checked_before_connecting(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        ZooKeeperConsensus.validate_settings(settings)
    assert message in str(err.value)
    with pytest.raises(ConfigError):
        ZooKeeperConsensus(settings, namespace="n", node_name="a", ttl=5, retry_timeout=1)


def test_keys_map_to_single_znode_names_and_back() -> None:
    keys = ["leader", "members/node-1", "a/b/c", ".", "..", "./x", "50% off", "ü/ß", "sp ace"]
    names = [node_name(key) for key in keys]
    assert all("/" not in name and name not in (".", "..") for name in names)
    assert [key_of(name) for name in names] == keys
    assert node_name("members/node-1") == "members%2Fnode-1"
    assert key_of("nested/child") is None
    with pytest.raises(ValueError, match="empty"):
        node_name("")


# -- the store's view of the backend ------------------------------------------------------


def test_keys_are_flat_znodes_and_ephemerals_belong_to_the_session(
    make: Factory, raw: KazooClient, namespace: str
) -> None:
    node = make("a")
    lease = node.campaign()
    assert lease is not None
    node.publish_member(Member(name="a"))
    assert node.put("state/x", b"1")
    root = f"/hacore/{namespace}"
    raw.sync(root)  # raw may talk to another server, which may lag behind without a sync
    assert sorted(raw.get_children(root)) == ["leader", "members%2Fa", "state%2Fx"]
    data, leader = raw.get(f"{root}/leader")
    assert data == b"a"
    assert leader.czxid == lease.token
    _, member = raw.get(f"{root}/members%2Fa")
    assert member.ephemeralOwner == leader.ephemeralOwner != 0
    _, state = raw.get(f"{root}/state%2Fx")
    assert state.ephemeralOwner == 0
    kv = node.get("state/x")
    assert kv is not None and kv.version == state.version + 1
    node.close()
    raw.sync(root)
    assert raw.get_children(root) == ["state%2Fx"], "ephemerals must go with close()"


def test_watch_maps_znode_events_back_to_keys(
    make: Factory, raw: KazooClient, namespace: str
) -> None:
    writer, reader = make("writer"), make("reader")
    root = f"/hacore/{namespace}"
    assert writer.put("x/plain", b"0")
    with reader.watch("") as everything, reader.watch("members/") as members:
        raw.set(root, b"data on the namespace znode itself")
        raw.create(f"{root}/x%2Fplain/nested", b"not a key")
        raw.delete(f"{root}/x%2Fplain/nested")
        raw.create(f"{root}/made%2Fby%20hand", b"raw")
        for key in ("50% off", ".", "ü/ß"):
            assert writer.put(key, key.encode())
        writer.publish_member(Member(name="w"))
        assert writer.delete("x/plain")
        assert writer.put("zz-end", b"")
        events = _events_until(everything, "zz-end")
        writer.close()
        member_events = [(e.kind, e.key) for e in _drain(members)]
    assert [(e.kind, e.key, e.value) for e in events] == [
        (EventKind.PUT, "made/by hand", b"raw"),
        (EventKind.PUT, "50% off", b"50% off"),
        (EventKind.PUT, ".", b"."),
        (EventKind.PUT, "ü/ß", "ü/ß".encode()),
        (EventKind.PUT, "members/w", Member(name="w").to_bytes()),
        (EventKind.DELETE, "x/plain", None),
    ]
    assert member_events == [(EventKind.PUT, "members/w"), (EventKind.DELETE, "members/w")]


def _events_for(watcher: Any, count: int, timeout: float = 30.0) -> list[WatchEvent]:
    """``count`` events; like an agent, calls get() again when it raises StoreUnavailableError
    (the replay after a reconnection could not be read yet)."""
    events: list[WatchEvent] = []
    deadline = time.monotonic() + timeout
    while len(events) < count and time.monotonic() < deadline:
        try:
            event = watcher.get(timeout=max(deadline - time.monotonic(), 0.0))
        except StoreUnavailableError:
            continue
        if event is not None:
            events.append(event)
    assert len(events) == count, f"expected {count} events, got {events}"
    return events


def _drain(watcher: Any, quiet: float = 1.0) -> list[WatchEvent]:
    events = []
    while (event := watcher.get(timeout=quiet)) is not None:
        events.append(event)
    return events


def test_granted_session_timeout_must_match_the_ttl(make: Factory) -> None:
    # The harness servers grant sessions of 0.5 to 60 seconds. kazoo gives each attempt to
    # open a session ttl / len(hosts) (67 ms for "short"): a slow disk fails many attempts.
    with pytest.raises(ConfigError, match=r"minSessionTimeout is 0\.5s"):
        make("short", ttl=0.2).leader()
    with pytest.raises(ConfigError, match=r"maxSessionTimeout is 60s"):
        make("long", ttl=120.0).leader()
    assert make("fine", ttl=0.5).leader() is None


# -- lost connections ---------------------------------------------------------------------


@pytest.mark.timeout(300, method="signal")
def test_suspended_session_makes_renew_raise_then_recovers(
    harness: ZooKeeperHarness, make: Factory
) -> None:
    # The campaign is set-up, not measured: it opens the session and writes two znodes.
    node = make("a", ttl=30.0)
    lease = node.campaign()
    assert lease is not None
    node.retry_timeout = QUICK
    everyone = list(range(len(harness.procs)))
    for index in everyone:
        harness.kill_member(index)
    restart_error: list[BaseException] = []
    try:
        # Killed servers drop the connection at once: the session is SUSPENDED, not expired.
        elapsed, error = _timed(lambda: node.renew(lease))
        assert isinstance(error, StoreUnavailableError), error
        assert QUICK - 0.1 <= elapsed <= QUICK + SLACK, f"renew raised after {elapsed:.2f}s"
        elapsed, error = _timed(lambda: node.leader())
        assert isinstance(error, StoreUnavailableError), error
        # A renew waits up to retry_timeout for the session to come back.
        node.retry_timeout = 120.0
        restarter = threading.Thread(
            target=_recording(restart_error, lambda: harness.restart_members(everyone))
        )
        restarter.start()
        elapsed, error = _timed(lambda: _expect_true(node.renew(lease)))
        restarter.join()
    finally:
        for index in everyone:
            if not harness.procs[index].alive():
                harness.restart_members(everyone)
                break
    assert not restart_error, f"restarting the ensemble failed: {restart_error[0]!r}"
    assert error is None, f"renew after the restart: {error!r}"
    assert elapsed > 0.5, "renew answered before any server was back"
    node.retry_timeout = PATIENT
    assert node.renew(lease) is True


def _expect_true(value: bool) -> None:
    assert value is True, "the session did not survive the restart of the ensemble"


def _recording(errors: list[BaseException], call: Callable[[], object]) -> Callable[[], None]:
    """``call`` for a thread: what it raises is kept in ``errors`` for the test to report."""

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            errors.append(exc)

    return run


@pytest.mark.timeout(300, method="signal")
def test_watch_is_restored_after_reconnecting_and_replays_missed_changes(
    harness: ZooKeeperHarness, make: Factory
) -> None:
    # The reader's only server is a follower: killing the leader would make the writer's
    # servers drop it for an election, and a delete lost on the way is not sent again.
    cut = _a_follower(harness)
    hosts = harness.settings()["hosts"]
    reader = make("reader", ttl=30.0, settings={"hosts": [hosts[cut]]})
    writer = make("writer", ttl=30.0, settings={"hosts": hosts[:cut] + hosts[cut + 1 :]})
    for key in ("r/keep", "r/gone", "r/changed"):
        assert writer.put(key, b"1")
    with reader.watch("r/") as watcher:
        harness.kill_member(cut)
        try:
            assert writer.delete("r/gone")
            assert writer.put("r/changed", b"2")
            assert writer.put("r/new", b"1")
            assert watcher.get(timeout=0.5) is None, "no event while the reader is cut off"
        finally:
            harness.restart_member(cut)
        assert writer.put("r/zz-after", b"1")
        events = _events_until(watcher, "r/zz-after", timeout=60)
    assert [(e.kind, e.key, e.value) for e in events] == [
        (EventKind.DELETE, "r/gone", None),
        (EventKind.PUT, "r/changed", b"2"),
        (EventKind.PUT, "r/new", b"1"),
    ]


def _a_follower(harness: ZooKeeperHarness, timeout: float = 60.0) -> int:
    """The index of a server that follows (not leads) the ensemble."""
    deadline = time.monotonic() + timeout
    while True:
        for index, entry in enumerate(harness.entries):
            if zk.server_mode(entry.client_address) == "follower":
                return index
        assert time.monotonic() < deadline, f"no server was a follower within {timeout:g}s"
        time.sleep(0.2)


@pytest.mark.timeout(120, method="signal")
def test_expired_session_is_reported_and_replaced(harness: ZooKeeperHarness, make: Factory) -> None:
    node, observer = make("a", ttl=5.0), make("observer")
    old = node.campaign()
    assert old is not None
    node.publish_member(Member(name="a"))
    assert node.keepalive() is True
    with node.watch("") as watcher:
        _expire_session(node, harness)
        deadline = time.monotonic() + 30
        while observer.leader() is not None or observer.members():
            assert time.monotonic() < deadline, "the expired session's ephemerals stay"
            time.sleep(0.05)
        assert _answer(lambda: node.renew(old)) is False
        assert _answer(node.keepalive) is False, "keepalive must report the expiry once"
        assert node.keepalive() is True
        # Seen live, or replayed once the watch is back with the new session: the keepalive
        # above is what opens it, as the agent's loop does (kazoo may or may not have already).
        gone = {(e.kind, e.key) for e in _events_for(watcher, 2)}
        assert gone == {(EventKind.DELETE, LEADER_KEY), (EventKind.DELETE, "members/a")}
        node.publish_member(Member(name="a"))
        new = node.campaign()
        assert new is not None and new.token > old.token
        assert node.renew(new) is True
        assert node.put("zz-end", b"")
        events = [(e.kind, e.key) for e in _events_until(watcher, "zz-end")]
    # A write around the reconnection may be reported twice (replayed, then live).
    assert list(dict.fromkeys(events)) == [
        (EventKind.PUT, "members/a"),
        (EventKind.PUT, LEADER_KEY),
    ]
    assert observer.members() == (Member(name="a"),)


def _expire_session(node: ZooKeeperConsensus, harness: ZooKeeperHarness) -> None:
    """Close the node's session from another connection, as a server does on expiry."""
    client = node._client
    assert client is not None and client.client_id is not None
    clone = KazooClient(hosts=",".join(harness.settings()["hosts"]), client_id=client.client_id)
    clone.start(timeout=30)
    clone.stop()
    clone.close()


def _answer(call: Callable[[], Any], timeout: float = 30.0) -> Any:
    """The first answer that is not StoreUnavailableError (the client is reconnecting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except StoreUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.mark.timeout(180, method="signal")
def test_frozen_ensemble_bounds_watch_campaign_and_close(
    harness: ZooKeeperHarness, make: Factory
) -> None:
    node = make("a", ttl=30.0)
    assert node.leader() is None  # set-up: opens the session, creates the namespace znode
    node.retry_timeout = QUICK
    harness.freeze()
    try:
        results = {
            "watch": _timed(lambda: node.watch("frozen/")),
            "campaign": _timed(node.campaign),
            "publish_member": _timed(lambda: node.publish_member(Member(name="a"))),
            "keepalive": _timed(node.keepalive),
            "conditional put": _timed(lambda: node.put("k", b"v", expect_version=0)),
        }
        closed, close_error = _timed(node.close)
    finally:
        harness.thaw()
    for name, (elapsed, error) in results.items():
        assert isinstance(error, StoreUnavailableError), f"{name}: {error!r}"
        assert elapsed <= QUICK + SLACK, f"{name} raised after {elapsed:.2f}s"
    assert close_error is None
    assert closed <= QUICK + SLACK, f"close() took {closed:.2f}s"


# -- managed servers ----------------------------------------------------------------------


@pytest.fixture
def stores(harness: ZooKeeperHarness, tmp_path: Path) -> Iterator[Callable[[str], Any]]:
    made: list[ZooKeeperManagedStore] = []

    def factory(name: str) -> ZooKeeperManagedStore:
        store = harness.make_managed_store(name, tmp_path / name)
        assert isinstance(store, ZooKeeperManagedStore)
        made.append(store)
        return store

    yield factory
    for store in made:
        store.stop()


def test_join_refuses_a_non_empty_data_dir(stores: Callable[[str], Any]) -> None:
    store = stores("m2")
    store.data_dir.mkdir(parents=True)
    (store.data_dir / "leftover").write_text("someone's data")
    spec = {"server_id": 2, "servers": ["server.1=127.0.0.1:1:2:participant;127.0.0.1:3"]}
    with pytest.raises(ManagedStoreError, match="not empty"):
        store.join({**spec, "super_password": "x"})
    assert [p.name for p in store.data_dir.iterdir()] == ["leftover"]
    assert not store.is_running()
    with pytest.raises(ManagedStoreError, match="not a ZooKeeper join spec"):
        stores("m3").join({"servers": []})


@pytest.mark.timeout(600, method="signal")
def test_managed_store_grows_and_shrinks_by_reconfig(
    stores: Callable[[str], Any], make: Factory
) -> None:
    m1, m2, m3, m4 = (stores(f"m{i}") for i in range(1, 5))
    me = m1.bootstrap()
    assert me.peer_url == f"127.0.0.1:{m1.config.peer_port}:{m1.config.election_port}"
    assert me.client_url == f"127.0.0.1:{m1.config.client_port}"
    assert [(m.name, m.voting, m.healthy) for m in m1.members()] == [("m1", True, True)]

    spec = m1.add_member(m2.identity())
    assert spec["server_id"] == 2
    assert m1.add_member(m2.identity())["server_id"] == 2, "add_member must be idempotent"
    assert [zk.ServerEntry.parse(line).server_id for line in spec["servers"]] == [1]
    m2.join(json.loads(json.dumps(spec)))
    m3.join(m2.add_member(m3.identity()))
    members = m3.members()
    assert [m.name for m in members] == ["m1", "m2", "m3"]
    assert all(m.voting and m.healthy for m in members), members
    everyone = {s.client_address for s in (m1, m2, m3)}
    for store in (m1, m2, m3):
        assert set(store.client_settings()["hosts"]) == everyone

    # Ids are never reused, not even the highest one after its server left.
    m1.remove_member("m3")
    m3.stop()
    m4.join(m2.add_member(m4.identity()))
    assert json.loads(_registry(m4.client_address))["names"] == {"m1": 1, "m2": 2, "m4": 4}
    assert [m.name for m in m4.members()] == ["m1", "m2", "m4"]

    # Removing ZooKeeper's leader drops every client connection on the way.
    by_name = {"m1": m1, "m2": m2, "m4": m4}
    leader = next(n for n, s in by_name.items() if zk.server_mode(s.client_address) == "leader")
    other = next(s for n, s in by_name.items() if n != leader)
    other.remove_member(leader)
    other.remove_member(leader)
    remaining = sorted(set(by_name) - {leader})
    assert [m.name for m in other.members()] == remaining
    by_name.pop(leader).stop()

    node = make("after", settings=other.client_settings())
    assert sorted(node.settings["hosts"]) == sorted(s.client_address for s in by_name.values())
    assert node.put("k", b"v")
    assert node.campaign() is not None


def _registry(address: str) -> bytes:
    client = KazooClient(hosts=address)
    client.start(timeout=30)
    try:
        data, _ = client.get("/hacore-zookeeper/servers")
        return bytes(data)
    finally:
        client.stop()
        client.close()


@pytest.mark.timeout(300, method="signal")
def test_digest_auth_keeps_other_users_out(stores: Callable[[str], Any], namespace: str) -> None:
    store = stores("m1")
    store.bootstrap()
    hosts = store.client_settings()["hosts"]

    def backend(name: str, auth: dict[str, str] | None) -> ZooKeeperConsensus:
        settings: dict[str, Any] = {"hosts": hosts}
        if auth:
            settings["auth"] = auth
        return ZooKeeperConsensus(
            settings, namespace=namespace, node_name=name, ttl=5.0, retry_timeout=5.0
        )

    owner = backend("owner", {"user": "hacore", "password": "right"})
    same_user = backend("again", {"user": "hacore", "password": "right"})
    wrong = backend("wrong", {"user": "hacore", "password": "wrong"})
    anonymous = backend("anonymous", None)
    try:
        assert owner.put("secret", b"1")
        assert owner.campaign() is not None
        kv = same_user.get("secret")
        assert kv is not None and kv.value == b"1"
        assert same_user.leader() is not None
        for intruder in (wrong, anonymous):
            with pytest.raises(ConfigError, match="check the zookeeper auth setting"):
                intruder.get("secret")
            with pytest.raises(ConfigError, match="check the zookeeper auth setting"):
                intruder.put("secret", b"2")
    finally:
        for node in (owner, same_user, wrong, anonymous):
            node.close()


@pytest.mark.timeout(120, method="signal")
def test_an_answer_out_of_order_reconnects_instead_of_ending_the_client(make: Factory) -> None:
    """kazoo ends its connection thread on an xid it does not expect (kazoo issue 254, seen
    here after a session expiry on a loaded machine): the client takes it for a dropped
    connection, fails what was pending, and connects again (same client, no restart)."""
    node = make("a")
    assert _answer(node.leader) is None
    client = node._client
    assert client is not None
    # the next answer is matched against a request the server never saw
    stray = client.handler.async_result()
    client._pending.appendleft((None, stray, 2**30))
    assert _answer(node.leader) is None
    assert stray.exception is not None and "xids do not match" in str(stray.exception)
    assert node._client is client and not client.loop_ended


@pytest.mark.timeout(120, method="signal")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_client_whose_connection_thread_died_is_replaced(make: Factory) -> None:
    """Any other error kazoo's connection thread does not handle ends it for good: the
    backend notices at its next call and starts a new client."""
    node = make("a", ttl=5.0)
    node.publish_member(Member(name="a"))
    assert _answer(node.keepalive) is True
    client = node._client
    assert client is not None

    def broken(timeout: float) -> Any:
        raise ValueError("injected: a bug in the connection thread")

    client._connection._read_socket = broken
    client.sync_async("/")  # an answer to read: the thread meets the error and ends
    wait_for(lambda: client.loop_ended, 30, what="the connection thread to end")
    assert _answer(node.keepalive) is False, "the member record's session is gone"
    assert node._client is not client and node._client is not None
    assert not node._client.loop_ended
    assert _answer(node.keepalive) is True  # bound to the new session from now on
