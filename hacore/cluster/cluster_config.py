"""The cluster-wide settings through the API: ``GET /cluster/config`` and ``PUT /cluster/config``.

``cluster start`` writes the ``settings`` key before it returns (:func:`seed`), from the
first node's ``node.yaml`` or, on a node restored from a snapshot, from the snapshot. Reading
may be asked of any member (it is one store read). A change is sent to the active: it
checks the new settings as ``config check`` would (hacore/config/cluster_settings.py, with
every backend's own checks against the active's ``node.yaml``), then writes the ``settings``
key with a compare-and-set on the version the client read, so of two concurrent edits one
wins and the other gets a conflict (409) and changes nothing. Every agent applies the new
settings within one loop (hacore/agent/settings_sync.py).
"""

from __future__ import annotations

import logging
from typing import Any

from hacore.agent import keys
from hacore.agent.runtime import Agent
from hacore.agent.settings_sync import live_part
from hacore.agent.vocabulary import NodeState
from hacore.api.errors import BadRequestError, ConflictError, NotActiveError, NotFoundError
from hacore.backends.consensus import ConsensusBackend
from hacore.config.backend_checks import BackendLookup
from hacore.config.cluster_settings import ClusterWide, from_mapping, validated_for
from hacore.config.node import NodeConfig
from hacore.errors import HacoreError

log = logging.getLogger("hacore.cluster")


def effective_config(config: NodeConfig, consensus: ConsensusBackend) -> NodeConfig:
    """``config`` (node.yaml) with the stored cluster-wide settings applied: what an agent
    starts with. node.yaml as it is while the store holds none yet (``cluster start`` seeds
    them; on a cluster started by an older hacore, its first active) or cannot be read (the
    agent follows the store once it answers, and what cannot change under a running agent
    then waits for its next restart)."""
    try:
        kv = consensus.get(keys.SETTINGS_KEY)
        stored = None if kv is None else keys.StoredSettings.decode(kv.value)
    except HacoreError as err:
        log.warning("cluster-wide settings not read at start, node.yaml's are used: %s", err)
        return config
    if stored is None:
        return config
    for key in ClusterWide.from_config(config).differences(stored.settings):
        log.info("cluster-wide setting %s comes from the store (node.yaml differs)", key)
    return stored.settings.apply_to(config)


def seed(
    consensus: ConsensusBackend, settings: ClusterWide, *, by: str
) -> tuple[keys.StoredSettings, bool]:
    """Write ``settings`` as revision 1 of the ``settings`` key unless it exists (a
    compare-and-set on "absent": a resumed start, or the first active's own seed, may have
    written it). Returns what the store holds then, and whether this call wrote it."""
    record = keys.StoredSettings(settings, revision=1, by=by)
    if consensus.put(keys.SETTINGS_KEY, record.encode(), expect_version=0):
        return record, True
    kv = consensus.get(keys.SETTINGS_KEY)
    if kv is None:
        raise ConflictError(
            "the cluster-wide settings key changed while it was written; run cluster start again"
        )
    return keys.StoredSettings.decode(kv.value), False


def show(agent: Agent) -> dict[str, Any]:
    """``GET /cluster/config``: the stored settings, their revision and the store version a
    change must name."""
    kv = agent.consensus.get(keys.SETTINGS_KEY)
    if kv is None:
        raise NotFoundError(
            "the cluster-wide settings are not in the store yet (cluster start writes them "
            "before it returns: is the start still running?)"
        )
    stored = keys.StoredSettings.decode(kv.value)
    return {**stored.json(), "version": kv.version}


def change(
    agent: Agent,
    config: NodeConfig,
    registry: BackendLookup,
    body: dict[str, Any],
    *,
    by: str,
) -> dict[str, Any]:
    """``PUT /cluster/config`` ``{"settings": {...}, "version": N}`` on the active.

    ``version`` is the one ``GET /cluster/config`` answered; the whole record is replaced.
    An invalid record is refused (400) with one line per problem; a record changed since
    ``version`` was read is refused (409); in both cases nothing is written.
    """
    unknown = sorted(set(body) - {"settings", "version"})
    if unknown:
        raise BadRequestError(
            f'unknown field "{unknown[0]}" in the settings change (only "settings", "version")'
        )
    version = body.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise BadRequestError('"version" must be the version GET /cluster/config answered')
    if agent.state is not NodeState.ACTIVE or agent.lease.lease is None:
        raise NotActiveError(f"{agent.name} is not the active node; send the change to the active")
    wanted = from_mapping(body.get("settings"))
    validated_for(wanted, config, registry)
    consensus = agent.consensus
    kv = consensus.get(keys.SETTINGS_KEY)
    if kv is None:
        raise NotFoundError("the cluster-wide settings are not in the store yet; retry shortly")
    current = keys.StoredSettings.decode(kv.value)
    if kv.version != version:
        raise ConflictError(_conflict(current))
    if wanted == current.settings:
        return {**current.json(), "version": kv.version, "changed": [], "restart_pending": []}
    record = keys.StoredSettings(wanted, revision=current.revision + 1, by=by)
    if not consensus.put(keys.SETTINGS_KEY, record.encode(), expect_version=version):
        raise ConflictError(_conflict(current))
    after = consensus.get(keys.SETTINGS_KEY)
    return {
        **record.json(),
        "version": None if after is None else after.version,
        "changed": current.settings.differences(wanted),
        "restart_pending": restart_keys(wanted, agent.parts.settings.running),
    }


def restart_keys(wanted: ClusterWide, running: ClusterWide) -> list[str]:
    """The keys of ``wanted`` an agent running ``running`` applies only when restarted."""
    return live_part(wanted, running).differences(wanted)


def _conflict(current: keys.StoredSettings) -> str:
    who = f" by {current.by}" if current.by else ""
    return (
        f"the cluster-wide settings changed meanwhile (revision {current.revision}{who}); "
        "nothing was written: show them again and repeat the change"
    )
