"""What a node's service shows through its API: its snapshot when no agent runs, the cluster
view with the node's own phase and operation, the CA it trusts, and the views only the node
itself can answer (its explanation, the history of actives, its salvage archives).

Functions of what they read, so the service (:mod:`hacore.cluster.node_service`) keeps only
the choice of which agent, state and configuration are in force.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import attrs

from hacore import pki
from hacore.agent import keys, tls_paths
from hacore.agent.explain import explain
from hacore.agent.runtime import Agent
from hacore.agent.snapshot import NodeSnapshot
from hacore.agent.vocabulary import NodeState
from hacore.api.errors import NotFoundError, UnavailableError
from hacore.backends import salvage
from hacore.cluster import tls as node_tls
from hacore.cluster.operation_state import ClusterState, Phase
from hacore.cluster.pending import pending_joins
from hacore.cluster.progress import Progress
from hacore.cluster.record import reported_version
from hacore.config.node import NodeConfig
from hacore.errors import HacoreError

log = logging.getLogger("hacore.cluster")


def idle_snapshot(config: NodeConfig, state: ClusterState | None) -> NodeSnapshot:
    """The snapshot of a node whose agent does not run: empty, removed, or between the steps
    of a start or join."""
    if state is None:
        node_state, reason = NodeState.EMPTY, "belongs to no cluster: run cluster start or join"
    elif state.phase is Phase.REMOVED:
        node_state = NodeState.REMOVED
        reason = f"removed from cluster {state.record.name}"
    else:
        node_state, reason = NodeState.EMPTY, f"cluster {state.phase.value} in progress"
    timing = config.timing
    return NodeSnapshot(
        node_name=config.node.name,
        version=reported_version(),
        state=node_state,
        last_loop_at=time.monotonic(),
        loop_wait=timing.loop_wait,
        ttl=timing.ttl,
        reason=reason,
    )


def cluster_view(
    config: NodeConfig,
    agent: Agent | None,
    state: ClusterState | None,
    progress: Progress | None,
    ca: dict[str, Any] | None,
) -> dict[str, Any]:
    """``GET /cluster``: the agent's cluster view (or an empty one without an agent), with the
    standbys' streaming, the store's members, the joins pending, and this node's phase, CA
    fingerprint and running operation."""
    if agent is not None:
        data = agent.cluster()
        snap = agent.snapshot()
        data["reason"] = snap.reason
        _add_streaming(data, snap)
        # two store round trips: not tried while the loop finds the store silent (a
        # frozen store would hold the answer past any client's timeout)
        data["store_members"] = _store_members(agent) if snap.store_ok else None
        data["joining"] = _joining(agent) if snap.store_ok else None
    else:
        data = {
            "cluster": state.record.name if state else None,
            "namespace": state.record.namespace if state else None,
            "leader": None,
            "store_ok": False,
            "members": [],
            "removed": [],
            "reason": idle_snapshot(config, state).reason,
        }
    data["node"] = config.node.name
    data["phase"] = state.phase.value if state else "unconfigured"
    data["ca_fingerprint"] = ca["fingerprint"] if ca else None
    data["record"] = state.record.to_json() if state else None
    data["operation"] = progress.to_json() if progress else None
    return data


def cluster_ca(
    config: NodeConfig, data_dir: Path, state: ClusterState | None
) -> dict[str, Any] | None:
    """``GET /cluster/ca``: the CA certificate this node trusts (public material)."""
    pem = node_tls.ca_certificate_pem(data_dir) if config.tls.enabled else None
    if pem is None:
        return None
    cert = pki.load_ca_certificate(tls_paths.ca_cert_file(data_dir))
    return {
        "cluster": state.record.name if state else None,
        "fingerprint": pki.fingerprint(cert),
        "ca_certificate": pem,
    }


def explain_node(config: NodeConfig, agent: Agent | None, name: str) -> dict[str, Any]:
    """``GET /nodes/<name>/explain``: each node explains itself, from its last loop."""
    own = config.node.name
    if name != own:
        raise NotFoundError(f"this is {own}: ask {name}'s own API for its explanation")
    if agent is None:
        raise UnavailableError(f"{own}'s agent is not running")
    snap = agent.snapshot()
    data = explain(snap.observation, snap.decision, agent.dcfg, snap.state).to_json()
    data["node"] = own
    data["failing_checks"] = {
        check: result.detail for check, result in snap.checks.items() if not result.ok
    }
    data["maximum_lag_on_failover"] = agent.dcfg.maximum_lag_on_failover
    data["synchronous_mode"] = agent.dcfg.synchronous_mode.value
    return data


def history(agent: Agent | None) -> dict[str, Any]:
    """``GET /history``: every change of active, oldest first (read from the store)."""
    if agent is None:
        raise UnavailableError("this node's agent is not running")
    entries = []
    for kv in agent.backends.consensus.get_prefix(keys.HISTORY_PREFIX):
        try:
            entries.append(keys.HistoryEntry.decode(kv.value))
        except HacoreError as err:
            log.warning("unreadable history entry %s: %s", kv.key, err)
    entries.sort(key=lambda e: e.token)
    return {"history": [e.to_json() for e in entries]}


def salvage_list(config: NodeConfig) -> dict[str, Any]:
    """``GET /salvage``: this node's salvage archives (hacore/backends/salvage.py), read
    from its data directory: they are there whether the agent runs or not."""
    directory = config.node.data_dir / salvage.DIR
    return {"node": config.node.name, "archives": salvage.listing(directory)}


def salvage_show(config: NodeConfig, ident: str) -> dict[str, Any]:
    """``GET /salvage/<id>``: one archive of this node, whole."""
    try:
        return salvage.read(config.node.data_dir / salvage.DIR, ident)
    except salvage.SalvageError as err:
        raise NotFoundError(str(err)) from None


def _add_streaming(data: dict[str, Any], snap: NodeSnapshot) -> None:
    """On the active: which standbys stream from its database right now, and their lag."""
    repl = snap.replication
    if not snap.is_active or repl is None:
        return
    standbys = {s.name: s for s in repl.standbys}
    for member in data.get("members", []):
        found = standbys.get(member.get("name"))
        if found is not None:
            member["streaming"] = found.state == "streaming"
            member["lag_bytes"] = found.lag_bytes
            member["sync_state"] = found.sync_state
        elif member.get("name") != snap.node_name:
            member["streaming"] = False


def _store_members(agent: Agent) -> list[dict[str, Any]] | None:
    store = agent.backends.managed_store
    if store is None:
        return None
    try:
        return [attrs.asdict(m) for m in store.members()]
    except HacoreError as err:
        log.debug("store members not listed: %s", err)
        return None


def _joining(agent: Agent) -> list[str] | None:
    """Names of the joins granted and not finished (a store round trip)."""
    try:
        return sorted(pending_joins(agent.consensus))
    except HacoreError as err:
        log.debug("pending joins not listed: %s", err)
        return None
