"""Why the agent refuses an operation asked of it (a switchover, a removal, a repair...).

The agent's own classes, so that it does not depend on the layer that serves it:
:func:`hacore.api.errors.status_for` maps each to its HTTP status, and the API's error classes
(:class:`hacore.api.errors.ConflictError`...) derive from them, so a caller that catches one of
these also catches the same refusal coming back through the API client.
"""

from __future__ import annotations

from hacore.errors import HacoreError


class RefusedError(HacoreError):
    """An operation the agent will not do; the message says why, for the person who asked."""


class InvalidRequestError(RefusedError):
    """The request itself is wrong: a missing or mistyped field."""


class NotAuthenticatedError(RefusedError):
    """The request does not prove who sent it (an unsigned failsafe question)."""


class UnknownNodeError(RefusedError):
    """The request names a node the cluster does not have."""


class StateConflictError(RefusedError):
    """The cluster's state forbids it: removing the active, a job already running..."""


class NotNowError(RefusedError):
    """This agent cannot do it now; another node (the active) or a later retry may."""
