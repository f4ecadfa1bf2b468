"""The cluster as this agent last read it, for ``GET /cluster`` and ``/nodes``.

Built from the loop's last reading only, so answering the API costs no store round trip.
That reading holds only the member records their own node signed
(:func:`only_believed`, fed by hacore/agent/record_trust.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from hacore.agent.observe import StoreReading
from hacore.agent.snapshot import NodeSnapshot, member_json
from hacore.backends.records import ClusterView, Member, NodeRole
from hacore.config.node import NodeConfig


def known_members(
    known: dict[str, Member],
    view: ClusterView,
    removed: bool,
    me: str,
    removed_names: Iterable[str] = (),
) -> dict[str, Member]:
    """Every node seen so far: live records as they are, vanished ones as unknown/unhealthy;
    a node removed from the cluster is no member any more (``/nodes`` listed it as unknown)."""
    result = {m.name: m for m in view.members}
    for name, member in known.items():
        if name not in result:
            result[name] = attrs.evolve(member, role=NodeRole.UNKNOWN, healthy=False)
    for name in (*removed_names, *((me,) if removed else ())):
        result.pop(name, None)
    return result


def cluster_json(
    config: NodeConfig, snap: NodeSnapshot, reading: StoreReading | None
) -> dict[str, Any]:
    """``GET /cluster``, from what the loop last read (no store round trip)."""
    data: dict[str, Any] = {
        "cluster": config.cluster.name,
        "namespace": config.cluster.namespace,
        "leader": snap.leader,
        "store_ok": snap.store_ok,
        "members": [member_json(m, snap) for m in snap.members],
        "status": None,
        "switchover": None,
        "removed": [],
        "paused": snap.paused is not None,
        "pause": None if snap.paused is None else dict(snap.paused),
    }
    if reading is not None:
        removed = set(reading.removed)
        data["members"] = [m for m in data["members"] if m["name"] not in removed]
        data["removed"] = sorted(removed)
        status = reading.active_status
        if status is not None:
            data["status"] = {
                "name": status.name,
                "position": status.position,
                "timeline": status.timeline,
                "sync_standbys": sorted(status.sync_standbys),
            }
        request = reading.switchover
        if request is not None:
            data["switchover"] = {"from": request.from_node, "to": request.to_node}
    return data


def only_believed(view: ClusterView, reasons: Sequence[str | None]) -> ClusterView:
    """``view`` with only the members whose reason to doubt them is None (``reasons`` is
    parallel to ``view.members``; the agent's edge verified each record's signature)."""
    kept = tuple(m for m, why in zip(view.members, reasons, strict=True) if why is None)
    if len(kept) == len(view.members):
        return view
    return attrs.evolve(view, members=kept)
