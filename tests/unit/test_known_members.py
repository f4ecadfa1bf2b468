"""Which nodes the agent's snapshot (and so ``/nodes``) lists."""

from __future__ import annotations

from hacore.agent.cluster_view import known_members
from hacore.backends.records import ClusterView, Leader, Member, NodeRole


def _member(name: str, role: NodeRole) -> Member:
    return Member(name=name, role=role, healthy=True)


def test_vanished_nodes_stay_as_unknown_and_removed_ones_go() -> None:
    a, b, c = (_member(n, NodeRole.STANDBY) for n in "abc")
    known = {m.name: m for m in (a, b, c)}
    view = ClusterView(Leader("a", 1), (a,))
    listed = known_members(known, view, removed=False, me="a", removed_names=("c",))
    assert sorted(listed) == ["a", "b"]
    assert listed["b"].role is NodeRole.UNKNOWN and not listed["b"].healthy
    assert listed["a"] == a


def test_a_removed_node_drops_itself() -> None:
    a, b = _member("a", NodeRole.STANDBY), _member("b", NodeRole.ACTIVE)
    view = ClusterView(Leader("b", 1), (a, b))
    assert sorted(known_members({}, view, removed=True, me="a")) == ["b"]
