"""Errors a person can act on.

Every error hacore raises on purpose derives from :class:`HacoreError`, so the CLI can print
its message as one line instead of a traceback.
"""

from __future__ import annotations


class HacoreError(Exception):
    """Base class; ``str(err)`` is the one-line message shown to the user."""


class ConfigError(HacoreError):
    """The node configuration or an ``--options`` value is invalid."""


class UnknownBackendError(ConfigError):
    """A configuration names a backend that no installed plugin registered."""


class StoreUnavailableError(HacoreError):
    """The consensus store did not answer within ``retry_timeout``.

    Raised instead of hanging, so the agent can apply its self-fencing deadline.
    """


class ManagedStoreError(HacoreError):
    """Starting, joining or reconfiguring a managed store server failed."""


class ReplicationError(HacoreError):
    """A database replication operation (clone, promote, rewind...) failed."""


class FilesyncError(HacoreError):
    """A file synchronisation operation failed."""


class ServiceError(HacoreError):
    """Starting, stopping or querying a managed service failed."""


class PromotionVetoedError(HacoreError):
    """A ``before_promote`` implementation refused the promotion of this node."""
