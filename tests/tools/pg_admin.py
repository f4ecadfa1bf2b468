"""What the PostgreSQL tests do to a plugin's server from outside the plugin: a superuser
query over its Unix socket, and a stop by its postmaster's pid (a test's teardown must not
depend on the code it tests)."""

from __future__ import annotations

import os
import signal
from typing import Any

import psycopg

from hacore.testing.procs import kill_with_children, pid_alive, wait_for
from hacore_plugins.postgresql.backend import PostgresReplication


def connect(node: PostgresReplication, **kwargs: Any) -> psycopg.Connection[Any]:
    """A superuser session over the Unix socket, as hacore administers its server: TLS does
    not concern it."""
    return psycopg.connect(
        host=str(node.layout.run_dir),
        port=node.config.port,
        user="postgres",
        dbname="postgres",
        autocommit=True,
        connect_timeout=10,
        **kwargs,
    )


def query(node: PostgresReplication, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Rows of ``sql``; without ``params`` it may hold several statements (the simple query
    protocol)."""
    with connect(node) as conn:
        cur = conn.execute(sql, params or None)
        return cur.fetchall() if cur.description else []


def postmaster(node: PostgresReplication) -> int | None:
    """The live postmaster's pid from ``postmaster.pid``; None when there is none."""
    try:
        first = (node.layout.pgdata / "postmaster.pid").read_text().split("\n", 1)[0]
    except OSError:
        return None
    return int(first) if first.strip().isdigit() and pid_alive(int(first)) else None


def stop_by_pid(node: PostgresReplication) -> None:
    """A fast shutdown (SIGINT), then SIGKILL of the whole tree after 30 s."""
    pid = postmaster(node)
    if pid is None:
        return
    os.kill(pid, signal.SIGINT)
    try:
        wait_for(lambda: not pid_alive(pid), 30, what=f"{node.node_name} to stop")
    except TimeoutError:
        kill_with_children(pid)
