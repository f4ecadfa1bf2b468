"""``cluster teardown``: the whole cluster taken down in the seed's order, without a failover.

The order is what keeps it free of promotions and of store outages:

1. standbys that do not answer, first: while the others still run, the store keeps its
   quorum without them, so the active drops them from the store and the membership without
   their acknowledgement (a two-member store with one member dead could not shrink at all);
2. the standbys that answer, one at a time, as ``nodes remove`` does: each steps down to
   "removed" (a removed node never campaigns), stops its database and its store server once
   the store forgot it, and is then asked to end its service;
3. the active, last, once no other node is left in the membership or the store: it stops as
   a clean agent stop does (database fenced, lease released with nobody to take it), then
   its store server, and ends its service.

Every node keeps its data on disk: ``hacore node uninstall`` on each machine removes it.
The CLI side (:func:`plan_teardown`, :func:`run_teardown`) runs wherever the profile is; the
node side (:func:`end_here`) is ``POST /cluster/teardown`` on each node's own API.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from hacore.agent import keys
from hacore.agent.vocabulary import NodeState
from hacore.api.client import ApiClient
from hacore.api.errors import ApiError, ApiUnreachableError, ConflictError, NotFoundError
from hacore.client.profile import Profile, active_client
from hacore.cluster.operated_node import EndingNode
from hacore.cluster.operation_state import Phase
from hacore.cluster.pending import pending_joins
from hacore.errors import HacoreError

log = logging.getLogger(__name__)

#: seconds a node's service waits after answering ``/cluster/teardown`` before it exits
EXIT_DELAY = 1.0
#: seconds a node just removed gets to stop its servers before it ends its service
REMOVAL_TIMEOUT = 150.0
#: seconds each standby's status probe gets to tell whether it is alive
PROBE_TIMEOUT = 3.0


@attrs.frozen
class Step:
    """One node's part in the teardown."""

    name: str
    api_url: str | None
    #: "standby" (answers), "down" (a standby that does not answer) or "active"
    kind: str


@attrs.frozen
class TeardownPlan:
    cluster: str
    active: str
    active_url: str
    steps: tuple[Step, ...]

    def describe(self) -> str:
        removals = [s.name for s in self.steps if s.kind != "active"]
        first = f"remove {', '.join(removals)}, then " if removals else ""
        return f"{first}stop {self.active} (the active) last"

    def to_json(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "active": self.active,
            "order": [attrs.asdict(s) for s in self.steps],
        }


def order_steps(
    active: str, active_url: str, others: Mapping[str, str | None], alive: Mapping[str, bool]
) -> tuple[Step, ...]:
    """Dead standbys first, then live ones (each group by name), the active last. Pure."""
    down = sorted(n for n in others if not alive.get(n, False))
    up = sorted(n for n in others if alive.get(n, False))
    return (
        *(Step(n, others[n], "down") for n in down),
        *(Step(n, others[n], "standby") for n in up),
        Step(active, active_url, "active"),
    )


def plan_teardown(profile: Profile) -> TeardownPlan:
    """Ask the active for the members (its view, its store's members) and probe each
    standby: which answer, which do not."""
    with active_client(profile) as client:
        data = client.cluster()
        active_url = client.base_url
    active = str(data.get("node"))
    others: dict[str, str | None] = {}
    for member in data.get("members", []):
        if isinstance(member, Mapping) and member.get("name") and member.get("name") != active:
            others[str(member["name"])] = member.get("api_url")
    # a standby dead for longer than the TTL has no member record, but the store and the
    # profile still know it
    for store_member in data.get("store_members") or []:
        name = store_member.get("name") if isinstance(store_member, Mapping) else None
        if name and name != active:
            others.setdefault(str(name), dict(profile.nodes).get(str(name)))
    for name in data.get("joining") or []:
        if name != active:
            others.setdefault(str(name), dict(profile.nodes).get(str(name)))
    alive = {name: _answers(profile, url) for name, url in others.items()}
    return TeardownPlan(
        cluster=str(data.get("cluster")),
        active=active,
        active_url=active_url,
        steps=order_steps(active, active_url, others, alive),
    )


def _answers(profile: Profile, url: str | None) -> bool:
    if not url:
        return False
    try:
        with profile.client(url, timeout=PROBE_TIMEOUT) as client:
            client.status()
    except (ApiError, ApiUnreachableError):
        return False
    return True


def _status(profile: Profile, url: str) -> dict[str, Any] | None:
    try:
        with profile.client(url, timeout=PROBE_TIMEOUT) as client:
            return client.status()
    except (ApiError, ApiUnreachableError):
        return None


def _wait(what: str, until: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if until():
            return True
        time.sleep(0.3)
    return until()


def run_teardown(
    profile: Profile,
    plan: TeardownPlan,
    say: Callable[[str], None],
    *,
    remove_timeout: float,
    node_timeout: float,
) -> dict[str, Any]:
    """Carry out ``plan``; ``say`` gets one line per step. Raises when the active changed
    under the teardown (it then stops at once, before anything more is removed)."""
    done: list[dict[str, Any]] = []
    with profile.client(plan.active_url, timeout=remove_timeout) as active:
        token = _lease_token(active, plan.active)
        history_before = len(active.history().get("history", []))
        for step in plan.steps:
            if step.kind == "active":
                continue
            _check_active(active, plan.active, token)
            done.append(_remove_standby(profile, active, step, say, node_timeout))
        _check_active(active, plan.active, token)
        history_after = len(active.history().get("history", []))
        if history_after != history_before:
            raise HacoreError(
                f"the cluster history grew from {history_before} to {history_after} entries "
                f"during the teardown: a change of active happened; {plan.active} was not "
                "stopped (see hacore cluster history)"
            )
        say(f"stopping {plan.active}, the active and last node")
        answer = active.teardown()
    gone = _wait(
        f"{plan.active}'s service to exit",
        lambda: _status(profile, plan.active_url) is None,
        node_timeout,
    )
    say(
        f"  {plan.active} stopped: database, store server and agent service"
        if gone
        else f"  {plan.active} stopped its database and store, its service still answers"
    )
    done.append({"name": plan.active, "kind": "active", "service_exited": gone, **answer})
    return {
        "cluster": plan.cluster,
        "active": plan.active,
        "lease_token": token,
        "history_entries": history_after,
        "changes_of_active": history_after - history_before,
        "nodes": done,
    }


def _lease_token(client: ApiClient, name: str) -> int | None:
    """The node's fencing token, from its own ``GET /nodes/<name>`` (the read role's: the
    probes and ``/metrics`` do not show it)."""
    return lease_token_in(client.node(name))


def lease_token_in(node: dict[str, Any]) -> int | None:
    token = node.get("lease_token")
    return token if isinstance(token, int) and not isinstance(token, bool) else None


def _check_active(client: ApiClient, name: str, token: int | None) -> None:
    status = client.status()
    now = _lease_token(client, name)
    if not status.get("active") or now != token:
        raise HacoreError(
            f"{name} is no longer the active node with fencing token {token} "
            f"(now: {status.get('state')}, token {now}): teardown stopped"
        )


def _remove_standby(
    profile: Profile, active: ApiClient, step: Step, say: Callable[[str], None], timeout: float
) -> dict[str, Any]:
    if step.kind == "down":
        say(
            f"removing {step.name}: it does not answer, so it is dropped from the store and "
            "the membership without its acknowledgement"
        )
    else:
        say(f"removing {step.name} (standby)")
    try:
        answer = active.remove_node(step.name)
    except NotFoundError as err:
        say(f"  {step.name} is not in the cluster any more ({err})")
        return {"name": step.name, "kind": step.kind, "removed": False, "detail": str(err)}
    result: dict[str, Any] = {"name": step.name, "kind": step.kind, **answer}
    if step.kind == "down" or step.api_url is None:
        say(f"  {step.name} dropped from the store and the membership")
        return result
    url = step.api_url
    stopped = _wait(
        f"{step.name} to stop",
        lambda: (_status(profile, url) or {}).get("state") in ("removed", None),
        timeout,
    )
    if not stopped:
        say(f"  {step.name} did not report itself removed within {timeout:g}s")
    try:
        with profile.client(url, timeout=timeout) as client:
            client.teardown()
    except (ApiError, ApiUnreachableError) as err:
        say(f"  {step.name} did not end its service: {err}")
    exited = _wait(f"{step.name}'s service to exit", lambda: _status(profile, url) is None, timeout)
    say(
        f"  {step.name} removed: database and store server stopped, agent service exited"
        if exited
        else f"  {step.name} removed; its agent service still answers (stop it on its machine)"
    )
    result["service_exited"] = exited
    return result


# -------------------------------------------------------------------------------------------
# On the node: POST /cluster/teardown
# -------------------------------------------------------------------------------------------


def end_here(service: EndingNode) -> dict[str, Any]:
    """Stop what this node runs for the cluster and end its service (answered first).

    A removed node (or one in no cluster) just stops; a member must be the active with no
    other node left, else it is refused: the active stopping first would start a failover.
    """
    me = service.config.node.name
    agent = service.agent
    if agent is not None and agent.snapshot().state is NodeState.REMOVED:
        # removed a moment ago: the monitor is stopping its servers (it waits for the store
        # to forget this node first); end only after that
        _wait("the removal to finish", lambda: _phase(service) is Phase.REMOVED, REMOVAL_TIMEOUT)
    state = service.state
    if state is None or state.phase is Phase.REMOVED:
        service.parts().stop()
        _exit_soon(service)
        what = "belongs to no cluster" if state is None else "was removed"
        return {"node": me, "ended": f"{me} {what}: its servers are stopped, its service exits"}
    if state.phase is not Phase.MEMBER:
        raise ConflictError(f"{me} is {state.phase.value} cluster {state.record.name}: not now")
    agent = service.agent
    if agent is None:
        raise ConflictError(f"{me}'s agent is not running")
    if not agent.snapshot().is_active:
        raise ConflictError(
            f"{me} is a standby of cluster {state.record.name}: remove it on the active "
            f"(hacore cluster nodes remove {me}), or run hacore cluster teardown"
        )
    left = _others_left(service, me)
    if left:
        raise ConflictError(
            f"{me} is not the last node of cluster {state.record.name}: "
            f"{', '.join(left)} still in it (hacore cluster teardown removes them first)"
        )
    log.warning("cluster %s is torn down: %s stops as its last node", state.record.name, me)
    detached = service.detach_agent()
    if detached is not None:
        # no other member is left to take the lease: a clean stop demotes, fences the
        # database and releases the lease
        detached.stop(resign=True, timeout=60.0)
    service.parts().stop()
    service.save(state.with_phase(Phase.REMOVED))
    _exit_soon(service)
    return {"node": me, "ended": f"{me} stopped as the last node of cluster {state.record.name}"}


def _phase(service: EndingNode) -> Phase | None:
    state = service.state
    return state.phase if state is not None else None


def _others_left(service: EndingNode, me: str) -> list[str]:
    agent = service.agent
    assert agent is not None
    consensus = agent.consensus
    removed = keys.removed_names(tuple(kv.key for kv in consensus.get_prefix(keys.REMOVED_PREFIX)))
    # a removed node's record lingers until its TTL runs out; a store server does not
    names = ({m.name for m in consensus.members()} | set(pending_joins(consensus))) - removed
    store = agent.backends.managed_store
    if store is not None:
        try:
            names |= {m.name for m in store.members()}
        except HacoreError as err:
            raise ConflictError(f"the store's members cannot be read: {err}") from None
    return sorted(names - {me})


def _exit_soon(service: EndingNode) -> None:
    timer = threading.Timer(EXIT_DELAY, service.stop)
    timer.daemon = True
    timer.start()
