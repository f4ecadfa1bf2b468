"""The agent's REST API: the facade the agent implements, authentication, and the client.

The server lives in :mod:`hacore.api.server` (imported on its own: it needs
``prometheus-client``, which the CLI's client side does not).
"""

from __future__ import annotations

from hacore.api.auth import hash_password, verify_password
from hacore.api.client import ApiClient, find_active
from hacore.api.errors import (
    ApiError,
    ApiUnreachableError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    HttpsRequiredError,
    NotActiveError,
    NotFoundError,
    TooManyRequestsError,
    UnavailableError,
)
from hacore.api.facade import AgentFacade

__all__ = [
    "AgentFacade",
    "ApiClient",
    "ApiError",
    "ApiUnreachableError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "HttpsRequiredError",
    "NotActiveError",
    "NotFoundError",
    "TooManyRequestsError",
    "UnavailableError",
    "find_active",
    "hash_password",
    "verify_password",
]
