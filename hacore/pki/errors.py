"""The one error the PKI code raises, so callers can tell bad TLS material from other faults."""

from __future__ import annotations

from hacore.errors import HacoreError


class TlsMaterialError(HacoreError):
    """A certificate or key is missing, unreadable, expired or does not belong with the others."""
