"""The consensus contract, what the store holds: member records that vanish with their
session, one consistent cluster view, versioned keys with compare-and-set, namespaces, and
watches that deliver every change in order."""

from __future__ import annotations

import threading
from typing import Any

import attrs

from hacore.backends.consensus import CONFIG_KEY, LEADER_KEY, ConsensusBackend
from hacore.backends.records import ClusterView, EventKind, Leader, Member, NodeRole, WatchEvent
from hacore.testing.contract_support import (
    SLACK,
    VISIBLE,
    Change,
    check_coalesced,
    check_event_values,
    collect_until,
    eventually,
    timed,
)
from hacore.testing.pytest_plugin import ConsensusFactory


class MemberRecordsContract:
    """Member records and the cluster view."""

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


class VersionedKeysContract:
    """Values, versions, compare-and-set, prefixes and namespaces."""

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


class WatchContract:
    """Watches on a prefix."""

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


def _full(member: Member) -> tuple[Member, dict[str, Any], dict[str, Any]]:
    return (member, dict(member.checks), dict(member.extra))


def _full_members(
    backend: ConsensusBackend, count: int
) -> tuple[tuple[Member, dict[str, Any], dict[str, Any]], ...] | None:
    """Members with the fields equality ignores, once there are ``count`` of them."""
    members = backend.members()
    return tuple(_full(m) for m in members) if len(members) == count else None
