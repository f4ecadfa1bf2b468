"""The agent: one per node, deciding each loop what the node does next.

:func:`decide` is the pure decision; the records in :mod:`hacore.agent.vocabulary` are what the
loop feeds it and what it answers.
"""

from __future__ import annotations

from hacore.agent.decide import campaign_blocker, decide
from hacore.agent.vocabulary import (
    Action,
    ActiveStatus,
    Decision,
    DecisionConfig,
    HealthReport,
    LeaseStatus,
    NodeState,
    Observation,
    SwitchoverRequest,
    SyncMode,
)

__all__ = [
    "Action",
    "ActiveStatus",
    "Decision",
    "DecisionConfig",
    "HealthReport",
    "LeaseStatus",
    "NodeState",
    "Observation",
    "SwitchoverRequest",
    "SyncMode",
    "campaign_blocker",
    "decide",
]
