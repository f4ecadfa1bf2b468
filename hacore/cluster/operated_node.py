"""What the cluster operations need from the node service that runs them.

``cluster start``, ``cluster join`` and a teardown's last step work on this node's service
(:class:`hacore.cluster.node_service.NodeService`), which also calls them: these protocols are
the narrow side of that, so the operations do not import the service, as
:class:`hacore.api.facade.AgentFacade` is what the API knows of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from hacore.agent.runtime import Agent
from hacore.cluster.operation_state import ClusterState, StateFile
from hacore.cluster.parts import LocalParts
from hacore.config.node import NodeConfig
from hacore.plugins.registry import HacorePlugins


class FormingNode(Protocol):
    """The node a ``cluster start`` or ``cluster join`` runs on."""

    @property
    def config(self) -> NodeConfig:
        """The configuration in force (node.yaml with the operation's ``--options``)."""
        ...

    @property
    def plugins(self) -> HacorePlugins: ...

    @property
    def data_dir(self) -> Path: ...

    @property
    def states(self) -> StateFile:
        """Where the node's cluster state is kept (``cluster.json``)."""
        ...

    def require_state(self) -> ClusterState: ...

    def save(self, state: ClusterState) -> ClusterState: ...

    def tls_hosts(self) -> tuple[str, ...]:
        """The names and addresses this node's certificate is for."""
        ...

    def secure(self) -> str:
        """Make the node's TLS material and serve the API with it; says what it did."""
        ...

    def parts(self) -> LocalParts: ...

    def make_agent(self) -> Agent: ...

    def start_keeper(self) -> None:
        """Start the node's fence keeper ahead of its agent, which adopts it."""
        ...

    def start_agent(self) -> None: ...

    def reset_to_empty(self) -> None:
        """Undo a join that failed before the node was a member (its keeper stopped)."""
        ...


class EndingNode(Protocol):
    """The node whose service a teardown ends last."""

    @property
    def config(self) -> NodeConfig: ...

    @property
    def agent(self) -> Agent | None: ...

    @property
    def state(self) -> ClusterState | None: ...

    def parts(self) -> LocalParts: ...

    def detach_agent(self) -> Agent | None: ...

    def save(self, state: ClusterState) -> ClusterState: ...

    def stop(self) -> None: ...
