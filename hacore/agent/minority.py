"""Minority mode (``failover.minority_mode: on``): an active cut off from the store's majority.

By default an active that cannot renew its lease fences itself at ``ttl - safety_margin``
(rule 1): a minority never writes, so nothing acknowledged is ever lost. The seed product lets
such a node keep serving instead ("active minority mode") and, when the network heals, throws
away the losing side's writes. This mode keeps the first half and replaces the second: the
writes of the losing side are exported to a salvage archive before its database is rewound
(hacore/backends/salvage.py, docs/fencing.md "Minority mode").

Who wins on reconnection is not a new decision: the store's lease holder. The majority side
elects an active as usual; when the cut-off active reaches the store again its renewal is
refused (``LOST``), and rule 10 fences it and rewinds it toward the leader, salvaging first.
When the majority could not elect anyone (no eligible candidate there), the returning active
finds no leader and takes the lease back (rule N2) rather than fencing.

The rules here are pure and are called by :mod:`hacore.agent.decide` (rules N1 and N2 of
docs/agent-states.md); the I/O edge (hacore/agent/runtime.py) keeps the fence keeper's
deadline rolling on the loop's liveness while minority mode is on, and stops waiting for the
synchronous standby while the rule holds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hacore.agent.hooks import NodeLog
from hacore.agent.vocabulary import (
    Action,
    Decision,
    DecisionConfig,
    LeaseStatus,
    Minority,
    NodeState,
    Observation,
)
from hacore.backends import salvage
from hacore.backends.replication import ReplicationRole, ReplicationStatus
from hacore.errors import HacoreError


def _writable(db: ReplicationStatus) -> bool:
    return db.running and db.role is ReplicationRole.PRIMARY and db.writable


def store_out_of_reach(obs: Observation, cfg: DecisionConfig) -> bool:
    """Minority mode is on and the store answered nothing this loop while this node's
    renewal was uncertain: the store's majority is out of reach from here."""
    return cfg.minority_mode and obs.lease_status is LeaseStatus.UNCERTAIN and obs.view is None


def holds(obs: Observation, cfg: DecisionConfig, deadline: float) -> bool:
    """Rule N1: past the lease's self-fencing deadline, with the store's majority out of
    reach and the database writable, the active stays active instead of fencing."""
    return store_out_of_reach(obs, cfg) and obs.now >= deadline and _writable(obs.db)


def holding(obs: Observation, cfg: DecisionConfig, deadline: float) -> Decision:
    """Rule N1's decision. Its deadline rolls with the loop: the fence keeper still fences a
    database whose agent stopped looping (``ttl - safety_margin`` after its last loop)."""
    return Decision(
        Action.STAY_ACTIVE,
        NodeState.ACTIVE,
        f"minority mode: the store's majority is out of reach (no renewal for "
        f"{obs.now - (obs.last_renewal or 0.0):.1f}s, past the deadline by "
        f"{obs.now - deadline:.1f}s); staying active and writable. Another node may be "
        "elected meanwhile: if so, this node's writes from now on are salvaged and then "
        "rewound away when it reconnects",
        deadline=obs.now + cfg.ttl - cfg.safety_margin,
        minority=Minority.HOLDING,
    )


def reclaims(obs: Observation, cfg: DecisionConfig) -> bool:
    """Rule N2: minority mode, no standing lease, the database writable, the store back and
    naming no leader, and this node was the active: nobody was elected meanwhile, so it
    campaigns for the lease rather than fencing. If another node wins that campaign first,
    rule 10 rewinds this one (with its salvage)."""
    view = obs.view
    return (
        cfg.minority_mode
        and obs.previous is NodeState.ACTIVE
        and obs.initialized
        and not obs.removed
        and obs.lease_status in (LeaseStatus.NONE, LeaseStatus.LOST)
        and view is not None
        and view.leader is None
        and _writable(obs.db)
        and not (obs.promised_until is not None and obs.now < obs.promised_until)
    )


def reclaiming() -> Decision:
    return Decision(
        Action.CAMPAIGN,
        NodeState.PROMOTING,
        "minority mode: the store is back without this active's lease and no other node "
        "was elected; campaigning to take the lease back",
        minority=Minority.RECLAIMING,
    )


# -- the I/O edge -------------------------------------------------------------------------------


class MinorityEdge:
    """What the agent's loop does for minority mode around the pure rules above.

    - :meth:`deadline`: with minority mode on, the fence keeper's deadline (and the loop's
      store gate) rolls with the loop, ``ttl - safety_margin`` past the start of the last
      loop: a cut-off active is not fenced by its lease, but a dead or hung agent still is;
    - :meth:`after` each decision: under rule N1, commits stop waiting for the synchronous
      standby (it is on the other side) and the salvage slot is kept; as the active holding
      the lease, the slot is advanced to what every other member has flushed.
    """

    def __init__(
        self,
        name: str,
        cfg: DecisionConfig,
        replication: object,
        data_dir: Path,
        log: NodeLog,
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.enabled = cfg.minority_mode
        self.directory = data_dir / salvage.DIR
        self.salvager = (
            replication if self.enabled and isinstance(replication, salvage.Salvaging) else None
        )
        if self.salvager is not None:
            self.salvager.configure_salvage(self.directory)
        self.log = log
        #: the start of the current loop (monotonic)
        self.loop_at: float | None = None
        #: since when rule N1 holds (monotonic), None when it does not
        self.holding_since: float | None = None
        self._said = ""

    def deadline(self, own: float | None) -> float | None:
        if not self.enabled or own is None or self.loop_at is None:
            return own
        return max(own, self.loop_at + self.cfg.ttl - self.cfg.safety_margin)

    def after(
        self,
        decision: Decision,
        obs: Observation,
        removed: frozenset[str],
        reset_sync: Callable[[], None],
    ) -> None:
        if not self.enabled:
            return
        if decision.minority is Minority.HOLDING:
            if self.holding_since is None:
                self.holding_since = obs.now
                self.log.warning(
                    "MINORITY MODE: the store's majority is out of reach; this node stays "
                    "active and writable without a lease. If the other side elects an active, "
                    "this node's writes from now on are exported to a salvage archive and "
                    "then rewound away when it reconnects"
                )
            if self.salvager is not None:
                self._try(self.salvager.minority_holding)
                reset_sync()
            return
        if self.holding_since is not None:
            self.log.warning(
                "minority mode: the store answers again after %.1fs cut off",
                obs.now - self.holding_since,
            )
            self.holding_since = None
        if (
            self.salvager is not None
            and decision.action is Action.STAY_ACTIVE
            and obs.lease_status is LeaseStatus.HELD
            and obs.view is not None
        ):
            members = [m.name for m in obs.view.members if m.name not in removed | {self.name}]
            salvager = self.salvager
            self._try(lambda: salvager.keep_salvage_slot(members))

    def _try(self, step: Callable[[], None]) -> None:
        try:
            step()
        except HacoreError as err:
            message = f"minority mode: {err}"
            if message != self._said:
                self.log.warning("%s", message)
            self._said = message
        else:
            self._said = ""

    def json(self, now: float, job_error: str = "") -> dict[str, Any] | None:
        """For the API, the member record and ``nodes list``: None with minority mode off.
        ``salvage_error``: the last rewind did not run because its salvage failed."""
        if not self.enabled:
            return None
        since = self.holding_since
        return {
            "mode": "on",
            "holding": since is not None,
            "cut_off_for": None if since is None else round(now - since, 1),
            "salvage_error": job_error if salvage.FAILED in job_error else None,
        }

    def archives(self) -> list[dict[str, Any]]:
        return salvage.listing(self.directory)

    def archive(self, ident: str) -> dict[str, Any]:
        return salvage.read(self.directory, ident)
