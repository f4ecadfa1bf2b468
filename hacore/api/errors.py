"""Errors that cross the REST API, each tied to the HTTP status it travels as.

The node service raises them, the agent raises its own (:mod:`hacore.agent.errors`, which the
classes here derive from) or the general :mod:`hacore.errors` classes, all mapped by
:func:`status_for`; the server sends ``{"error": str(err)}`` with the status, and the client
raises the same class again with the server's message, so the CLI shows the one line the agent
wrote.
"""

from __future__ import annotations

from typing import ClassVar

from hacore.agent.errors import (
    InvalidRequestError,
    NotAuthenticatedError,
    NotNowError,
    StateConflictError,
    UnknownNodeError,
)
from hacore.errors import ConfigError, HacoreError, StoreUnavailableError


class ApiError(HacoreError):
    """A request the agent refused; ``status`` is the HTTP status it is sent with."""

    status: ClassVar[int] = 500
    #: seconds after which the same request may succeed, sent as ``Retry-After``
    retry_after: float | None = None

    def __init__(self, *args: object, retry_after: float | None = None) -> None:
        super().__init__(*args)
        if retry_after is not None:
            self.retry_after = retry_after


class BadRequestError(ApiError, InvalidRequestError):
    """The request itself is wrong: malformed JSON, a missing or mistyped field."""

    status = 400


class AuthenticationError(ApiError, NotAuthenticatedError):
    """Credentials are missing or wrong (never says which part was wrong)."""

    status = 401


class ForbiddenError(ApiError):
    """The credentials are right but their role may not do this (a probe or read-only user
    asking for a change or a join ticket)."""

    status = 403


class HttpsRequiredError(ForbiddenError):
    """A request in plain HTTP to an agent that serves its API over HTTPS."""

    status = 403


class UnsupportedMediaTypeError(ApiError):
    """A body in another format than JSON (a browser's form post, say)."""

    status = 415


class NotFoundError(ApiError, UnknownNodeError):
    """No such node (or endpoint)."""

    status = 404


class ConflictError(ApiError, StateConflictError):
    """The cluster's state forbids it: a duplicate node name, a node that is not empty,
    removing the active, a hacore version mismatch."""

    status = 409


class TooManyRequestsError(ApiError):
    """This client failed to log in too often; it may try again after ``retry_after``."""

    status = 429


class UnavailableError(ApiError, NotNowError):
    """This agent cannot do it now; another node (the active) or a later retry may."""

    status = 503


class NotActiveError(UnavailableError):
    """Only the active node does this (join tickets, removals, switchovers)."""


class ApiUnreachableError(HacoreError):
    """The client got no HTTP answer at all: connection refused, timeout, TLS failure."""


#: what the client raises for a status it receives
ERROR_FOR_STATUS: dict[int, type[ApiError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: HttpsRequiredError,
    404: NotFoundError,
    415: UnsupportedMediaTypeError,
    409: ConflictError,
    429: TooManyRequestsError,
    503: UnavailableError,
}


#: the status of each refusal the agent raises with its own classes
STATUS_OF_REFUSAL: dict[type[HacoreError], int] = {
    InvalidRequestError: 400,
    NotAuthenticatedError: 401,
    UnknownNodeError: 404,
    StateConflictError: 409,
    NotNowError: 503,
}


def status_for(err: HacoreError) -> int:
    """The HTTP status for an error the agent raised on purpose."""
    if isinstance(err, ApiError):
        return err.status
    for cls, status in STATUS_OF_REFUSAL.items():
        if isinstance(err, cls):
            return status
    if isinstance(err, ConfigError):
        return 400
    if isinstance(err, StoreUnavailableError):
        return 503
    return 500


def error_for_status(status: int, message: str) -> ApiError:
    """The exception a client raises for an error answer."""
    cls = ERROR_FOR_STATUS.get(status, ApiError)
    if cls is HttpsRequiredError and "HTTPS" not in message:
        cls = ForbiddenError
    return cls(message)
