"""Records are immutable values: they round-trip through bytes and cannot be changed."""

from __future__ import annotations

import json

import attrs
import pytest

from hacore.backends.records import (
    ClusterView,
    EventKind,
    KeyValue,
    Leader,
    Lease,
    Member,
    NodeRole,
    StoreMember,
    WatchEvent,
)

FULL_MEMBER = Member(
    name="node-2",
    api_url="https://10.0.0.2:8008",
    host="10.0.0.2",
    role=NodeRole.STANDBY,
    healthy=True,
    position=0x3000060,
    timeline=3,
    version="1.2.0",
    checks={"postgres": {"ok": True, "detail": "streaming"}, "disk": {"ok": False}},
    extra={"zone": "b", "tags": ["x", "ÿ"]},
)


def test_member_round_trips_through_bytes() -> None:
    raw = FULL_MEMBER.to_bytes()
    again = Member.from_bytes(raw)
    assert again == FULL_MEMBER
    assert again.role is NodeRole.STANDBY
    assert dict(again.checks) == dict(FULL_MEMBER.checks)
    assert dict(again.extra) == dict(FULL_MEMBER.extra)
    assert again.to_bytes() == raw


def test_member_bytes_are_plain_json() -> None:
    data = json.loads(Member(name="a", role=NodeRole.ACTIVE).to_bytes())
    assert data["name"] == "a"
    assert data["role"] == "active"
    assert data["position"] is None


def test_member_from_newer_or_older_writers() -> None:
    newer = json.dumps({"name": "a", "role": "fenced", "from_the_future": 1}).encode()
    assert Member.from_bytes(newer) == Member(name="a", role=NodeRole.FENCED)
    older = json.dumps({"name": "b"}).encode()
    assert Member.from_bytes(older) == Member(name="b", role=NodeRole.UNKNOWN)


def test_member_rejects_an_unknown_role() -> None:
    with pytest.raises(ValueError):
        Member.from_bytes(json.dumps({"name": "a", "role": "boss"}).encode())


def test_member_copies_its_mappings() -> None:
    checks = {"db": {"ok": True}}
    member = Member(name="a", checks=checks)
    checks["db"] = {"ok": False}
    checks["new"] = {}
    assert dict(member.checks) == {"db": {"ok": True}}


@pytest.mark.parametrize(
    "record",
    [
        Lease(holder="a", token=7, ttl=10.0, acquired_at=1.0),
        Leader(name="a", token=7),
        KeyValue(key="config", value=b"{}", version=3),
        WatchEvent(kind=EventKind.PUT, key="leader", value=b"a"),
        FULL_MEMBER,
        StoreMember(
            name="s1", peer_url="http://127.0.0.1:2380", client_url="http://127.0.0.1:2379"
        ),
        ClusterView(leader=None),
    ],
    ids=lambda record: type(record).__name__,
)
def test_records_are_frozen(record: object) -> None:
    first_field = attrs.fields(type(record))[0].name
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        setattr(record, first_field, None)
    assert hash(record) == hash(attrs.evolve(record))


def test_member_mappings_are_read_only() -> None:
    member = Member(name="a", checks={"db": {"ok": True}})
    with pytest.raises(TypeError):
        member.checks["db"] = {"ok": False}  # type: ignore[index]


def test_lease_equality_ignores_the_backend_handle() -> None:
    first = Lease(holder="a", token=7, ttl=10.0, acquired_at=1.0, handle=123)
    second = Lease(holder="a", token=7, ttl=10.0, acquired_at=1.0, handle="other")
    assert first == second
    assert "123" not in repr(first)
    assert first != attrs.evolve(first, token=8)


def test_member_equality_ignores_checks_and_extra() -> None:
    assert attrs.evolve(FULL_MEMBER, checks={}, extra={}) == FULL_MEMBER
    assert attrs.evolve(FULL_MEMBER, healthy=False) != FULL_MEMBER


def test_cluster_view_finds_a_member_by_name() -> None:
    other = Member(name="node-1", role=NodeRole.ACTIVE)
    view = ClusterView(leader=Leader(name="node-1", token=4), members=(other, FULL_MEMBER))
    assert view.member("node-2") is FULL_MEMBER
    assert view.member("node-9") is None


def test_member_candidacy_is_a_typed_field_that_round_trips() -> None:
    out = attrs.evolve(FULL_MEMBER, candidate=False)
    again = Member.from_bytes(out.to_bytes())
    assert again.candidate is False and again == out
    assert "candidate" not in again.extra, "candidacy is read from the field, not from extra"
    assert Member.from_bytes(FULL_MEMBER.to_bytes()).candidate is True
    assert out != FULL_MEMBER, "a change of candidacy is a change of the record"


def test_member_candidacy_is_still_published_where_older_agents_read_it() -> None:
    # an agent older than the field reads ``extra.get("candidate", True) is False``
    data = json.loads(Member(name="a", candidate=False).to_bytes())
    assert data["candidate"] is False and data["extra"]["candidate"] is False
    data = json.loads(Member(name="a").to_bytes())
    assert data["candidate"] is True and data["extra"]["candidate"] is True


@pytest.mark.parametrize(
    ("extra", "candidate"),
    [({"candidate": False}, False), ({"candidate": True}, True), ({}, True)],
)
def test_an_older_agents_record_reads_as_it_always_did(
    extra: dict[str, object], candidate: bool
) -> None:
    older = json.dumps({"name": "b", "role": "standby", "extra": {"zone": "c", **extra}})
    member = Member.from_bytes(older.encode())
    assert member.candidate is candidate
    assert dict(member.extra) == {"zone": "c"}


def test_the_typed_candidacy_wins_over_the_copy_in_extra() -> None:
    raw = json.dumps({"name": "b", "candidate": False, "extra": {"candidate": True}}).encode()
    assert Member.from_bytes(raw).candidate is False


def test_candidacy_cannot_be_put_in_extra_as_free_text() -> None:
    with pytest.raises(ValueError, match="candidate field"):
        Member(name="a", extra={"candidate": False})
