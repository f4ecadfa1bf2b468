"""The postgresql reference plugin: PostgreSQL streaming replication (see docs/postgresql.md)."""

from __future__ import annotations

from hacore.hookspecs import hookimpl
from hacore.plugins import BackendRegistry


@hookimpl
def hacore_register_backends(registry: BackendRegistry) -> None:
    from hacore_plugins.postgresql.backend import PostgresReplication

    registry.add_replication("postgresql", PostgresReplication)
