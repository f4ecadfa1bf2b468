"""The admin password of the request being served, for the operations that unseal the CA key.

The CA key is kept sealed under the admin password (hacore/pki/sealed_ca.py); the node
unseals it only inside an admin's request that needs it (a join, a join token, a removal),
with the password that request presented, and keeps neither. The routes of those operations
set it here (a context variable: each worker thread serves one request at a time) around the
call into the node service; nothing else reads it, and it is never logged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

from hacore.api.auth import JOIN_TOKEN_USER, parse_basic
from hacore.api.messages import Request

_current: ContextVar[str | None] = ContextVar("hacore_admin_password", default=None)


def current() -> str | None:
    """The admin password presented by the request being served, if any."""
    return _current.get()


@contextlib.contextmanager
def presented(password: str | None) -> Iterator[None]:
    """``password`` is the current request's admin password inside the block."""
    reset = _current.set(password)
    try:
        yield
    finally:
        _current.reset(reset)


def from_request(req: Request) -> str | None:
    """The Basic password of ``req`` (the route already required the admin role), None for
    a join token, which is no admin password."""
    credentials = parse_basic(req.headers.get("authorization"))
    if credentials is None or credentials[0] == JOIN_TOKEN_USER or req.join_token is not None:
        return None
    return credentials[1]
