"""Maintenance mode through the API: ``POST /pause`` and ``POST /resume``.

The pause is one store key (``pause``: who, when, why) that every agent reads with its view
each loop; while it is set nobody promotes, demotes, campaigns, fences or restarts anything
(hacore/agent/paused.py). Pausing may be sent to any member: it is a store write. Resuming is
sent to the node that holds the lease, which puts its database back under a self-fencing
deadline before it deletes the key (docs/fencing.md, "Maintenance mode"); ``force`` lets any
member delete it when no node holds the lease, on the operator's word that no database
writes outside hacore's knowledge.
"""

from __future__ import annotations

from typing import Any

from hacore.agent.runtime import Agent
from hacore.api.errors import BadRequestError, UnavailableError

#: the longest reason kept (it is shown in every node's status)
MAX_REASON = 500


def _agent(agent: Agent | None) -> Agent:
    if agent is None:
        raise UnavailableError("this node's agent is not running")
    return agent


def pause(agent: Agent | None, body: dict[str, Any], *, by: str) -> dict[str, Any]:
    """``POST /pause`` ``{"reason": TEXT}``: set the pause (idempotent)."""
    unknown = sorted(set(body) - {"reason"})
    if unknown:
        raise BadRequestError(f'unknown field "{unknown[0]}" in the pause request (only "reason")')
    reason = body.get("reason") or ""
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise BadRequestError(f'"reason" must be a text of at most {MAX_REASON} characters')
    return {"node": _agent(agent).name, **_agent(agent).pause(reason, by=by)}


def resume(agent: Agent | None, body: dict[str, Any]) -> dict[str, Any]:
    """``POST /resume`` ``{"force": bool}``: end the pause (idempotent)."""
    unknown = sorted(set(body) - {"force"})
    if unknown:
        raise BadRequestError(f'unknown field "{unknown[0]}" in the resume request (only "force")')
    force = body.get("force", False)
    if not isinstance(force, bool):
        raise BadRequestError('"force" must be true or false')
    return {"node": _agent(agent).name, **_agent(agent).resume(force=force)}
