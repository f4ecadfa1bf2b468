"""What the agent loop needs around it: its backends, the leader watch, the member set.

Kept apart from :mod:`hacore.agent.runtime` so the loop itself reads as the sequence of steps
it runs.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from hacore import __version__
from hacore.agent import keys, tls_paths
from hacore.agent.execute import Backends
from hacore.agent.hooks import HookCaller, NodeLog
from hacore.agent.observe import StoreReading
from hacore.agent.revocation_sync import RevocationSync
from hacore.agent.snapshot import NodeSnapshot, member_json
from hacore.agent.supervise import ServerStatus
from hacore.agent.vocabulary import DecisionConfig, Observation, SyncMode
from hacore.backends.consensus import ConsensusBackend, Watcher
from hacore.backends.filesync import SyncState
from hacore.backends.health import CheckResult, HealthCheck
from hacore.backends.records import ClusterView, Member, NodeRole, TlsFiles
from hacore.config.node import NodeConfig
from hacore.errors import ConfigError, HacoreError
from hacore.pki import record_identity
from hacore.plugins.registry import HacorePlugins

log = logging.getLogger(__name__)

#: Where each backend keeps its data under ``node.data_dir``.
REPLICATION_DIR = "replication"
FILESYNC_DIR = "filesync"
STORE_DIR = "store"


def decision_config(config: NodeConfig) -> DecisionConfig:
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
    )


def tls_arguments(
    factory: Callable[..., Any], tls: TlsFiles | None, what: str, *, required: bool = True
) -> dict[str, Any]:
    """``{"tls": tls}`` for a backend factory, or nothing when the node runs without TLS.

    Factories that speak TLS take a ``tls`` keyword (see docs/plugin-authors.md); where TLS is
    ``required``, one that does not cannot be part of a cluster that uses TLS, which is said
    here rather than as a ``TypeError`` from deep inside the factory. Where it is only offered
    (a file sync engine may authenticate its peers itself, as Syncthing does), such a factory
    simply gets nothing.
    """
    if tls is None:
        return {}
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return {"tls": tls}
    if any(p.name == "tls" or p.kind is p.VAR_KEYWORD for p in params):
        return {"tls": tls}
    if not required:
        return {}
    raise ConfigError(
        f"the {what} backend does not support TLS (its factory takes no tls argument): "
        "use a backend that does, or set tls.enabled: false on every node"
    )


def build_backends(
    config: NodeConfig, plugins: HacorePlugins, tls: TlsFiles | None = None
) -> Backends:
    """Each family's backend, picked by name from the configuration; ``tls`` is handed to
    the database, to a file sync engine that takes it, and, when hacore runs the store, to its
    server and its client."""
    registry, node, timing = plugins.registry, config.node, config.timing
    if config.replication is None:
        raise ConfigError("the agent needs a replication section (for example backend: postgresql)")
    section = config.consensus
    settings: dict[str, Any] = dict(section.settings)
    managed = None
    if section.managed:
        factory = registry.managed_store(section.backend)
        managed = factory(
            settings,
            name=node.name,
            host=node.host,
            data_dir=node.data_dir / STORE_DIR,
            **tls_arguments(factory, tls, f"{section.backend} store server"),
        )
        settings = managed.client_settings()
    client = registry.consensus(section.backend)
    # An external store has its own CA: its TLS is in its settings, not the cluster's CA.
    consensus = client(
        settings,
        **tls_arguments(client, tls if managed is not None else None, f"{section.backend} client"),
        namespace=config.cluster.namespace,
        node_name=node.name,
        ttl=timing.ttl,
        retry_timeout=timing.retry_timeout,
    )
    database = registry.replication(config.replication.backend)
    replication = database(
        config.replication.settings,
        **tls_arguments(database, tls, f"{config.replication.backend} replication"),
        node_name=node.name,
        host=node.host,
        data_dir=node.data_dir / REPLICATION_DIR,
    )
    filesync = None
    if config.filesync is not None:
        engine = registry.filesync(config.filesync.backend)
        what = f"{config.filesync.backend} file sync"
        filesync = engine(
            config.filesync.settings,
            **tls_arguments(engine, tls, what, required=False),
            node_name=node.name,
            host=node.host,
            data_dir=node.data_dir / FILESYNC_DIR,
            directories=config.filesync.directories,
        )
    services = None
    if config.services is not None:
        services = registry.services(config.services.backend)(config.services.settings)
    return Backends(consensus, replication, filesync, services, managed)


class LeaderWatch:
    """A thread that wakes the loop as soon as the leader key changes.

    It survives a store outage: a watch that fails is made again once the store answers.
    """

    def __init__(self, consensus: ConsensusBackend, wake: Callable[[], None]) -> None:
        self._consensus = consensus
        self._wake = wake
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="hacore-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)

    def _run(self) -> None:
        watcher: Watcher | None = None
        while not self._stop.is_set():
            if watcher is None:
                try:
                    watcher = self._consensus.watch(keys.LEADER_KEY)
                except Exception as err:
                    log.debug("leader watch not in force: %s", err)
                    self._stop.wait(1.0)
                    continue
            began = time.monotonic()
            try:
                event = watcher.get(1.0)
            except Exception as err:
                log.debug("leader watch failed: %s", err)
                event = None
            if event is not None:
                self._wake()
            elif time.monotonic() - began < 0.5:
                # A closed or broken watch answers at once: make a new one, without spinning.
                with contextlib.suppress(Exception):
                    watcher.close()
                watcher = None
                self._stop.wait(0.5)
        if watcher is not None:
            with contextlib.suppress(Exception):
                watcher.close()


class Membership:
    """Tracks the member set between loops: the membership hook, database access, file peers."""

    def __init__(
        self,
        name: str,
        backends: Backends,
        hooks: HookCaller,
        revocations: RevocationSync | None = None,
    ) -> None:
        self.name = name
        #: the CRL and rotated secrets of removals (hacore/agent/revocation_sync.py)
        self.revocations = revocations
        self.log = NodeLog(log, name)
        self.backends = backends
        self.hooks = hooks
        self._seen: dict[str, Member] | None = None
        self._allowed: dict[str, str] = {}
        self._peers: dict[str, Any] | None = None
        self._identity: dict[str, Any] | None = None
        self._doubted: dict[tuple[str, str], str] = {}

    def files_identity(self) -> dict[str, Any] | None:
        fs = self.backends.filesync
        if fs is not None and self._identity is None:
            try:
                self._identity = fs.identity()
            except Exception as err:
                self.log.debug("file sync identity not available yet: %s", err)
        return self._identity

    def update(self, view: ClusterView, removed: Iterable[str], *, initialized: bool) -> None:
        """Report changes to the plugins; once there is a database, let every member in."""
        if self.revocations is not None:
            self.revocations.tick(removed=self.name in set(removed))
        current = {m.name: m for m in view.members}
        previous = self._seen if self._seen is not None else {}
        added = tuple(m for n, m in current.items() if n not in previous)
        gone = tuple(m for n, m in previous.items() if n not in current)
        self._seen = current
        if added or gone:
            self.log.info(
                "members changed: +%s -%s",
                ",".join(m.name for m in added) or "none",
                ",".join(m.name for m in gone) or "none",
            )
            self.hooks.call("hacore_membership_changed", view=view, added=added, removed=gone)
        dropped = set(removed)
        believed = [m for m in view.members if self._believed(m)]
        for member in believed if initialized else ():
            if member.name == self.name or member.name in dropped or not member.host:
                continue
            if self._allowed.get(member.name) != member.host:
                try:
                    self.backends.replication.allow_member(member.name, member.host)
                except Exception as err:
                    self.log.warning("could not let %s reach this database: %s", member.name, err)
                    continue
                self._allowed[member.name] = member.host
        fs = self.backends.filesync
        peers = {
            m.name: m.extra["filesync"]
            for m in believed
            if m.name != self.name and m.name not in dropped and "filesync" in m.extra
        }
        if fs is not None and peers != self._peers:
            try:
                fs.set_peers(peers)
                self._peers = peers
            except Exception as err:
                self.log.warning("could not update the file sync peers: %s", err)

    def _believed(self, member: Member) -> bool:
        """Whether ``member``'s record may open the database and the file sync to its
        host: signed by its own node's certificate (hacore/pki/record_identity.py); every
        record when the cluster runs without TLS (nothing to prove identity with)."""
        if self.revocations is None:
            return True
        reason = self.revocations.why_not_believed(member)
        seen = (member.name, member.host)
        if reason is not None and self._doubted.get(seen) != reason:
            self.log.warning(
                "not believing the record of %s at %s: %s", member.name, member.host, reason
            )
        if reason is None:
            self._doubted.pop(seen, None)
        else:
            self._doubted[seen] = reason
        return reason is None


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


def member_record(
    config: NodeConfig,
    role: NodeRole,
    obs: Observation,
    *,
    candidate: bool,
    api_url: str,
    address: tuple[str, int] | None,
    files: dict[str, Any] | None,
    checks: Mapping[str, CheckResult],
    files_state: SyncState | None = None,
    servers: Sequence[ServerStatus] = (),
) -> Member:
    """This node's record in the store: whether it campaigns, and in ``extra`` where others
    reach its database and files."""
    extra: dict[str, Any] = {}
    if address is not None:
        extra["replication"] = {"host": address[0], "port": address[1]}
    if files is not None:
        extra["filesync"] = files
    if files_state is not None:
        extra["files"] = {
            "in_sync": files_state.in_sync,
            "completion": files_state.completion,
            "need_bytes": files_state.need_bytes,
            "last_change": files_state.last_change,
            "detail": files_state.detail,
        }
    supervised = [s.to_json() for s in servers if s.up is not None]
    if supervised:
        extra["servers"] = supervised
    files_tls = tls_paths.tls_files(config)
    if files_tls is not None and files_tls.cert_file.exists():
        try:
            node = record_identity.node_material(files_tls.cert_file.parent)
            extra[record_identity.IDENTITY] = record_identity.sign(
                node.certificate, node.key, config.node.name, config.node.host, api_url, extra
            )
        except HacoreError as err:
            log.warning("the member record goes out unsigned: %s", err)
    return Member(
        name=config.node.name,
        api_url=api_url,
        host=config.node.host,
        role=role,
        healthy=obs.health.ok,
        position=obs.db.position,
        timeline=obs.db.timeline,
        version=__version__,
        checks={n: {"ok": r.ok, "detail": r.detail} for n, r in checks.items()},
        extra=extra,
        candidate=candidate,
    )


def plugin_checks(hooks: HookCaller) -> list[HealthCheck]:
    """The checks every plugin adds (``hacore_health_checks``)."""
    found: list[HealthCheck] = []
    for plugin, checks in hooks.call("hacore_health_checks"):
        if not isinstance(checks, list) or not all(isinstance(c, HealthCheck) for c in checks):
            hooks.log.error("%s's hacore_health_checks did not return a list of checks", plugin)
            continue
        found.extend(checks)
    return found
