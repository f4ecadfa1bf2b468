"""What the loop says of its decisions and of its steps' errors.

The loop runs every ``loop_wait``: a decision or an error that stays the same would fill the
log with one line a second. Each is said at its level once, then at debug level while it
repeats; the last error stands as the node's reason in its snapshot until a step succeeds.
"""

from __future__ import annotations

from hacore.agent.hooks import NodeLog
from hacore.agent.vocabulary import Decision


class LoopLog:
    def __init__(self, log: NodeLog) -> None:
        self.log = log
        #: the last error of a step; "" once a step succeeded
        self.error = ""
        self._decision: tuple[object, ...] | None = None

    def decision(self, decision: Decision) -> None:
        key = (decision.action, decision.next_state, decision.target)
        if key != self._decision:
            self.log.info(
                "%s -> %s: %s",
                decision.action.value,
                decision.next_state.value,
                decision.reason,
            )
            self._decision = key
        else:
            self.log.debug("%s: %s", decision.action.value, decision.reason)

    def failed(self, message: str) -> None:
        if message != self.error:
            self.log.warning("%s", message)
        else:
            self.log.debug("%s", message)
        self.error = message

    def succeeded(self) -> None:
        self.error = ""
