"""Node repair on the node itself: ``nodes restart`` and ``nodes reinit`` of a standby, and
the manual ``cluster failover --to``.

Restart and reinit are sent to the node concerned (its own API, like ``explain``): only its
agent can stop and start its database, and it does so as a job off its loop, so the loop
neither restarts the database behind the job's back nor campaigns meanwhile. A reinit copies
the active's database into a temporary directory while the old copy keeps running, and swaps
only a complete copy in (hacore_plugins/postgresql/clone.py): a crash half-way leaves the old
data as it was. The service shows the reinit's progress in ``GET /cluster`` (``operation``),
as it does for a join.

A failover request may be sent to any member: there is no active to send it to.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from hacore.agent.runtime import Agent
from hacore.agent.vocabulary import Action
from hacore.api.errors import BadRequestError, NotFoundError, UnavailableError
from hacore.cluster.progress import Progress

log = logging.getLogger(__name__)

REINIT_STEPS = (
    ("clone", "copy the active's database (the old copy keeps running)"),
    ("streaming", "stream from the active again"),
)
RESTART_STEPS = (
    ("restart", "stop the services and the database, start them again"),
    ("streaming", "stream from the active again"),
)
#: seconds a finished job may take to stream again before the operation is called failed
STREAM_TIMEOUT = 120.0


def _own(agent: Agent | None, name: str, what: str) -> Agent:
    if agent is None:
        raise UnavailableError("this node's agent is not running")
    if name != agent.name:
        raise NotFoundError(f"this is {agent.name}: send the {what} of {name} to {name}'s own API")
    return agent


def _flag(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise BadRequestError(f'"{key}" must be true or false')
    return value


def restart(
    agent: Agent | None, name: str, body: dict[str, Any], progress: Progress
) -> dict[str, Any]:
    """``POST /nodes/<name>/restart`` on node ``name``: start the restart job, and follow it
    in ``progress``."""
    agent = _own(agent, name, "restart")
    unknown = sorted(set(body) - {"database", "services", "in_place"})
    if unknown:
        raise BadRequestError(
            f'unknown field "{unknown[0]}" (only "database", "services" and "in_place")'
        )
    database, services = _flag(body, "database", True), _flag(body, "services", False)
    if not (database or services):
        raise BadRequestError("nothing to restart: ask for the database, the services or both")
    in_place = _flag(body, "in_place", False)
    what = agent.repair(Action.RESTART, database=database, services=services, in_place=in_place)
    _follow(agent, Action.RESTART, progress, "restart", what, streams=database)
    return {"node": name, "started": what}


def reinit(agent: Agent | None, name: str, progress: Progress) -> dict[str, Any]:
    """``POST /nodes/<name>/reinit`` on node ``name``: start the clone job, and follow it in
    ``progress``."""
    agent = _own(agent, name, "reinit")
    what = agent.repair(Action.CLONE)
    _follow(agent, Action.CLONE, progress, "clone", what, streams=True)
    return {"node": name, "started": what}


def _follow(
    agent: Agent, action: Action, progress: Progress, step: str, what: str, *, streams: bool
) -> None:
    progress.begin(step, what)
    threading.Thread(
        target=_watch,
        args=(agent, action, progress, step, streams),
        name=f"hacore-{action.value}-watch",
        daemon=True,
    ).start()


def _watch(agent: Agent, action: Action, progress: Progress, step: str, streams: bool) -> None:
    """Until the job ended, then until a loop run after it shows the node streaming (a
    snapshot from before the job could still say so)."""
    while agent.jobs.running() is action:
        time.sleep(0.2)
    ended = time.monotonic()
    if agent.jobs.last_error:
        kept = "; the old copy of the database was kept" if action is Action.CLONE else ""
        progress.fail(f"{agent.jobs.last_error}{kept}")
        return
    progress.finish(step, "done")
    if not streams:
        progress.complete(f"{agent.name}: {step} done")
        return
    progress.begin("streaming")
    deadline = ended + STREAM_TIMEOUT
    while time.monotonic() < deadline:
        snap = agent.snapshot()
        if snap.last_loop_at is not None and snap.last_loop_at > ended:
            if snap.is_active and snap.leader == agent.name:
                progress.complete(f"{agent.name} is the active again, writable")
                log.info("%s of %s done", action.value, agent.name)
                return
            if snap.standby_streaming:
                progress.complete(f"{agent.name} is a standby of {snap.leader}, streaming")
                log.info("%s of %s done", action.value, agent.name)
                return
            if snap.leader is None:
                progress.complete(f"{agent.name}: {step} done; there is no active to stream from")
                return
        time.sleep(0.2)
    progress.fail(f"{agent.name} does not stream after {STREAM_TIMEOUT:g}s: see its agent's log")


def failover(agent: Agent | None, body: dict[str, Any]) -> dict[str, Any]:
    """``POST /failover`` on any member: ``{"to": NAME, "dry_run": bool}``."""
    if agent is None:
        raise UnavailableError("this node's agent is not running")
    unknown = sorted(set(body) - {"to", "dry_run"})
    if unknown:
        raise BadRequestError(f'unknown field "{unknown[0]}" (only "to" and "dry_run")')
    to = body.get("to")
    if not isinstance(to, str) or not to:
        raise BadRequestError('"to" must name the node to promote')
    return agent.request_failover(to, dry_run=_flag(body, "dry_run", False))
