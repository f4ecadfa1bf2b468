"""What carrying out a decision left behind, in a module of its own: the executor
(hacore/agent/execute.py) and the step-down it delegates (hacore/agent/handover.py) both make
one, and neither may import the other's module both ways."""

from __future__ import annotations

import attrs

from hacore.agent.vocabulary import NodeState


@attrs.frozen
class Outcome:
    """What an action left behind: the node's state, and whether to observe again at once."""

    state: NodeState
    observe_again: bool = False
    #: Lease held, database writable with our token, active-only services up.
    is_active: bool = False
    #: A step that failed without changing the node's state (logged by the loop).
    error: str = ""
