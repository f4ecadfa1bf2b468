"""The node service's monitor: what it does, every half second, about what the agent shows.

It finishes a start once the node is active and a join once the node streams (and holds the
files), notices that the node was removed from its cluster and stops it, stops the service
when the agent's loop died, on the active cancels joins that were granted and never came,
deletes a clear CA key once the store holds it sealed, and takes a changed admin
credential from the store (hacore/cluster/admin_password.py).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Protocol

from hacore.agent.runtime import Agent
from hacore.agent.vocabulary import NodeState
from hacore.client.units import human_bytes
from hacore.cluster import admin_password
from hacore.cluster.ca_key import drop_clear_key
from hacore.cluster.grant import collect_stale_joins
from hacore.cluster.operation_state import ClusterState, Phase, Step
from hacore.cluster.parts import LocalParts
from hacore.cluster.pending import STALE_AFTER, pending_key
from hacore.cluster.progress import Progress
from hacore.cluster.remove import wait_store_forgets
from hacore.errors import HacoreError

log = logging.getLogger("hacore.cluster")

#: seconds between two looks for joins granted and never finished (on the active)
STALE_CHECK_INTERVAL = 30.0
#: seconds between two looks for a clear CA key the store now holds sealed
#: (hacore/cluster/ca_key.py: a cluster made by an earlier release)
CA_KEY_CHECK_INTERVAL = 10.0


class MonitoredNode(Protocol):
    """What the monitor needs from the node service."""

    def watched(self) -> tuple[Agent | None, ClusterState | None, Progress | None]:
        """The agent, the cluster state and the running operation, read together."""
        ...

    def fail(self, failure: str) -> None:
        """Stop the service, which then exits with ``failure`` as its error."""
        ...

    def finish(self, result: str) -> None:
        """The start or join is done: the node is a member; ``result`` is what it says."""
        ...

    def parts(self) -> LocalParts: ...

    def removed(self, state: ClusterState) -> None:
        """The node's agent is stopped after its removal: forget it, record the phase."""
        ...

    def take_admin_credential(self, credential: admin_password.AdminCredential) -> None:
        """The cluster's admin password changed: take its new hash."""
        ...


class NodeMonitor:
    """One look at a time (:meth:`tick`), from the service's main thread."""

    def __init__(self, node: MonitoredNode) -> None:
        self.node = node
        self._next_stale_check = 0.0
        self._next_key_check = 0.0
        self._credential = admin_password.Follower()

    def tick(self) -> None:
        """Finish operations, notice a removal, cancel stale joins: what the loop shows."""
        agent, state, progress = self.node.watched()
        if agent is None or state is None:
            return
        if agent.died is not None:
            # a loop that died cannot be trusted to resume: exit, the supervisor restarts us
            failure = f"the agent loop died: {type(agent.died).__name__}: {agent.died}"
            log.critical("%s; stopping the agent service", failure)
            if progress is not None and progress.running:
                progress.fail(failure)
            self.node.fail(failure)
            return
        snap = agent.snapshot()
        if state.phase is Phase.STARTING and state.has(Step.AGENT) and snap.is_active:
            if progress is not None:
                progress.finish("active", f"fencing token {snap.lease_token}")
            self.node.finish(f"{snap.node_name} is the active node of cluster {state.record.name}")
        elif state.phase is Phase.JOINING and state.has(Step.AGENT):
            if progress is not None and snap.state is NodeState.CLONING:
                progress.begin("clone", f"copying the database from {snap.leader}")
            # A standby holds the manager's files too before the join is done (the "files"
            # check fails until its first complete copy).
            files = snap.checks.get("files")
            files_ok = files.ok if files is not None else agent.backends.filesync is None
            if snap.standby_streaming and not files_ok and progress is not None:
                progress.finish("streaming", f"following {snap.leader}")
                progress.begin("files", files.detail if files else "waiting for the file sync")
            if snap.standby_streaming and files_ok and forget_pending(agent):
                if progress is not None:
                    clone = progress.to_json().get("clone")
                    copied = f"{human_bytes(clone['total'])} from {snap.leader}" if clone else ""
                    progress.finish("clone", copied)
                    progress.finish("streaming", f"following {snap.leader}")
                    progress.finish("files", files.detail if files else "no file sync configured")
                self.node.finish(
                    f"{snap.node_name} is a standby of {snap.leader} in cluster "
                    f"{state.record.name}, streaming"
                )
        elif state.phase is Phase.MEMBER:
            if time.monotonic() >= self._next_key_check:
                self._next_key_check = time.monotonic() + CA_KEY_CHECK_INTERVAL
                try:
                    drop_clear_key(agent.config, agent.consensus)
                except HacoreError as err:
                    log.debug("the clear CA key not checked: %s", err)
            if self._credential.due():
                self._follow_credential(agent)
            if snap.state is NodeState.REMOVED:
                self._become_removed(agent, state)
            elif snap.is_active and time.monotonic() >= self._next_stale_check:
                self._next_stale_check = time.monotonic() + STALE_CHECK_INTERVAL
                try:
                    collect_stale_joins(agent, STALE_AFTER, time.time())
                except HacoreError as err:
                    log.debug("stale joins not checked: %s", err)

    def _follow_credential(self, agent: Agent) -> None:
        auth = agent.config.api.auth
        try:
            found = admin_password.follow(agent.consensus, auth.password_hash if auth else None)
            if found is not None:
                self.node.take_admin_credential(found)
        except HacoreError as err:
            log.debug("the admin credential not followed: %s", err)

    def _become_removed(self, agent: Agent, state: ClusterState) -> None:
        log.warning(
            "this node was removed from cluster %s: stopping its agent, database and store server",
            state.record.name,
        )
        store = agent.backends.managed_store
        agent.stop(resign=True, timeout=60.0)
        if store is not None:
            timing = agent.config.timing
            wait_store_forgets(store, agent.name, 2 * timing.ttl + 30 * timing.loop_wait)
        with contextlib.suppress(HacoreError):
            self.node.parts().stop()
        self.node.removed(state)


def forget_pending(agent: Agent) -> bool:
    """Delete the node's pending-join key: its join is done (False: the store refused)."""
    try:
        agent.consensus.delete(pending_key(agent.name))
    except HacoreError as err:
        log.debug("pending join key not deleted yet: %s", err)
        return False
    return True
