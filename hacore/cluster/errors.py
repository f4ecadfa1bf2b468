"""Errors of the cluster operations that the REST API carries to the CLI."""

from __future__ import annotations

from hacore.api.errors import ConflictError


class JoinRefusedError(ConflictError):
    """The active refused the join (or could not be asked); nothing changed anywhere."""
