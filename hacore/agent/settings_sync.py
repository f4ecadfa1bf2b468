"""The cluster-wide settings as the agent runs them: seeded into the store, followed from it.

The ``settings`` key (hacore/agent/keys.py) holds what every node must agree on
(hacore/config/cluster_settings.py). ``cluster start`` writes it before the agent starts
(hacore/cluster/start.py); an active that finds it absent (a cluster started by an older
hacore) writes it from its ``node.yaml``. Every agent reads it in its loop's store reading
and, when it changed, applies it within that loop:

- the failover policy and the check settings: the decision configuration is rebuilt, so the
  very next decision (and ``cluster explain``) uses them;
- the PostgreSQL parameters: the replication backend renders them and reloads the server;
  a parameter that needs a server restart shows as ``pending_restart`` in the node's status;
- ``timing`` and ``failover.failsafe_mode`` / ``minority_mode`` are *stored* at once but
  used from the agent's next start: the store's lease was granted with the running ``ttl``
  and the store client times out after the running ``retry_timeout``, and the two modes
  shape the fence keeper's deadline; changing them under a held lease would break the
  self-fencing rule (DESIGN §3). They are reported as ``restart_pending``.

A ``node.yaml`` value that disagrees with the store is logged once per key ("comes from the
store"): node.yaml's cluster-wide part only seeds the cluster.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from hacore.agent import keys
from hacore.agent.hooks import NodeLog
from hacore.agent.observe import StoreReading
from hacore.backends.consensus import ConsensusBackend
from hacore.backends.replication import ReplicationBackend
from hacore.config.cluster_settings import ClusterWide
from hacore.config.node import NodeConfig
from hacore.errors import HacoreError

#: ``StoreGate``: a store call, refused past the self-fencing deadline
StoreCall = Callable[[Callable[[], object]], object]


def live_part(stored: ClusterWide, running: ClusterWide) -> ClusterWide:
    """What of ``stored`` an agent running ``running`` applies without a restart."""
    return attrs.evolve(
        stored,
        timing=running.timing,
        failover=attrs.evolve(
            stored.failover,
            failsafe_mode=running.failover.failsafe_mode,
            minority_mode=running.failover.minority_mode,
        ),
    )


class SettingsSync:
    """Follows the ``settings`` key; ``config`` is the configuration the agent started with
    (``node.yaml``, or with the stored settings already applied at start)."""

    def __init__(
        self,
        config: NodeConfig,
        consensus: ConsensusBackend,
        replication: ReplicationBackend,
        log: NodeLog,
    ) -> None:
        self.local = config
        self.consensus = consensus
        self.replication = replication
        self.log = log
        #: what the agent runs with now
        self.running = ClusterWide.from_config(config)
        #: the stored settings last followed (None: none read yet)
        self.followed: ClusterWide | None = None
        self.revision: int | None = None
        #: stored keys that wait for the agent's restart
        self.restart_pending: tuple[str, ...] = ()
        #: parameters not handed to the backend yet (a job was running)
        self._parameters_due = False
        self._told: set[str] = set()

    def step(
        self, reading: StoreReading, *, active: bool, busy: bool, call: StoreCall
    ) -> NodeConfig | None:
        """One loop's reading; the configuration to run with when it changed, else None.

        ``active``: this node holds the lease (it seeds an absent key); ``busy``: a job
        (clone, rewind) works on the database, so the parameters wait for the next loop.
        """
        if reading.view is None:
            return None
        stored = reading.settings
        if stored is None:
            if active and reading.settings_version == 0:
                self._seed(call)
            return None
        changed: NodeConfig | None = None
        if stored.settings != self.followed:
            changed = self._follow(stored)
        if self._parameters_due and not busy:
            self._apply_parameters()
        return changed

    def json(self) -> dict[str, object]:
        """For the node's status: the revision applied and what waits for a restart."""
        return {"revision": self.revision, "restart_pending": list(self.restart_pending)}

    def _seed(self, call: StoreCall) -> None:
        record = keys.StoredSettings(self.running, revision=1, by=self.local.node.name)
        try:
            written = call(
                lambda: self.consensus.put(keys.SETTINGS_KEY, record.encode(), expect_version=0)
            )
        except HacoreError as err:
            self.log.info("cluster-wide settings not seeded yet: %s", err)
            return
        if written:
            self.log.info("cluster-wide settings seeded into the store from node.yaml")

    def _follow(self, stored: keys.StoredSettings) -> NodeConfig | None:
        wanted = stored.settings
        for key in ClusterWide.from_config(self.local).differences(wanted):
            if key not in self._told:
                self._told.add(key)
                self.log.info(
                    "cluster-wide setting %s comes from the store (node.yaml differs)", key
                )
        live = live_part(wanted, self.running)
        pending = tuple(live.differences(wanted))
        for key in pending:
            if key not in self.restart_pending:
                self.log.warning(
                    "cluster-wide setting %s changed in the store; restart the agent to apply it",
                    key,
                )
        self.restart_pending = pending
        self.followed, self.revision = wanted, stored.revision
        if live == self.running:
            return None
        if live.parameters != self.running.parameters:
            self._parameters_due = True
        changed = live.differences(self.running)
        self.running = live
        self.log.warning(
            "cluster-wide settings revision %d applied: %s", stored.revision, ", ".join(changed)
        )
        return live.apply_to(self.local)

    def _apply_parameters(self) -> None:
        self._parameters_due = False
        try:
            self.replication.apply_parameters(self.running.parameters)
        except (HacoreError, OSError) as err:
            self.log.error("the PostgreSQL parameters could not be applied: %s", err)
