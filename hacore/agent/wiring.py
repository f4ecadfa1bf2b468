"""The agent's composition root: every collaborator of the loop, built in one place.

Following a node's configuration into the agent starts and ends here: :func:`wire` takes the
configuration and the plugins (and, where the caller has them, the backends, the replication
credentials and the fence keeper), builds each collaborator once and hands it the others it
works with, and returns them as one frozen record. :class:`hacore.agent.runtime.Agent` only
runs the loop over them. Apart from ``wake`` (the loop's event) and ``is_active`` (its state),
no collaborator calls back into the agent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import attrs

from hacore.agent import tls_paths
from hacore.agent.checks import CheckRunner, FilesInSync, LoopFacts, builtin_checks, plugin_checks
from hacore.agent.counters import EventCounters
from hacore.agent.credentials import Credentials, ReplicationCredentials
from hacore.agent.deadline import Deadline, StoreGate
from hacore.agent.execute import Executor, ExecutorPorts
from hacore.agent.failsafe_edge import FailsafeEdge
from hacore.agent.hooks import HookCaller, NodeLog
from hacore.agent.jobs import Jobs
from hacore.agent.keeper import KeeperProcess, KeeperRunning
from hacore.agent.keeper_link import KeeperLink
from hacore.agent.leader_watch import LeaderWatch
from hacore.agent.lease import LeaseState
from hacore.agent.member_record import MemberRecords
from hacore.agent.membership import Membership
from hacore.agent.minority import MinorityEdge
from hacore.agent.observe import DatabaseReader
from hacore.agent.pause_control import PauseControl
from hacore.agent.record_trust import RecordTrust
from hacore.agent.revocation_sync import RevocationSync
from hacore.agent.settings_sync import SettingsSync
from hacore.agent.store_leadership import StoreLeadership
from hacore.agent.supervise import Supervisor, supervised_servers
from hacore.agent.vocabulary import DecisionConfig, SyncMode
from hacore.config.node import NodeConfig
from hacore.plugins.factory import Backends, build_backends
from hacore.plugins.registry import HacorePlugins

log = logging.getLogger("hacore.agent")


def decision_config(config: NodeConfig) -> DecisionConfig:
    """What :func:`hacore.agent.decide.decide` is told of the configuration."""
    timing, failover = config.timing, config.failover
    return DecisionConfig(
        ttl=timing.ttl,
        loop_wait=timing.loop_wait,
        retry_timeout=timing.retry_timeout,
        safety_margin=timing.safety_margin,
        synchronous_mode=SyncMode(failover.synchronous_mode),
        check_fail_fast=config.checks.check_fail_fast,
        maximum_lag_on_failover=failover.maximum_lag_on_failover,
        promote_backoff=failover.promote_backoff,
        switchover_timeout=failover.switchover_timeout,
        switchover_max_lag=failover.switchover_max_lag,
        failsafe_mode=failover.failsafe_mode == "on",
        minority_mode=failover.minority_mode == "on",
    )


@attrs.frozen
class AgentParts:
    """The loop's collaborators, each named for what it does (docs/architecture.md)."""

    dcfg: DecisionConfig
    backends: Backends
    #: the plugins' hooks, and the agent's log line prefix
    hooks: HookCaller
    log: NodeLog
    #: this node's leadership, shared by the loop and the executor
    lease: LeaseState
    #: the self-fencing deadline, and the gate store calls pass through
    deadline: Deadline
    store_gate: StoreGate
    #: the fence keeper's record, fed from the lease (hacore/agent/keeper_link.py)
    keeper: KeeperLink
    jobs: Jobs
    credentials: Credentials
    #: the health checks, and the facts of the loop some of them read
    facts: LoopFacts
    checks: CheckRunner
    files_check: FilesInSync | None
    #: the servers this agent runs, restarted when they die (hacore/agent/supervise.py)
    supervisor: Supervisor
    #: the managed store's leadership kept off the active (hacore/agent/store_leadership.py)
    store_leadership: StoreLeadership
    counters: EventCounters
    #: a database that does not answer within retry_timeout is unknown (DESIGN rule 7)
    db_reader: DatabaseReader
    membership: Membership
    records: MemberRecords
    executor: Executor
    watch: LeaderWatch
    #: failsafe mode (hacore/agent/failsafe_edge.py), minority mode (hacore/agent/minority.py)
    failsafe: FailsafeEdge
    minority: MinorityEdge
    #: maintenance mode (hacore/agent/pause_control.py)
    pause: PauseControl
    #: the cluster-wide settings in the store (hacore/agent/settings_sync.py)
    settings: SettingsSync
    #: only member records signed by their own node reach the decisions
    #: (hacore/agent/record_trust.py)
    trust: RecordTrust


def wire(
    config: NodeConfig,
    plugins: HacorePlugins,
    *,
    api_url: str,
    wake: Callable[[], None],
    is_active: Callable[[], bool],
    backends: Backends | None = None,
    credentials: ReplicationCredentials | None = None,
    keeper: KeeperProcess | None = None,
) -> AgentParts:
    """Every collaborator of one node's agent. ``wake`` wakes the loop (a job done, a
    supervised server changed, the leader key changed); ``is_active`` tells whether the node
    is the active now. ``keeper`` is None where no process may be started (an agent inside a
    test process): the loop's own self-fencing is then all there is."""
    name = config.node.name
    config.node.data_dir.mkdir(parents=True, exist_ok=True)
    dcfg = decision_config(config)
    backends = backends or build_backends(config, plugins)
    hooks = HookCaller(plugins, config)
    node_log = NodeLog(log, name)
    lease = LeaseState()
    jobs = Jobs(name, on_done=wake)
    pause = PauseControl(name, backends.consensus, lease, jobs, node_log)
    failsafe = FailsafeEdge(config, dcfg, lease, node_log)
    minority = MinorityEdge(name, dcfg, backends.replication, config.node.data_dir, node_log)
    deadline = Deadline(dcfg, lease, minority, failsafe, pause)
    keeper_link = KeeperLink(keeper, lease, deadline, pause, node_log)
    lease.listener = keeper_link.lease_changed
    address = backends.replication.address()
    facts = LoopFacts(name)
    checks = builtin_checks(
        facts,
        ttl=dcfg.ttl,
        address=address,
        services=backends.services,
        active_only_services=config.services.active_only if config.services else (),
        filesync=backends.filesync,
    )
    files_check = next((c for c in checks if isinstance(c, FilesInSync)), None)
    if keeper is not None and keeper_link.feed is not None:
        checks.append(KeeperRunning(keeper, keeper_link.feed, dcfg.ttl))
    supervisor = Supervisor(
        supervised_servers(backends.managed_store, config.consensus.backend),
        node_log,
        on_change=wake,
    )
    checks += supervisor.checks(dcfg.ttl)
    runner = CheckRunner(
        checks + plugin_checks(hooks),
        multiplier=config.checks.check_ttl_multiplier,
        timeout=config.timing.retry_timeout,
        active_grace=config.checks.active_grace,
    )
    counters = EventCounters(checks=runner.names)
    store_gate = StoreGate(deadline, dcfg.retry_timeout, counters)
    held = Credentials(credentials)
    revocations = RevocationSync(
        name,
        backends.consensus,
        backends.replication,
        tls_paths.tls_files(config),
        held.set,
        is_active,
        data_dir=config.node.data_dir,
        filesync=backends.filesync,
    )
    membership = Membership(name, backends, hooks, revocations)
    records = MemberRecords(
        config,
        dcfg,
        api_url=api_url,
        address=address,
        checks=runner,
        files_check=files_check,
        membership=membership,
        supervisor=supervisor,
        minority=minority,
        jobs=jobs,
    )
    ports = ExecutorPorts(hooks, jobs, lease, store_gate, records, held, counters)
    return AgentParts(
        dcfg=dcfg,
        backends=backends,
        hooks=hooks,
        log=node_log,
        lease=lease,
        deadline=deadline,
        store_gate=store_gate,
        keeper=keeper_link,
        jobs=jobs,
        credentials=held,
        facts=facts,
        checks=runner,
        files_check=files_check,
        supervisor=supervisor,
        store_leadership=StoreLeadership(backends.managed_store, node_log),
        counters=counters,
        db_reader=DatabaseReader(
            backends.replication,
            timeout=dcfg.retry_timeout,
            late_for=dcfg.loop_wait + dcfg.retry_timeout,
        ),
        membership=membership,
        records=records,
        executor=Executor(config, dcfg, backends, ports),
        watch=LeaderWatch(backends.consensus, wake),
        failsafe=failsafe,
        minority=minority,
        pause=pause,
        settings=SettingsSync(config, backends.consensus, backends.replication, node_log),
        trust=RecordTrust(name, tls_paths.tls_files(config)),
    )


def retune(parts: AgentParts, config: NodeConfig) -> AgentParts:
    """``parts`` running ``config``'s failover policy and check settings from the next
    decision on (the cluster-wide settings changed in the store). Timing, failsafe and
    minority mode are not changed here: they wait for a restart (hacore/agent/settings_sync.py)."""
    dcfg = decision_config(config)
    parts.deadline.dcfg = dcfg
    parts.failsafe.dcfg = dcfg
    parts.records.dcfg = dcfg
    parts.records.config = config
    parts.executor.dcfg = dcfg
    parts.executor.config = config
    parts.executor.sync.change_mode(dcfg.synchronous_mode)
    parts.checks.multiplier = config.checks.check_ttl_multiplier
    parts.checks.active_grace = config.checks.active_grace
    return attrs.evolve(parts, dcfg=dcfg)
