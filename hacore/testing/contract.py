"""The consensus contract: what every backend must do, as test classes to subclass.

A backend passes when these classes pass against a real store. They take their fixtures from
:mod:`hacore.testing.pytest_plugin` only (``consensus_harness``, ``consensus_factory``,
``managed_store_factory``), so a backend author runs them with::

    from hacore.testing.contract import ConsensusContract, ManagedStoreContract

    class TestMine(ConsensusContract): pass
    class TestMineManaged(ManagedStoreContract): pass

(see :mod:`hacore.testing.pytest_plugin` for selecting or providing the harness).

Timeouts are generous wherever the number is not the contract; where it is (lease expiry,
watch latency, resign handover, bounded errors) the assertion message gives the measurement.
Tests that injure the store (kill a server, freeze all) restore it in ``finally`` and carry a
hard pytest-timeout, so a hanging backend fails the test instead of the session.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from pathlib import Path
from typing import Any

import attrs
import pytest

from hacore.backends.consensus import CONFIG_KEY, LEADER_KEY, ConsensusBackend, ManagedStore
from hacore.backends.records import (
    ClusterView,
    EventKind,
    Leader,
    Lease,
    Member,
    NodeRole,
    WatchEvent,
)
from hacore.errors import ManagedStoreError, StoreUnavailableError
from hacore.testing.contract_support import (
    Change,
    KillableLeader,
    answered,
    check_coalesced,
    check_event_values,
    collect_until,
    eventually,
    merge_client_settings,
    timed,
)
from hacore.testing.harness import ConsensusHarness
from hacore.testing.pytest_plugin import ConsensusFactory, ManagedStoreFactory

#: Seconds a freshly written value may take to be visible through another client.
VISIBLE = 5.0
#: TTL of the leaders that are killed: short, since the test waits for it to run out.
SHORT_TTL = 3.0
#: What "within retry_timeout" may overshoot by (thread scheduling, a loaded machine).
SLACK = 1.0
#: How long a contender waits on its watch: far beyond any handover, so only an event wakes it.
WATCH_PATIENCE = 120.0


def _campaign_all(backends: list[ConsensusBackend]) -> list[Lease | BaseException | None]:
    """Every backend campaigns at the same instant, each from its own thread."""
    barrier = threading.Barrier(len(backends))
    results: list[Lease | BaseException | None] = [None] * len(backends)

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[index] = backends[index].campaign()
        except Exception as err:
            results[index] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(backends))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


class ConsensusContract:
    """Leadership, members, versioned keys and watches on one running store."""

    # -- leadership ------------------------------------------------------------------------

    def test_campaign_is_mutually_exclusive(self, consensus_factory: ConsensusFactory) -> None:
        contenders = [consensus_factory(f"node{i}") for i in range(10)]
        for _ in range(3):
            results = _campaign_all(contenders)
            errors = [r for r in results if isinstance(r, BaseException)]
            assert not errors, f"campaign raised: {errors!r}"
            winners = [(c, r) for c, r in zip(contenders, results, strict=True) if r is not None]
            assert len(winners) == 1, f"{len(winners)} contenders won: {winners!r}"
            winner, lease = winners[0]
            assert isinstance(lease, Lease)
            assert lease.holder == winner.node_name
            expected = Leader(name=winner.node_name, token=lease.token)
            for contender in contenders:
                eventually(
                    functools.partial(_sees_leader, contender, expected),
                    VISIBLE,
                    f"{contender.node_name} sees {expected}",
                )
            assert winner.renew(lease) is True
            winner.resign(lease)
            contenders.remove(winner)

    def test_campaign_while_leader_returns_current_lease(
        self, consensus_factory: ConsensusFactory
    ) -> None:
        node = consensus_factory("a")
        lease = node.campaign()
        assert lease is not None
        again = node.campaign()
        assert again is not None
        assert (again.holder, again.token) == (lease.holder, lease.token)
        assert node.renew(again) is True

    def test_campaign_leaves_an_earlier_sessions_key_alone(
        self, consensus_factory: ConsensusFactory
    ) -> None:
        """A restarted agent (same node name, new session) must not adopt its old session's
        leader key: it could never renew it. The agent asks ``campaign()`` whenever the key
        names it, so this None is what keeps that safe."""
        earlier = consensus_factory("a")
        lease = earlier.campaign()
        assert lease is not None
        restarted = consensus_factory("a")
        assert restarted.campaign() is None
        assert restarted.leader() == Leader(name="a", token=lease.token)
        assert earlier.renew(lease) is True

    def test_fencing_token_increases_over_handovers(
        self, consensus_factory: ConsensusFactory
    ) -> None:
        nodes = [consensus_factory(f"node{i}") for i in range(3)]
        tokens: list[int] = []
        for handover in range(20):
            node = nodes[handover % len(nodes)]
            lease = node.campaign()
            assert lease is not None, f"handover {handover}: {node.node_name} did not win"
            assert node.leader() == Leader(name=node.node_name, token=lease.token)
            if tokens:
                assert lease.token > tokens[-1], f"tokens do not increase: {[*tokens, lease]}"
            tokens.append(lease.token)
            node.resign(lease)

    def test_resign_wakes_a_waiting_contender_at_once(
        self, consensus_factory: ConsensusFactory
    ) -> None:
        """The contender waits on its watch far longer than the test runs, so nothing but the
        watch's report of the deletion can make it campaign again: the handover is proven by
        that event, not by a number (benchmarks/wakeups.py measures how long it takes)."""
        holder, contender = consensus_factory("holder"), consensus_factory("contender")
        lease = holder.campaign()
        assert lease is not None
        waiting, stop = threading.Event(), threading.Event()
        won: list[float] = []
        woken_by: list[WatchEvent | None] = []
        failures: list[BaseException] = []

        def contend() -> None:
            try:
                with contender.watch(LEADER_KEY) as watcher:
                    while not stop.is_set():
                        if contender.campaign() is not None:
                            won.append(time.monotonic())
                            return
                        waiting.set()
                        # Opened before the campaign: a deletion after it is queued, never
                        # missed, whenever this get starts.
                        woken_by.append(watcher.get(timeout=WATCH_PATIENCE))
            except Exception as err:
                failures.append(err)

        thread = threading.Thread(target=contend)
        thread.start()
        try:
            assert waiting.wait(30), "the contender never campaigned"
            resigned = time.monotonic()
            holder.resign(lease)
            thread.join(timeout=WATCH_PATIENCE / 2)
        finally:
            stop.set()
            thread.join(timeout=WATCH_PATIENCE)
        assert not failures, f"contender failed: {failures!r}"
        assert won, f"the contender never won after the resign; its watch gave {woken_by}"
        assert woken_by and woken_by[-1] is not None, f"not woken by the watch: {woken_by}"
        assert (woken_by[-1].kind, woken_by[-1].key) == (EventKind.DELETE, LEADER_KEY), woken_by
        print(f"handover {won[0] - resigned:.3f}s after the resign")
        leader = contender.leader()
        assert leader is not None and leader.name == "contender"

    def test_killed_leader_loses_key_within_ttl(
        self,
        consensus_harness: ConsensusHarness,
        consensus_factory: ConsensusFactory,
        tmp_path: Path,
    ) -> None:
        observer = consensus_factory("observer")
        holder = KillableLeader(
            consensus_harness,
            consensus_factory,
            consensus_factory.namespace,
            tmp_path,
            name="holder",
            ttl=SHORT_TTL,
        )
        try:
            token = holder.start()
            expected = Leader(name="holder", token=token)
            eventually(lambda: observer.leader() == expected, VISIBLE, f"leader is {expected}")
            eventually(
                lambda: "holder" in [m.name for m in observer.members()],
                VISIBLE,
                "the holder's member record is published",
            )
            seen: dict[tuple[EventKind, str], float] = {}
            stop = threading.Event()
            with observer.watch("") as watcher:

                def watch() -> None:
                    while not stop.is_set():
                        event = watcher.get(timeout=0.1)
                        if event is not None:
                            seen.setdefault((event.kind, event.key), time.monotonic())

                thread = threading.Thread(target=watch)
                thread.start()
                try:
                    killed = time.monotonic()
                    holder.kill()
                    leader_gone = _poll_until(
                        lambda: observer.leader() is None, SHORT_TTL + 15, "the leader key is gone"
                    )
                    member_gone = _poll_until(
                        lambda: "holder" not in [m.name for m in observer.members()],
                        10,
                        "the holder's member record is gone",
                    )
                    eventually(
                        lambda: (EventKind.DELETE, LEADER_KEY) in seen,
                        VISIBLE,
                        "the watcher to report the deletion of the leader key",
                    )
                finally:
                    stop.set()
                    thread.join(timeout=10)
        finally:
            holder.stop()
        # What a standby waits for before it may campaign: the promise "one active again
        # within 2 x ttl" rests on the dead leader's key going within ttl (+ one second for
        # the store's own expiry tick). How fast the watch reports it is a number:
        # benchmarks/consensus.py measures it.
        budget = SHORT_TTL + 1.0
        assert leader_gone - killed <= budget, (
            f"leader key vanished {leader_gone - killed:.2f}s after the kill (ttl {SHORT_TTL:g}s)"
        )
        assert member_gone - killed <= budget, (
            f"member record vanished {member_gone - killed:.2f}s after the kill "
            f"(ttl {SHORT_TTL:g}s)"
        )
        assert (EventKind.DELETE, LEADER_KEY) in seen, f"no deletion of the leader key: {seen}"

    def test_renewed_session_outlives_its_ttl(self, consensus_factory: ConsensusFactory) -> None:
        leader = consensus_factory("leader", ttl=SHORT_TTL)
        standby = consensus_factory("standby", ttl=SHORT_TTL)
        observer = consensus_factory("observer")
        lease = leader.campaign()
        assert lease is not None
        leader.publish_member(Member(name="leader", role=NodeRole.ACTIVE))
        standby.publish_member(Member(name="standby", role=NodeRole.STANDBY))
        until = time.monotonic() + 2.5 * SHORT_TTL
        while time.monotonic() < until:
            time.sleep(SHORT_TTL / 4)
            assert leader.renew(lease) is True, "renew of a live lease failed"
            assert standby.keepalive() is True, "keepalive of a live session failed"
        assert observer.leader() == Leader(name="leader", token=lease.token)
        assert [m.name for m in observer.members()] == ["leader", "standby"]

    def test_renew_fails_once_leadership_is_lost(self, consensus_factory: ConsensusFactory) -> None:
        first, second, third = (consensus_factory(n) for n in ("first", "second", "third"))
        old = first.campaign()
        assert old is not None
        first.resign(old)
        new = second.campaign()
        assert new is not None, "campaign after resign must win"
        assert first.renew(old) is False, "renew of a resigned lease held by another node"
        first.resign(old)
        assert second.leader() == Leader(name="second", token=new.token), (
            "a stale resign removed the new leader"
        )
        assert second.renew(new) is True
        assert third.delete(LEADER_KEY) is True, "the leader key is a key of the namespace"
        assert second.renew(new) is False, "renew after the leader key was deleted"

    # -- members ---------------------------------------------------------------------------

    def test_members_are_published_and_vanish_with_their_session(
        self, consensus_factory: ConsensusFactory
    ) -> None:
        a, b, observer = (consensus_factory(n) for n in ("a", "b", "observer"))
        member_a = Member(
            name="a",
            api_url="https://127.0.0.1:8008",
            host="127.0.0.1",
            role=NodeRole.STANDBY,
            healthy=True,
            position=1234,
            timeline=2,
            version="1.0",
            checks={"db": {"ok": True, "detail": "ü"}},
            extra={"zone": "z1"},
        )
        member_b = Member(name="b", role=NodeRole.ACTIVE)
        b.publish_member(member_b)
        a.publish_member(member_a)
        got = eventually(lambda: _full_members(observer, 2), VISIBLE, "two member records")
        assert got == (_full(member_a), _full(member_b))
        updated = attrs.evolve(member_a, healthy=False, position=1300)
        a.publish_member(updated)
        eventually(
            lambda: _full_members(observer, 2) == (_full(updated), _full(member_b)),
            VISIBLE,
            "the republished record replaces the old one",
        )
        a.close()
        eventually(
            lambda: _full_members(observer, 1) == (_full(member_b),),
            VISIBLE,
            "a's record vanishes when it closes",
        )

    def test_view_is_one_consistent_snapshot(self, consensus_factory: ConsensusFactory) -> None:
        a, observer = consensus_factory("a"), consensus_factory("observer")
        member = Member(name="a", role=NodeRole.ACTIVE, healthy=True)
        a.publish_member(member)
        lease = a.campaign()
        assert lease is not None
        assert a.put(CONFIG_KEY, b'{"ttl": 30}')

        def complete_view() -> ClusterView | None:
            view = observer.view()
            return view if view.leader and view.members and view.config else None

        view = eventually(complete_view, VISIBLE, "a view with leader, members and config")
        assert view.leader == Leader(name="a", token=lease.token)
        assert view.members == observer.members() == (member,)
        assert view.member("a") == member
        assert view.config == observer.get(CONFIG_KEY)
        assert view.config is not None and view.config.value == b'{"ttl": 30}'

    # -- versioned keys --------------------------------------------------------------------

    def test_put_with_version_zero_creates_only_if_absent(
        self, consensus_factory: ConsensusFactory
    ) -> None:
        a, b = consensus_factory("a"), consensus_factory("b")
        assert a.put("state/lock", b"a", expect_version=0) is True
        assert b.put("state/lock", b"b", expect_version=0) is False
        kv = b.get("state/lock")
        assert kv is not None and kv.value == b"a" and kv.version > 0
        assert b.delete("state/lock", expect_version=0) is False
        assert a.delete("state/lock") is True
        assert b.put("state/lock", b"b", expect_version=0) is True

    def test_stale_compare_and_set_is_refused(self, consensus_factory: ConsensusFactory) -> None:
        a, b = consensus_factory("a"), consensus_factory("b")
        assert a.put("cas", b"1")
        first = a.get("cas")
        assert first is not None and first.value == b"1"
        assert a.put("cas", b"2", expect_version=first.version) is True
        second = a.get("cas")
        assert second is not None and second.value == b"2"
        assert second.version != first.version
        assert b.put("cas", b"3", expect_version=first.version) is False
        assert b.get("cas") == second
        assert a.put("cas", b"2") is True
        third = a.get("cas")
        assert third is not None and third.version not in (first.version, second.version), (
            "the version must change on every write, even of the same value"
        )
        assert b.delete("cas", expect_version=second.version) is False
        assert a.get("cas") == third
        assert b.delete("cas", expect_version=third.version) is True
        assert a.get("cas") is None
        assert a.delete("cas") is False
        assert a.put("cas", b"4", expect_version=third.version) is False
        assert a.get("cas") is None

    def test_concurrent_compare_and_set_loses_no_update(
        self, consensus_factory: ConsensusFactory
    ) -> None:
        writers = [consensus_factory(f"w{i}") for i in range(5)]
        increments = 8
        assert writers[0].put("counter", b"0", expect_version=0)
        failures: list[BaseException] = []

        def increment(backend: ConsensusBackend) -> None:
            try:
                for _ in range(increments):
                    while True:
                        kv = backend.get("counter")
                        assert kv is not None
                        value = str(int(kv.value) + 1).encode()
                        if backend.put("counter", value, expect_version=kv.version):
                            break
            except Exception as err:
                failures.append(err)

        threads = [threading.Thread(target=increment, args=(w,)) for w in writers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not failures, f"a writer failed: {failures!r}"
        kv = writers[0].get("counter")
        assert kv is not None and int(kv.value) == len(writers) * increments

    def test_values_and_prefix_listing(self, consensus_factory: ConsensusFactory) -> None:
        a = consensus_factory("a")
        values = {
            "p/b": b"\x00\xff binary",
            "p/a": b"",
            "p/c/deep": "ünïcode".encode(),
            "p": b"the prefix itself",
            "q/x": b"elsewhere",
            "px": b"sibling",
        }
        for key, value in values.items():
            assert a.put(key, value)
        listed = a.get_prefix("p/")
        assert [kv.key for kv in listed] == ["p/a", "p/b", "p/c/deep"]
        assert [kv.value for kv in listed] == [values["p/a"], values["p/b"], values["p/c/deep"]]
        assert all(kv == a.get(kv.key) for kv in listed)
        assert a.get("p/missing") is None
        assert a.get_prefix("nothing/") == ()

    def test_namespaces_are_isolated(self, consensus_factory: ConsensusFactory) -> None:
        a = consensus_factory("a")
        b = consensus_factory("b", namespace=consensus_factory.namespace + "x")
        with b.watch("") as watcher:
            lease = a.campaign()
            assert lease is not None
            assert a.put("shared", b"a")
            a.publish_member(Member(name="a"))
            assert b.leader() is None
            assert b.get("shared") is None
            assert b.members() == ()
            assert b.campaign() is not None, "a leader in another namespace blocks the campaign"
            assert b.put("shared", b"b", expect_version=0)
            events = collect_until(watcher, "shared", 10)
            assert [(e.kind, e.key) for e in events] == [(EventKind.PUT, LEADER_KEY)]
        kv = a.get("shared")
        assert kv is not None and kv.value == b"a"

    # -- watches ---------------------------------------------------------------------------

    def test_watch_delivers_every_change_in_order(
        self, consensus_factory: ConsensusFactory
    ) -> None:
        writer, reader = consensus_factory("writer"), consensus_factory("reader")
        changes: list[Change] = [
            (EventKind.PUT, "w/a", b"a1"),
            (EventKind.PUT, "w/b", b"b1"),
            (EventKind.PUT, "w/a", b"a2"),
            (EventKind.DELETE, "w/b", None),
            (EventKind.PUT, "w/c/deep", b"c1"),
            (EventKind.PUT, "w/b", b"b2"),
            (EventKind.DELETE, "w/a", None),
            (EventKind.PUT, "w/c/deep", b"c2"),
            (EventKind.PUT, "w/a", b"a3"),
            (EventKind.DELETE, "w/c/deep", None),
        ]
        noise = ["wx/a", "w", "other/w/a"]
        with reader.watch("w/") as watcher:
            for index, (kind, key, value) in enumerate(changes):
                if kind is EventKind.PUT:
                    assert value is not None
                    assert writer.put(key, value)
                else:
                    assert writer.delete(key)
                if index < len(noise):
                    assert writer.put(noise[index], b"noise")
            assert writer.put("w/zz-end", b"end")
            events = collect_until(watcher, "w/zz-end", 15)
        stray = [e for e in events if not e.key.startswith("w/")]
        assert not stray, f"events outside the watched prefix: {stray}"
        if "ordered_watch" in type(writer).capabilities:
            assert [(e.kind, e.key) for e in events] == [(k, key) for k, key, _ in changes]
        else:
            check_coalesced(events, changes)
        check_event_values(events, changes)

    def test_watch_is_in_force_when_it_returns(self, consensus_factory: ConsensusFactory) -> None:
        writer, reader = consensus_factory("writer"), consensus_factory("reader")
        for attempt in range(5):
            with reader.watch(f"race{attempt}/") as watcher:
                assert writer.put(f"race{attempt}/k", b"v")
                event = watcher.get(timeout=10)
                assert event is not None, f"attempt {attempt}: the first change was missed"
                assert (event.kind, event.key) == (EventKind.PUT, f"race{attempt}/k")

    def test_watch_sees_only_its_prefix(self, consensus_factory: ConsensusFactory) -> None:
        writer, reader = consensus_factory("writer"), consensus_factory("reader")
        with reader.watch("pa/") as watcher:
            assert writer.put("pb/x", b"1")
            assert writer.put("pa-sibling/x", b"1")
            assert writer.put("pb/pa/x", b"1")
            assert writer.put("pa/x", b"2")
            event = watcher.get(timeout=10)
            assert event == WatchEvent(EventKind.PUT, "pa/x", b"2")

    def test_watch_get_returns_none_when_quiet(self, consensus_factory: ConsensusFactory) -> None:
        reader = consensus_factory("reader")
        watcher = reader.watch("quiet/")
        elapsed, error = timed(lambda: watcher.get(timeout=0.5))
        assert error is None
        assert 0.4 <= elapsed <= 0.5 + SLACK, f"get(timeout=0.5) returned after {elapsed:.2f}s"
        assert watcher.get(timeout=0.1) is None
        watcher.close()
        watcher.close()

    # -- faults ----------------------------------------------------------------------------

    @pytest.mark.timeout(240, method="signal")
    def test_operations_continue_when_one_server_is_killed(
        self, consensus_harness: ConsensusHarness, consensus_factory: ConsensusFactory
    ) -> None:
        if not consensus_harness.can_kill_member:
            pytest.skip(f"{consensus_harness.backend_name}: the store cannot lose one server")
        node = consensus_factory("a", ttl=20.0, retry_timeout=2.0)
        lease = node.campaign()
        assert lease is not None
        assert node.put("before", b"1")
        consensus_harness.kill_member(0)
        try:
            assert answered(lambda: node.put("after", b"2"), 30, "a write after the kill")
            assert answered(lambda: node.renew(lease), 30, "renew after the kill") is True
            late = consensus_factory("late", retry_timeout=2.0)
            assert answered(late.leader, 30, "leader() of a new backend") == Leader(
                name="a", token=lease.token
            )
            after = answered(lambda: late.get("after"), 30, "a read of a new backend")
            assert after is not None and after.value == b"2"
        finally:
            consensus_harness.restart_member(0)
        assert answered(lambda: node.renew(lease), 30, "renew after the restart") is True

    @pytest.mark.timeout(180, method="signal")
    def test_frozen_store_raises_within_retry_timeout(
        self, consensus_harness: ConsensusHarness, consensus_factory: ConsensusFactory
    ) -> None:
        if not consensus_harness.can_freeze:
            pytest.skip(f"{consensus_harness.backend_name}: the store cannot be frozen")
        retry_timeout = 1.0
        node = consensus_factory("a", ttl=30.0, retry_timeout=retry_timeout)
        lease = node.campaign()
        assert lease is not None
        watcher = node.watch("frozen/")
        calls: dict[str, Any] = {
            "renew": lambda: node.renew(lease),
            "leader": node.leader,
            "put": lambda: node.put("frozen/k", b"1"),
            "members": node.members,
        }
        results: dict[str, tuple[float, BaseException | None]] = {}
        consensus_harness.freeze()
        try:
            for name, call in calls.items():
                results[name] = timed(call)
            watch_elapsed, watch_error = timed(lambda: watcher.get(timeout=0.5))
        finally:
            consensus_harness.thaw()
        for name, (elapsed, error) in results.items():
            assert isinstance(error, StoreUnavailableError), (
                f"{name}() on a frozen store: {error!r} after {elapsed:.2f}s"
            )
            assert elapsed <= retry_timeout + SLACK, (
                f"{name}() raised after {elapsed:.2f}s (retry_timeout {retry_timeout:g}s)"
            )
        assert watch_error is None or isinstance(watch_error, StoreUnavailableError)
        assert watch_elapsed <= 0.5 + retry_timeout + SLACK, (
            f"watcher.get(0.5) on a frozen store took {watch_elapsed:.2f}s"
        )
        answered(node.leader, 60, "leader() once the store is thawed")
        watcher.close()

    @pytest.mark.timeout(120, method="signal")
    def test_unreachable_store_raises_instead_of_hanging(
        self, consensus_harness: ConsensusHarness, consensus_factory: ConsensusFactory
    ) -> None:
        try:
            settings = consensus_harness.unreachable_settings()
        except NotImplementedError:
            pytest.skip(f"{consensus_harness.backend_name}: harness has no unreachable_settings()")
        retry_timeout = 1.0
        made: list[ConsensusBackend] = []
        elapsed, error = timed(
            lambda: made.append(
                consensus_factory("lost", settings=settings, retry_timeout=retry_timeout)
            )
        )
        assert elapsed <= retry_timeout + SLACK, f"making the backend took {elapsed:.2f}s"
        if isinstance(error, StoreUnavailableError):
            return
        assert error is None, f"making a backend for an unreachable store raised {error!r}"
        node = made[0]
        calls: dict[str, Any] = {
            "campaign": node.campaign,
            "leader": node.leader,
            "publish_member": lambda: node.publish_member(Member(name="lost")),
            "get": lambda: node.get("k"),
            "put": lambda: node.put("k", b"v"),
        }
        for name, call in calls.items():
            elapsed, error = timed(call)
            assert isinstance(error, StoreUnavailableError), (
                f"{name}() on an unreachable store: {error!r} after {elapsed:.2f}s"
            )
            assert elapsed <= retry_timeout + SLACK, (
                f"{name}() raised after {elapsed:.2f}s (retry_timeout {retry_timeout:g}s)"
            )
        elapsed, error = timed(node.close)
        assert elapsed <= retry_timeout + SLACK, f"close() took {elapsed:.2f}s"


class ManagedStoreContract:
    """A store run by hacore itself: bootstrap, join, loss of a member, removal."""

    @pytest.mark.timeout(60)
    def test_bootstrap_refuses_a_non_empty_data_dir(
        self, managed_store_factory: ManagedStoreFactory
    ) -> None:
        store = managed_store_factory("m1")
        store.data_dir.mkdir(parents=True, exist_ok=True)
        (store.data_dir / "leftover").write_text("someone's data")
        with pytest.raises(ManagedStoreError):
            store.bootstrap()
        assert (store.data_dir / "leftover").read_text() == "someone's data"
        assert not store.is_running()

    @pytest.mark.timeout(300, method="signal")
    def test_three_members_survive_the_loss_of_one(
        self,
        managed_store_factory: ManagedStoreFactory,
        consensus_factory: ConsensusFactory,
    ) -> None:
        stores = _build_store(managed_store_factory, 3)
        members = stores[0].members()
        assert sorted(m.name for m in members) == ["m1", "m2", "m3"]
        assert all(m.voting for m in members), f"not every member votes: {members}"
        stores[0].stop()
        assert not stores[0].is_running()
        survivor = consensus_factory(
            "survivor", settings=merge_client_settings(stores[1:]), retry_timeout=2.0
        )
        lease = eventually(survivor.campaign, 60, "a campaign on the two remaining members")
        assert survivor.renew(lease) is True
        assert answered(lambda: survivor.put("managed/k", b"v"), 30, "a write")
        stores[0].start()
        assert stores[0].is_running()
        rejoined = consensus_factory(
            "rejoined", settings=stores[0].client_settings(), retry_timeout=2.0
        )

        def caught_up() -> bool:
            kv = rejoined.get("managed/k")
            return kv is not None and kv.value == b"v"

        eventually(caught_up, 60, "the restarted member serves the write made while it was down")

    @pytest.mark.timeout(300, method="signal")
    def test_remove_member_shrinks_the_store(
        self,
        managed_store_factory: ManagedStoreFactory,
        consensus_factory: ConsensusFactory,
    ) -> None:
        stores = _build_store(managed_store_factory, 3)
        stores[0].remove_member("m3")
        stores[2].stop()
        eventually(
            lambda: sorted(m.name for m in stores[0].members()) == ["m1", "m2"],
            60,
            "m3 is gone from the members",
        )
        stores[1].remove_member("m3")
        assert sorted(m.name for m in stores[1].members()) == ["m1", "m2"]
        node = consensus_factory(
            "after", settings=merge_client_settings(stores[:2]), retry_timeout=2.0
        )
        assert eventually(node.campaign, 60, "a campaign on the shrunk store") is not None
        assert node.put("managed/after", b"1")


def _build_store(factory: ManagedStoreFactory, size: int) -> list[ManagedStore]:
    """bootstrap on the first, then identity / add_member / join for each other."""
    stores = [factory(f"m{i + 1}") for i in range(size)]
    first = stores[0].bootstrap()
    assert first.name == "m1"
    for store in stores[1:]:
        spec = stores[0].add_member(store.identity())
        joined = store.join(json.loads(json.dumps(spec)))
        assert joined.name == store.name
    return stores


def _sees_leader(backend: ConsensusBackend, expected: Leader) -> bool:
    return backend.leader() == expected


def _poll_until(predicate: Any, timeout: float, what: str) -> float:
    """The monotonic time ``predicate`` first held (store outages retried)."""
    eventually(predicate, timeout, what)
    return time.monotonic()


def _full(member: Member) -> tuple[Member, dict[str, Any], dict[str, Any]]:
    return (member, dict(member.checks), dict(member.extra))


def _full_members(
    backend: ConsensusBackend, count: int
) -> tuple[tuple[Member, dict[str, Any], dict[str, Any]], ...] | None:
    """Members with the fields equality ignores, once there are ``count`` of them."""
    members = backend.members()
    return tuple(_full(m) for m in members) if len(members) == count else None
