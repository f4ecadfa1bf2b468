"""What the API asks of a member node, each request handed to the module of its operation.

The node service (:mod:`hacore.cluster.node_service`) is the API's
:class:`~hacore.api.facade.AgentFacade`; these are the requests only a member answers
(switchover, repair, pause, cluster settings, removal, the views of its agent), which need
of the service only its agent, its configuration and its state. What the service does with
its own life (start, join, the bootstrap token, the admin credential) stays there.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from hacore.agent.runtime import Agent
from hacore.api.errors import ConflictError, UnavailableError
from hacore.api.facade import AgentFacade
from hacore.cluster import cluster_config, repair
from hacore.cluster import node_views as views
from hacore.cluster import pause as maintenance
from hacore.cluster.operation_state import ClusterState, Phase
from hacore.cluster.progress import Progress
from hacore.cluster.remove import remove_node
from hacore.config.node import NodeConfig
from hacore.plugins.registry import HacorePlugins


class MemberOperations(AgentFacade):
    """The member requests of :class:`~hacore.cluster.node_service.NodeService`, which sets
    the attributes below (every method is thread-safe)."""

    agent: Agent | None
    config: NodeConfig
    plugins: HacorePlugins
    progress: Progress | None
    _state: ClusterState | None
    _lock: threading.RLock

    def remove_node(self, name: str) -> dict[str, Any]:
        state = self.require_member()
        return remove_node(self.agent, name, state.record.name)

    def switchover(self, to: str | None) -> dict[str, Any]:
        self.require_member()
        agent = self.agent
        if agent is None:
            raise UnavailableError("this node's agent is not running")
        request = agent.request_switchover(to)
        return {"from": request.from_node, "to": request.to_node}

    def restart_node(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /nodes/<name>/restart`` on that node; its progress is the ``operation``."""
        return self._repair(
            "restart", repair.RESTART_STEPS, lambda p: repair.restart(self.agent, name, body, p)
        )

    def reinit_node(self, name: str) -> dict[str, Any]:
        """``POST /nodes/<name>/reinit`` on that node; its progress is the ``operation``."""
        return self._repair(
            "reinit", repair.REINIT_STEPS, lambda p: repair.reinit(self.agent, name, p)
        )

    def _repair(
        self,
        what: str,
        steps: tuple[tuple[str, str], ...],
        start: Callable[[Progress], dict[str, Any]],
    ) -> dict[str, Any]:
        self.require_member()
        with self._lock:
            if self.progress is not None and self.progress.running:
                raise ConflictError(f"a {self.progress.operation} is already running here")
            progress = Progress(what, steps)
            answer = start(progress)
            self.progress = progress
        return answer

    def pause(self, body: dict[str, Any], by: str) -> dict[str, Any]:
        """``POST /pause`` on any member (hacore/cluster/pause.py)."""
        self.require_member()
        return maintenance.pause(self.agent, body, by=by)

    def resume(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /resume`` on the node holding the lease (hacore/cluster/pause.py)."""
        self.require_member()
        return maintenance.resume(self.agent, body)

    def cluster_config(self) -> dict[str, Any]:
        """``GET /cluster/config`` on any member (hacore/cluster/cluster_config.py)."""
        self.require_member()
        return cluster_config.show(self._running_agent())

    def change_cluster_config(self, body: dict[str, Any], by: str) -> dict[str, Any]:
        """``PUT /cluster/config`` on the active (hacore/cluster/cluster_config.py)."""
        self.require_member()
        agent = self._running_agent()
        return cluster_config.change(agent, agent.config, self.plugins.registry, body, by=by)

    def _running_agent(self) -> Agent:
        agent = self.agent
        if agent is None:
            raise UnavailableError("this node's agent is not running")
        return agent

    def failover(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /failover`` on any member (hacore/cluster/repair.py)."""
        self.require_member()
        return repair.failover(self.agent, body)

    def explain(self, name: str) -> dict[str, Any]:
        return views.explain_node(self.config, self.agent, name)

    def history(self) -> dict[str, Any]:
        self.require_member()
        return views.history(self.agent)

    def salvage_list(self) -> dict[str, Any]:
        return views.salvage_list(self.config)

    def salvage_show(self, ident: str) -> dict[str, Any]:
        return views.salvage_show(self.config, ident)

    def failsafe(self, body: bytes, signature: str) -> tuple[bytes, str]:
        """``POST /failsafe``: the agent's signed answer to an active's failsafe question."""
        agent = self.agent
        if agent is None:
            raise UnavailableError("this node's agent is not running")
        return agent.failsafe_answer(body, signature)

    def require_member(self) -> ClusterState:
        state = self._state
        if state is None or state.phase is not Phase.MEMBER:
            raise UnavailableError(f"{self.config.node.name} is not a member of a cluster")
        return state
