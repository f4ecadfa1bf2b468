"""The postgresql reference plugin: PostgreSQL 15+ streaming replication.

Needs the ``postgresql`` extra (psycopg) and the PostgreSQL server binaries; see
docs/postgresql.md.
"""

from __future__ import annotations

import logging

from hacore.plugins.hookspecs import hookimpl
from hacore.plugins.registry import BackendRegistry

log = logging.getLogger(__name__)


@hookimpl
def hacore_register_backends(registry: BackendRegistry) -> None:
    """Register the replication backend (when psycopg is installed)."""
    try:
        from hacore_plugins.postgresql.backend import PostgresReplication
    except ImportError as exc:
        log.debug("postgresql backend not available: %s", exc)
        why = f"{exc.name or exc} is missing: pip install 'hacore[postgresql]'"
        for family in ("replication",):
            registry.add_missing(family, "postgresql", why)
        return
    registry.add_replication("postgresql", PostgresReplication)
