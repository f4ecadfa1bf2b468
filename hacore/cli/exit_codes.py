"""The exit status of every ``hacore`` command, from the error that ended it.

Scripts branch on it, so each status names one kind of outcome, the same for every command
(docs/cli.md has the table):

* 0 — done (or, for a question, the answer is yes);
* 1 — the operation ran and failed, or the answer is no (``cluster status`` without an
  active node);
* 2 — usage or configuration error: a wrong option or argument (click's own status 2), an
  invalid node.yaml or ``--options``, no CLI profile, a destructive command without
  ``--yes`` and no terminal to ask on; fix the command line or the file and run it again;
* 3 — the cluster (or its store) cannot be reached, or cannot do it now (no active during
  a failover): the same command may succeed later, unchanged;
* 4 — the cluster refused: the request reached it and it said no (a conflict with its state,
  an unknown node, wrong credentials, a role that may not do it); nothing changed, and
  retrying alone will not help.
"""

from __future__ import annotations

from hacore.agent.errors import InvalidRequestError, NotNowError, RefusedError
from hacore.api.errors import (
    ApiUnreachableError,
    ForbiddenError,
    TooManyRequestsError,
    UnavailableError,
)
from hacore.errors import ConfigError, HacoreError, StoreUnavailableError

OK = 0
FAILED = 1
USAGE = 2
UNREACHABLE = 3
REFUSED = 4


class UsageProblem(HacoreError):
    """The command line cannot be carried out as given (a destructive command without
    ``--yes`` and no terminal, a missing credential); printed as one ``error:`` line, unlike
    click's usage errors, which also print the usage."""


def exit_code_for(err: HacoreError) -> int:
    """The status for an error hacore raised on purpose (the order matters: an unavailable
    agent is also a refusal, "not now", for the agent's own classes)."""
    if isinstance(err, ConfigError | UsageProblem | InvalidRequestError):
        return USAGE
    if isinstance(
        err, ApiUnreachableError | UnavailableError | NotNowError | StoreUnavailableError
    ):
        return UNREACHABLE
    if isinstance(err, RefusedError | ForbiddenError | TooManyRequestsError):
        return REFUSED
    return FAILED
