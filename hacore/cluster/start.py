"""``cluster start`` on the node that founds the cluster.

Checked before anything is written: the database is empty; a managed store has no data yet,
an external store answers and holds no cluster under this namespace. Then, each step recorded
in ``cluster.json`` so a restarted agent resumes at the first one not done:

0. ca: the cluster's CA and this node's certificate (TLS); the API then serves HTTPS (kept
   by a resumed start, so no step needs recording);
1. store: bootstrap a one-member managed store (or use the external one);
2. record: the cluster record in the store's ``config`` key (create-only);
2b. settings: the cluster-wide settings in the store's ``settings`` key (create-only), from
   ``node.yaml``, or from the snapshot on a restored node; so ``cluster config show`` answers
   as soon as the start returns, and the agent (made again if they differ from ``node.yaml``)
   and the database start with them;
3. database: bootstrap the primary with the new replication password;
4. status: name this node as the last active (so it may campaign in synchronous mode);
5. agent: start the loop; it campaigns and promotes, and the start is done once this node's
   ``/status`` would answer 200.
"""

from __future__ import annotations

import contextlib
import logging

from hacore.agent import keys
from hacore.agent.errors import StateConflictError
from hacore.agent.runtime import Agent
from hacore.api.errors import ConflictError, UnavailableError
from hacore.backends.consensus import CONFIG_KEY, ConsensusBackend
from hacore.cluster import cluster_config
from hacore.cluster.operated_node import FormingNode
from hacore.cluster.operation_state import Step
from hacore.cluster.parts import LocalParts
from hacore.cluster.progress import Progress
from hacore.cluster.record import ClusterRecord
from hacore.cluster.snapshot import (
    adopt_restored_database,
    restored_cluster_wide,
    restored_snapshot,
    unfinished_restore,
)
from hacore.cluster.tls import create_cluster_ca
from hacore.config.cluster_settings import ClusterWide, validated_for
from hacore.config.node import NodeConfig
from hacore.errors import ConfigError, HacoreError
from hacore.plugins.registry import HacorePlugins

log = logging.getLogger(__name__)

STEPS = (
    ("ca", "cluster CA"),
    ("store", "consensus store"),
    ("record", "cluster record"),
    ("settings", "cluster-wide settings"),
    ("database", "database"),
    ("status", "first active named"),
    ("agent", "agent started"),
    ("active", "this node is active"),
)


def check_startable(config: NodeConfig, plugins: HacorePlugins, parts: LocalParts) -> None:
    """Refuse a node that cannot found a cluster, before anything is written.

    A database is accepted only with the marker of a finished ``snapshot restore``: its
    origin is known (hacore.cluster.snapshot)."""
    if unfinished_restore(config.node.data_dir):
        raise ConflictError(
            "a snapshot restore on this node did not finish: run hacore snapshot restore again "
            "(it redoes the work), then cluster start"
        )
    restored = restored_snapshot(config.node.data_dir) is not None
    if parts.replication.is_initialized() and not restored:
        raise ConflictError(
            f"this node already holds a database in {parts.replication.data_dir}: cluster start "
            "needs an empty node (it would not take over data of unknown origin)"
        )
    if restored:
        _check_restored_settings(config, plugins)
    if parts.store is not None:
        if parts.store_has_data():
            raise ConflictError(
                f"this node is not empty: it already holds store data in {parts.store.data_dir}"
            )
        return
    consensus = _external_store(config, plugins)
    try:
        found = consensus.get(CONFIG_KEY)
    except HacoreError as err:
        raise UnavailableError(
            f"the {config.consensus.backend} store does not answer: {err}"
        ) from None
    finally:
        with contextlib.suppress(HacoreError):
            consensus.close()
    if found is not None:
        try:
            what = ClusterRecord.decode(found.value).describe()
        except HacoreError:
            what = "another cluster's data"
        raise ConflictError(
            f"the store already holds {what} under namespace {config.cluster.namespace}: choose "
            "another cluster.namespace, or join that cluster instead"
        )


def _external_store(config: NodeConfig, plugins: HacorePlugins) -> ConsensusBackend:
    section = config.consensus
    return plugins.registry.consensus(section.backend)(
        section.settings,
        namespace=config.cluster.namespace,
        node_name=config.node.name,
        ttl=config.timing.ttl,
        retry_timeout=config.timing.retry_timeout,
    )


def run_start(node: FormingNode, progress: Progress) -> None:
    """Steps 0-5; the service's monitor completes the operation once the node is active."""
    state = node.require_state()
    config = node.config
    progress.begin("ca")
    if config.tls.enabled:
        create_cluster_ca(config, node.tls_hosts())
    progress.finish("ca", node.secure())
    parts = node.parts()
    progress.begin("store")
    store = parts.store
    if store is None:
        detail = f"external {config.consensus.backend} store"
    elif state.has(Step.STORE):
        if not store.is_running():
            store.start()
        detail = f"{config.consensus.backend} server of this node running"
    else:
        parts.wipe_store()  # what an interrupted bootstrap of ours left
        member = store.bootstrap()
        detail = f"one-member {config.consensus.backend} store at {member.client_url}"
    state = node.save(state.with_step(Step.STORE))
    progress.finish("store", detail)

    agent = node.make_agent()
    progress.begin("record")
    _write_record(agent.consensus, state.record)
    state = node.save(state.with_step(Step.RECORD))
    progress.finish(
        "record", f'cluster "{state.record.name}", hacore {state.record.hacore_version}'
    )

    progress.begin("settings")
    agent, detail = _seed_settings(node, agent)
    progress.finish("settings", detail)

    progress.begin("database")
    replication = agent.replication
    if not replication.is_initialized():
        replication.bootstrap(replication_password=state.replication_password, allowed_hosts=[])
        detail = "new primary bootstrapped"
    elif restored_snapshot(config.node.data_dir) is not None:
        detail = adopt_restored_database(
            replication, config.node.data_dir, state.replication_password
        )
    else:
        detail = "primary already bootstrapped"
    state = node.save(state.with_step(Step.DATABASE))
    progress.finish("database", detail)

    progress.begin("status")
    try:
        agent.record_bootstrap()
    except StateConflictError:
        found = agent.consensus.get(keys.STATUS_KEY)
        if found is None or keys.decode_status(found.value).name != config.node.name:
            raise
    state = node.save(state.with_step(Step.STATUS))
    progress.finish("status", f"{config.node.name} is the first active")

    progress.begin("agent")
    node.start_agent()
    node.save(state.with_step(Step.AGENT))
    progress.finish("agent")
    progress.begin("active", "waiting for the election and the promotion")


def _check_restored_settings(config: NodeConfig, plugins: HacorePlugins) -> None:
    """The restored snapshot's cluster-wide settings, checked against this node before the
    start writes anything (``snapshot restore`` checked them too, with this node.yaml then)."""
    try:
        settings = restored_cluster_wide(config.node.data_dir)
        if settings is not None:
            validated_for(settings, config, plugins.registry)
    except (ConfigError, HacoreError) as err:
        raise ConflictError(
            "the restored snapshot's cluster-wide settings do not fit this node's node.yaml: "
            + " ".join(str(err).splitlines())
        ) from None


def _seed_settings(node: FormingNode, agent: Agent) -> tuple[Agent, str]:
    """Step 2b: the ``settings`` key, written unless a resumed start (or the agent of an
    earlier attempt) wrote it. The agent was made from ``node.yaml`` while the store held no
    settings: made again when the stored ones differ, so that it, and the database it
    starts, run with them from the first loop. Returns the agent and the step's detail."""
    config = node.config
    restored = restored_cluster_wide(config.node.data_dir)
    mine = ClusterWide.from_config(config)
    wanted = restored if restored is not None else mine
    stored, written = cluster_config.seed(agent.consensus, wanted, by=config.node.name)
    if not written:
        detail = f"already in the store (revision {stored.revision})"
    elif restored is None:
        detail = "from node.yaml"
    else:
        differ = mine.differences(restored)
        detail = "from the snapshot" + (
            f" (node.yaml differs in {', '.join(differ)}: the snapshot's values are used)"
            if differ
            else " (the same as node.yaml's)"
        )
    if ClusterWide.from_config(agent.config) != stored.settings:
        with contextlib.suppress(HacoreError):
            agent.consensus.close()
        agent = node.make_agent()
    return agent, detail


def _write_record(consensus: ConsensusBackend, record: ClusterRecord) -> None:
    if consensus.put(CONFIG_KEY, record.encode(), expect_version=0):
        return
    found = consensus.get(CONFIG_KEY)
    if found is not None:
        try:
            existing = ClusterRecord.decode(found.value)
        except HacoreError:
            existing = None
        if existing is not None and existing.cluster_id == record.cluster_id:
            return  # written by an earlier attempt of this start
        what = existing.describe() if existing else "something else"
        raise ConflictError(f"the store's namespace {record.namespace} already holds {what}")
    raise ConflictError("the cluster record changed while it was written; run cluster start again")
