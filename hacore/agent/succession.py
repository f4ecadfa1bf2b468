"""The history entry of this node's promotion: who was the active before, and why it is no
longer (``cluster history``, ``cluster explain``). Pure: it reads only the observation."""

from __future__ import annotations

from hacore.agent import keys
from hacore.agent.vocabulary import Observation


def succession(
    obs: Observation, name: str, token: int, *, held_before: bool = False
) -> keys.HistoryEntry:
    """The history entry of this node's promotion, without its new position yet: who was the
    active before (the status key survives it) and why it is no longer.

    A switchover request away from the old active names a planned handover; otherwise the old
    active's member record tells a released lease (it stepped down and lives on, fenced) from
    an expired one (the record is bound to the same session as the lease and went with it).
    The status key naming this node itself is its own earlier leadership, or the bootstrap's
    record on the cluster's first start (told apart by an empty history when writing). An
    earlier leadership of this very agent (``held_before``: it won a lease before, in this
    process) ended because the lease was lost, not because the agent restarted.
    """
    status = obs.active_status
    if status is None:
        return keys.HistoryEntry(name, token, reason="first_start")
    old = status.name
    req = obs.switchover
    if old == name:
        reason = "lease_lost" if held_before else "restarted"
    elif req is not None and req.manual and req.to_node == name:
        reason = "manual_failover"
    elif req is not None and req.from_node == old:
        reason = "switchover"
    elif obs.view is not None and obs.view.member(old) is not None:
        reason = "stepped_down"
    else:
        reason = "lease_expired"
    return keys.HistoryEntry(
        name,
        token,
        reason=reason,
        previous=old,
        previous_timeline=status.timeline,
        previous_position=status.position,
        switchover_to=req.to_node if reason == "switchover" and req is not None else None,
    )
