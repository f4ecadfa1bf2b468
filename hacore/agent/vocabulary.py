"""The agent's vocabulary: what it observed, what state it is in, and what it decided.

Everything here is an immutable record or an enum so that :func:`hacore.agent.decide.decide`
can be a pure function: the I/O edge builds one :class:`Observation` per loop, calls
``decide``, and carries out the returned :class:`Decision`. Nothing in these records is free
text that code compares; ``Decision.reason`` is for people only.

Times are this node's monotonic clock in seconds (``time.monotonic()``): never compared with
another node's clock.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

import attrs

from hacore.backends.records import ClusterView, Lease, NodeRole
from hacore.backends.replication import ReplicationStatus
from hacore.errors import ConfigError


class NodeState(enum.Enum):
    """Where a node is in its life cycle; every decision names the state it leads to."""

    #: The agent just started and has decided nothing yet (only ever a ``previous`` state).
    INIT = "init"
    #: No database yet; waits for a leader to clone from (bootstrap is ``cluster start``'s job).
    EMPTY = "empty"
    #: A clone from the leader is running off the loop.
    CLONING = "cloning"
    #: Holds a read-only copy: following the leader, or waiting for an election.
    STANDBY = "standby"
    #: Holds (or is campaigning for) the lease; the database is not yet the active's.
    PROMOTING = "promoting"
    #: Holds the lease, the database is writable and carries the lease's fencing token.
    ACTIVE = "active"
    #: A former primary whose database refuses writes; follows nobody yet.
    FENCED = "fenced"
    #: A former primary being rewound to follow the leader (off the loop).
    REJOINING = "rejoining"
    #: Removed from the cluster by ``nodes remove``: never campaigns.
    REMOVED = "removed"

    @property
    def role(self) -> NodeRole:
        """The role the I/O edge publishes in this node's member record."""
        return _ROLE_OF_STATE[self]


_ROLE_OF_STATE = {
    NodeState.INIT: NodeRole.STARTING,
    NodeState.EMPTY: NodeRole.STARTING,
    NodeState.CLONING: NodeRole.CLONING,
    NodeState.STANDBY: NodeRole.STANDBY,
    NodeState.PROMOTING: NodeRole.STARTING,
    NodeState.ACTIVE: NodeRole.ACTIVE,
    NodeState.FENCED: NodeRole.FENCED,
    NodeState.REJOINING: NodeRole.FENCED,
    NodeState.REMOVED: NodeRole.REMOVED,
}


class Action(enum.Enum):
    """What the I/O edge does next. Compound actions run their steps in the order given.

    Every action is idempotent: repeating it on a node where it already took effect changes
    nothing, so an agent that crashed half-way simply gets the same decision again.
    """

    #: Nothing to change; publish the member record and wait for the next loop.
    NONE = "none"
    #: Lease held, database writable: keep active-only services up, keep the synchronous
    #: standby setting and the store's status key current.
    STAY_ACTIVE = "stay_active"
    #: Try to create the leader key. On success observe again at once (the next decision is
    #: PROMOTE); on failure another node won, which the next loop will follow.
    CAMPAIGN = "campaign"
    #: Lease held, database not yet the active's: start the database if stopped, call the
    #: ``before_promote`` hooks (a veto: resign, set ``veto_until = now + promote_backoff``,
    #: stop), promote it or lift its fence, record the lease's fencing token, flip file sync,
    #: start active-only services, call ``after_promote``.
    PROMOTE = "promote"
    #: Orderly release while the lease is held: ``before_demote``, fence (as FENCE), wait up to
    #: ``retry_timeout`` for ``target`` (if any) to receive everything, publish the final
    #: position, then resign the lease, ``after_demote``. Observe again at once.
    STEP_DOWN = "step_down"
    #: Make the database refuse writes and cut its clients now, then stop active-only services
    #: and flip file sync to receive-only. A no-op on a database that is not a primary.
    FENCE = "fence"
    #: FENCE, then REWIND toward ``target``.
    FENCE_AND_REWIND = "fence_and_rewind"
    #: Off the loop: make a former primary follow ``target`` (re-clone if a rewind cannot work).
    REWIND = "rewind"
    #: Point a running standby at ``target``, the leader.
    FOLLOW = "follow"
    #: Start the stopped database read-only: following ``target``, or with no source when
    #: there is no leader (so it can report its position). Never starts a writable primary.
    START_STANDBY = "start_standby"
    #: Off the loop: copy ``target``'s database into a temporary directory, swap it in on
    #: success, start it following ``target``.
    CLONE = "clone"
    #: Off the loop, on an operator's request only (``nodes restart``): stop the standby's
    #: database, start it again following ``target``. Never a decision of ``decide``.
    RESTART = "restart"

    @property
    def off_loop(self) -> bool:
        """True for the long actions the I/O edge runs in the background."""
        return self in _OFF_LOOP


_OFF_LOOP = frozenset({Action.CLONE, Action.REWIND, Action.FENCE_AND_REWIND, Action.RESTART})
_NEEDS_TARGET = frozenset({Action.FOLLOW, Action.CLONE, Action.REWIND, Action.FENCE_AND_REWIND})
_MAY_TARGET = _NEEDS_TARGET | {Action.START_STANDBY, Action.STEP_DOWN}


class LeaseStatus(enum.Enum):
    """This node's lease as the I/O edge saw it this loop (renew first, then read the view)."""

    #: The last ``renew`` returned True.
    HELD = "held"
    #: The last ``renew`` returned False: leadership is gone.
    LOST = "lost"
    #: The last ``renew`` raised ``StoreUnavailableError``: the store could not tell.
    UNCERTAIN = "uncertain"
    #: This node holds no lease.
    NONE = "none"


class Failsafe(enum.Enum):
    """What failsafe mode (``failover.failsafe_mode``) did to a decision; code may compare it."""

    #: failsafe played no part
    NONE = "none"
    #: the store is unreachable, but every member confirmed this active: its deadline is the
    #: earliest confirmation expiry minus ``safety_margin``, past the lease's
    HOLDING = "holding"
    #: this node confirmed an active (or just started): it may not campaign until that expires
    PROMISED = "promised"


class Minority(enum.Enum):
    """What minority mode (``failover.minority_mode``) did to a decision; code may compare it."""

    #: minority mode played no part
    NONE = "none"
    #: the store's majority is out of reach: the active stays active past its lease's deadline
    #: (docs/fencing.md, "Minority mode")
    HOLDING = "holding"
    #: the store is back without this active's lease and no other leader: it campaigns to
    #: take the lease back rather than fence
    RECLAIMING = "reclaiming"


class SyncMode(enum.Enum):
    """``synchronous_mode``: ``on`` and ``strict`` both restrict who may campaign; ``strict``
    also makes the active refuse writes when no synchronous standby is connected."""

    OFF = "off"
    ON = "on"
    STRICT = "strict"


def _names(values: Iterable[str]) -> frozenset[str]:
    return frozenset(values)


@attrs.frozen
class DecisionConfig:
    """The timing and policy knobs ``decide`` needs, copied from the node configuration."""

    ttl: float
    loop_wait: float
    retry_timeout: float
    safety_margin: float
    synchronous_mode: SyncMode = SyncMode.OFF
    check_fail_fast: bool = False
    #: A standby further behind the last active's position than this never campaigns.
    maximum_lag_on_failover: int | None = None
    #: Seconds a node waits before campaigning again after its promotion was vetoed
    #: (applied by the I/O edge when PROMOTE is vetoed, through ``veto_until``).
    promote_backoff: float = 10.0
    #: A switchover request is ignored (and cleared by the active) this long after it was seen.
    switchover_timeout: float = 30.0
    #: The active steps down for a switchover only if the target is at most this far behind.
    switchover_max_lag: int = 16 * 1024 * 1024
    #: ``failover.failsafe_mode: on``: an active that every member confirmed may outlive a
    #: whole-store outage (hacore/agent/failsafe.py)
    failsafe_mode: bool = False
    #: ``failover.minority_mode: on``: an active cut off from the store's majority stays
    #: active; its writes there are salvaged when it loses (hacore/agent/minority.py)
    minority_mode: bool = False

    def __attrs_post_init__(self) -> None:
        if min(self.ttl, self.loop_wait, self.retry_timeout) <= 0 or self.safety_margin < 0:
            raise ConfigError("ttl, loop_wait and retry_timeout must be positive")
        budget = self.loop_wait + 2 * self.retry_timeout + self.safety_margin
        if budget >= self.ttl:
            raise ConfigError(
                f"loop_wait + 2 * retry_timeout + safety_margin ({budget:g}s) must be less "
                f"than ttl ({self.ttl:g}s), or the active cannot fence itself in time"
            )


@attrs.frozen
class HealthReport:
    """This node's health checks this loop, as names of checks."""

    #: Checks whose last run failed.
    failing: frozenset[str] = attrs.field(factory=frozenset, converter=_names)
    #: Checks that have not passed within their TTL (already scaled by check_ttl_multiplier).
    expired: frozenset[str] = attrs.field(factory=frozenset, converter=_names)

    @property
    def ok(self) -> bool:
        return not self.failing and not self.expired


@attrs.frozen
class Pause:
    """Maintenance mode (``hacore cluster pause``), as the store's ``pause`` key holds it.

    While it is set no agent promotes, demotes, campaigns for an election, fences or restarts
    anything (rules P1-P3 of docs/agent-states.md): the operator works on the cluster, and
    hacore keeps its hands off. ``paused_at`` is the wall clock of the node that wrote it, for
    people only; nothing is timed by it.
    """

    by: str
    paused_at: float = 0.0
    reason: str = ""


@attrs.frozen
class SwitchoverRequest:
    """A planned switchover found in the store (``cluster switchover [--to N]``)."""

    #: The active the request moves away from.
    from_node: str
    #: The requested new active; None lets the active pick the best standby.
    to_node: str | None
    #: This node's monotonic time when its agent first saw the request (request times written
    #: by another node's clock cannot be compared with ours).
    seen_at: float
    #: A manual failover (``cluster failover --to``), not a switchover: there is no active to
    #: hand over, and the named node campaigns even past ``maximum_lag_on_failover`` or
    #: without being a synchronous standby (the operator accepted the loss).
    manual: bool = False


@attrs.frozen
class ActiveStatus:
    """What the active last wrote to the store's persistent status key.

    Unlike member records it is not bound to the active's session, so it survives the active:
    after a crash the others still know who the primary was, how far it had written (for
    ``maximum_lag_on_failover``) and which standbys were synchronous (``sync_standbys``).
    """

    name: str
    position: int | None = None
    timeline: int | None = None
    #: Standbys that hold every acknowledged commit (see docs/agent-states.md for the write
    #: order that keeps this true).
    sync_standbys: frozenset[str] = attrs.field(factory=frozenset, converter=_names)


@attrs.frozen
class Observation:
    """Everything ``decide`` may look at, gathered by the I/O edge once per loop."""

    now: float
    node_name: str
    #: The store's snapshot, read after renewing; None when the store did not answer.
    view: ClusterView | None
    #: The local database's state.
    db: ReplicationStatus
    #: The node holds data at all (a stopped database counts).
    initialized: bool
    #: Why the store did not answer, for the reason text only.
    store_error: str = ""
    lease_status: LeaseStatus = LeaseStatus.NONE
    lease: Lease | None = None
    #: When the last successful renew (or the campaign) was *sent*, not when it answered.
    last_renewal: float | None = None
    health: HealthReport = HealthReport()
    #: This node's name is in the cluster's removed set.
    removed: bool = False
    switchover: SwitchoverRequest | None = None
    #: The fencing token recorded in the local database (replicated from the active).
    db_token: int | None = None
    #: No campaign before this time (set after a vetoed promotion).
    veto_until: float | None = None
    previous: NodeState = NodeState.INIT
    #: The store's persistent status key, None when it has never been written.
    active_status: ActiveStatus | None = None
    #: The replication backend found the local history diverged from the leader's (a FOLLOW
    #: or START_STANDBY cannot work): the next step is a rewind.
    needs_rewind: bool = False
    #: The off-loop action still running, if any.
    job: Action | None = None
    #: Failsafe, as the active: the earliest expiry of the confirmations of the last round in
    #: which every member confirmed (this node's clock); None when there is none.
    failsafe_expiry: float | None = None
    #: Failsafe, as a member: this node promised not to campaign before this time.
    promised_until: float | None = None
    #: Maintenance mode: the store's pause key as read with the view, or, while the store does
    #: not answer, as this agent last read it (docs/fencing.md, "Maintenance mode"); None when
    #: the cluster is not paused.
    pause: Pause | None = None

    def __attrs_post_init__(self) -> None:
        if self.lease_status in (LeaseStatus.HELD, LeaseStatus.UNCERTAIN) and (
            self.lease is None or self.last_renewal is None
        ):
            raise ValueError(f"lease status {self.lease_status.value} needs lease and last_renewal")
        if self.job is not None and not self.job.off_loop:
            raise ValueError(f"{self.job.value} never runs off the loop")


@attrs.frozen
class Decision:
    """What to do now, and the state the node is in once it is done."""

    action: Action
    next_state: NodeState
    #: One sentence for the log and the API; never compared by code.
    reason: str
    #: The node to follow, rewind toward, clone from, or hand over to (STEP_DOWN).
    target: str | None = None
    #: While a lease is held: the self-fencing deadline. The loop must call ``decide`` again
    #: by then, and no store call may run past it.
    deadline: float | None = None
    #: The active must delete the switchover request (done, stale or expired).
    clear_switchover: bool = False
    #: Observe again after a short pause rather than ``loop_wait``: what the node waits for
    #: takes milliseconds (a switchover target receiving the old active's last WAL).
    observe_soon: bool = False
    #: The failsafe rule behind this decision, if any.
    failsafe: Failsafe = Failsafe.NONE
    #: The minority-mode rule behind this decision, if any.
    minority: Minority = Minority.NONE

    def __attrs_post_init__(self) -> None:
        if self.target is None and self.action in _NEEDS_TARGET:
            raise ValueError(f"{self.action.value} needs a target")
        if self.target is not None and self.action not in _MAY_TARGET:
            raise ValueError(f"{self.action.value} takes no target")
