"""``nodes restart`` and ``nodes reinit`` of one node: whether it may, and the job it runs.

The agent submits the job (:meth:`hacore.agent.runtime.Agent.repair`); while it runs the loop
decides nothing else (``decide`` starts no other job and does not campaign), and its failure
is logged like a clone's. What is refused is refused here, with the API's errors.
"""

from __future__ import annotations

from collections.abc import Callable

from hacore.agent import operations
from hacore.agent.errors import InvalidRequestError, NotNowError, StateConflictError
from hacore.agent.execute import Executor
from hacore.agent.vocabulary import Action, NodeState
from hacore.backends.records import ClusterView
from hacore.backends.replication import ReplicationBackend

#: States in which ``nodes restart`` and ``reinit`` are refused.
_NOT_REPAIRABLE = frozenset(
    {NodeState.ACTIVE, NodeState.PROMOTING, NodeState.REMOVED, NodeState.EMPTY, NodeState.INIT}
)
#: ... and ``nodes restart`` too: the agent is making the node a standby again by itself.
_REJOINING = frozenset({NodeState.FENCED, NodeState.REJOINING, NodeState.CLONING})

Job = tuple[str, Callable[[], None]]


def standby_job(
    action: Action,
    *,
    name: str,
    state: NodeState,
    holds_lease: bool,
    view: ClusterView | None,
    executor: Executor,
    replication: ReplicationBackend,
    database: bool,
    services: bool,
) -> Job:
    """What restarting (:attr:`Action.RESTART`) or re-cloning (:attr:`Action.CLONE`) this
    standby does, and the job that does it. Refused on a node that holds or is taking the
    lease: the active is restarted after a switchover, and never re-cloned."""
    refused = _NOT_REPAIRABLE | (_REJOINING if action is Action.RESTART else frozenset())
    if holds_lease or state in refused:
        raise StateConflictError(
            f"{name} is {state.value}: only a standby can be "
            f"{'re-cloned' if action is Action.CLONE else 'restarted'} this way"
            + (
                " (switch over first: hacore cluster switchover)"
                if state in (NodeState.ACTIVE, NodeState.PROMOTING)
                else ""
            )
        )
    leader = view.leader.name if view is not None and view.leader is not None else None
    if leader == name:
        raise StateConflictError(f"{name} holds the leader key: it is not a standby")
    if action is Action.CLONE:
        if leader is None:
            raise NotNowError("there is no active node to copy the database from")
        origin = executor.source(view, leader)
        what = f"reinit: a new copy of the database from {leader}"

        def work() -> None:
            replication.clone(origin)
            replication.start(follow=origin)

        return what, work
    source = executor.source(view, leader) if leader is not None else None
    parts = ["the database"] if database else []
    parts += ["the services"] if services else []
    what = f"restart of {' and '.join(parts) or 'nothing'}"
    return what, operations.restart_work(
        replication, executor.extras, source, database=database, services=services
    )


def in_place_job(
    action: Action,
    *,
    name: str,
    state: NodeState,
    paused: bool,
    executor: Executor,
    replication: ReplicationBackend,
    database: bool,
    services: bool,
) -> Job:
    """``nodes restart --in-place`` of the active while paused: the database stops and
    comes back the primary it was, as a job; nobody takes over meanwhile (rule P0), and
    the keeper enforces no deadline."""
    if action is not Action.RESTART:
        raise InvalidRequestError("only a restart can be done in place")
    if not paused:
        raise StateConflictError(
            f"{name}: an in-place restart of the active needs maintenance mode: run "
            "hacore cluster pause first (without --in-place the active is restarted after "
            "a switchover)"
        )
    if state is not NodeState.ACTIVE:
        raise StateConflictError(
            f"{name} is {state.value}: only the active restarts in place; a "
            "standby restarts without --in-place"
        )
    parts = ["the database"] if database else []
    parts += ["the services"] if services else []
    what = f"in-place restart of {' and '.join(parts) or 'nothing'} (paused)"
    work = operations.restart_in_place_work(
        replication, executor.extras, database=database, services=services
    )
    return what, work
