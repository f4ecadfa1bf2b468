"""The manager's database: where to find it, and its two tables.

Everything the manager knows about a workflow lives in PostgreSQL, so the database hacore
replicates is all a new active needs to carry on: there is no state on a node's disk that a
failover could lose (the resources directory aside, which hacore's file sync mirrors).
"""

from __future__ import annotations

import os
from typing import TypeAlias

import psycopg
from psycopg.rows import TupleRow

DSN_ENV = "SAMPLE_MANAGER_DSN"
#: First key of every advisory lock the manager takes (the second is a workflow id), so its
#: locks cannot collide with another application's on the same database.
LOCK_CLASS = 0x534D

Conn: TypeAlias = psycopg.Connection[TupleRow]

SCHEMA = """
CREATE TABLE IF NOT EXISTS workflows (
    id           serial PRIMARY KEY,
    name         text NOT NULL,
    state        text NOT NULL DEFAULT 'pending'
                 CHECK (state IN ('pending', 'running', 'succeeded', 'failed')),
    resumable    boolean NOT NULL DEFAULT true,
    current_step integer NOT NULL DEFAULT 0,
    total_steps  integer NOT NULL CHECK (total_steps > 0),
    node         text,
    error        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CHECK (current_step BETWEEN 0 AND total_steps)
);
CREATE INDEX IF NOT EXISTS workflows_unfinished ON workflows (state, id)
    WHERE state IN ('pending', 'running');
CREATE TABLE IF NOT EXISTS workflow_steps (
    workflow_id integer NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    step        integer NOT NULL,
    done_at     timestamptz NOT NULL DEFAULT now(),
    node        text NOT NULL,
    PRIMARY KEY (workflow_id, step)
);
"""


class DatabaseConfigError(Exception):
    """No DSN was given: the program cannot know where its database is."""


def first_line(err: BaseException) -> str:
    """An error as one line: psycopg's messages carry DETAIL/HINT lines after the first."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def resolve_dsn(given: str | None) -> str:
    """The DSN given on the command line, else ``$SAMPLE_MANAGER_DSN``."""
    dsn = given or os.environ.get(DSN_ENV, "")
    if not dsn:
        raise DatabaseConfigError(
            f"no database given: pass --dsn or set {DSN_ENV} "
            '(for example "host=/var/run/postgresql dbname=manager user=postgres")'
        )
    return dsn


def connect(dsn: str, *, timeout: int = 5, application: str = "sample-manager") -> Conn:
    """An autocommit connection: every write below runs in an explicit transaction block."""
    return psycopg.connect(
        dsn, autocommit=True, connect_timeout=timeout, application_name=application
    )


def ensure_schema(conn: Conn) -> None:
    """Create the tables unless they exist; safe to run from several processes at once.

    ``CREATE TABLE IF NOT EXISTS`` alone is not: two sessions may both find the table
    missing and one then fails on the catalog's unique index. The transaction-scoped lock
    makes them take turns.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (LOCK_CLASS,))
        conn.execute(SCHEMA)
