"""What the REST API needs from the agent: one cached snapshot, and the cluster operations.

The agent's loop builds a :class:`~hacore.agent.snapshot.NodeSnapshot` once per iteration and
the API serves every probe (``/status``, ``/health``...) and ``/metrics`` from the latest one,
so a load balancer hammering ``/status`` never causes a store round trip and never waits for
the loop.

The operations (start, join ticket, remove, switchover) may be slow and touch the store; they
raise :mod:`hacore.agent.errors` or :mod:`hacore.api.errors` classes (or
:class:`~hacore.errors.HacoreError` subclasses), mapped to a status by
:func:`hacore.api.errors.status_for`, whose message the user sees as it is.

Some abilities are the node service's alone (explain, history, salvage, pause, repair,
teardown, failsafe, the cluster-wide settings): a stand-in for the agent (a benchmark's, a
test's) that subclasses :class:`AgentFacade` inherits their defaults, which answer 404
naming the node.
"""

from __future__ import annotations

from typing import Any, Protocol

from hacore.agent.snapshot import NodeSnapshot
from hacore.api.errors import NotFoundError


class AgentFacade(Protocol):
    """The agent runtime as the API server sees it. Every method is called from many request
    threads at once, so implementations must be thread-safe.

    The methods after :meth:`switchover` have defaults that refuse (see the module's
    docstring); an implementation gets them by naming this class as its base."""

    def snapshot(self) -> NodeSnapshot:
        """The loop's latest snapshot; must return at once (no store or database call)."""
        ...

    def cluster(self) -> dict[str, Any]:
        """The cluster view as a JSON-able dict: name, leader, members, store members..."""
        ...

    def start_cluster(self, options: dict[str, Any]) -> dict[str, Any]:
        """``cluster start`` on this node; ConflictError when a cluster already exists or the
        database is not empty."""
        ...

    def join_ticket(self, request: dict[str, Any]) -> dict[str, Any]:
        """On the active: check a joining node (name unique, same version, empty) and answer
        what it needs to join. NotActiveError on another node, ConflictError on a refusal;
        a refused request changes nothing."""
        ...

    def remove_node(self, name: str) -> dict[str, Any]:
        """On the active: remove a standby. NotFoundError for an unknown name, ConflictError for
        the active itself."""
        ...

    def switchover(self, to: str | None) -> dict[str, Any]:
        """Hand the active role over (to ``to``, or the best standby). NotFoundError for an
        unknown target, ConflictError when no standby can take over."""
        ...

    def cluster_ca(self) -> dict[str, Any] | None:
        """``GET /cluster/ca``: the CA certificate this node trusts; None (404) without TLS."""
        return None

    def explain(self, name: str) -> dict[str, Any]:
        """``GET /nodes/<name>/explain``: why the node's last loop decided what it did."""
        raise _lacks(self, "explains nothing")

    def history(self) -> dict[str, Any]:
        """``GET /history``: every change of active, oldest first."""
        raise _lacks(self, "keeps no history")

    def salvage_list(self) -> dict[str, Any]:
        """``GET /salvage``: this node's salvage archives."""
        raise _lacks(self, "keeps no salvage archives")

    def salvage_show(self, ident: str) -> dict[str, Any]:
        """``GET /salvage/<id>``: one salvage archive, whole."""
        raise _lacks(self, "keeps no salvage archives")

    def teardown(self) -> dict[str, Any]:
        """``POST /cluster/teardown``: this node's last step in ``cluster teardown``."""
        raise _lacks(self, "takes no teardown")

    def restart_node(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /nodes/<name>/restart``."""
        raise _lacks(self, "restarts nothing")

    def reinit_node(self, name: str) -> dict[str, Any]:
        """``POST /nodes/<name>/reinit``."""
        raise _lacks(self, "re-clones nothing")

    def failover(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /failover``."""
        raise _lacks(self, "takes no failover")

    def pause(self, body: dict[str, Any], by: str) -> dict[str, Any]:
        """``POST /pause``; ``by`` names the API user and client asking."""
        raise _lacks(self, "takes no pause")

    def resume(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /resume``."""
        raise _lacks(self, "takes no resume")

    def cluster_config(self) -> dict[str, Any]:
        """``GET /cluster/config``: the cluster-wide settings in the store."""
        raise _lacks(self, "keeps no cluster-wide settings")

    def change_cluster_config(self, body: dict[str, Any], by: str) -> dict[str, Any]:
        """``PUT /cluster/config``: replace them (compare-and-set on ``body["version"]``)."""
        raise _lacks(self, "takes no settings change")

    def change_admin_password(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /cluster/admin-password``: on the active, the admin password the request
        presented (``hacore.api.admin_secret``) becomes ``body["new_password"]``."""
        raise _lacks(self, "takes no admin password change")

    def failsafe(self, body: bytes, signature: str) -> tuple[bytes, str]:
        """``POST /failsafe``: the signed answer to an active's failsafe question."""
        raise _lacks(self, "takes no failsafe questions")


def _lacks(facade: AgentFacade, what: str) -> NotFoundError:
    return NotFoundError(f"{facade.snapshot().node_name} {what}")


def probe_json(snap: NodeSnapshot, now: float) -> dict[str, Any]:
    """The small body of the probe endpoints (``/status``...): enough to see why a node
    answered 503 without another request."""
    repl = snap.replication
    age = snap.loop_age(now)
    return {
        "node": snap.node_name,
        "state": snap.state.value,
        "active": snap.is_active,
        "standby_streaming": snap.standby_streaming,
        "healthy": snap.healthy,
        "leader": snap.leader,
        "lease_token": snap.lease_token,
        "position": repl.position if repl else None,
        "timeline": repl.timeline if repl else None,
        "loop_age": None if age is None else round(age, 3),
        "version": snap.version,
        "failsafe": None if snap.failsafe is None else dict(snap.failsafe),
        "minority": None if snap.minority is None else dict(snap.minority),
        "paused": snap.paused is not None,
        "pause": None if snap.paused is None else dict(snap.paused),
        "pending_restart": repl.pending_restart if repl else None,
        "settings": None if snap.settings is None else dict(snap.settings),
    }
