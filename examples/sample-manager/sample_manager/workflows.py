"""Workflows in the database: creating and reading them, claiming, stepping, recovering.

Who runs a workflow is decided by PostgreSQL, not by a node name in a row: a worker holds a
session-level advisory lock on every workflow it runs, taken before the row says ``running``.
When the worker dies its session ends and the lock goes with it; when the whole node dies the
new primary has no lock at all (advisory locks are not replicated). So a ``running`` row whose
lock is free has nobody behind it, whichever way its worker was lost.
"""

from __future__ import annotations

import contextlib
import datetime
from collections.abc import Sequence
from typing import Any

import attrs
import psycopg

from sample_manager.db import LOCK_CLASS, Conn

STATES = ("pending", "running", "succeeded", "failed")
#: What the after_promote hook writes on a non-resumable workflow the old active left running.
FAILOVER_REASON = "interrupted by failover, not resumable"

_COLUMNS = (
    "id, name, state, resumable, current_step, total_steps, node, error, created_at, updated_at"
)


@attrs.frozen
class Workflow:
    id: int
    name: str
    state: str
    resumable: bool
    current_step: int
    total_steps: int
    node: str | None
    error: str | None
    created_at: datetime.datetime
    updated_at: datetime.datetime

    def to_json(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["created_at"] = self.created_at.isoformat()
        data["updated_at"] = self.updated_at.isoformat()
        return data


@attrs.frozen
class Step:
    step: int
    node: str
    done_at: datetime.datetime

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "node": self.node, "done_at": self.done_at.isoformat()}


@attrs.frozen
class Recovery:
    """What a recovery pass did with the ``running`` workflows it found."""

    resumed: tuple[int, ...] = ()
    failed: tuple[int, ...] = ()
    #: still run by a live worker (its lock is held): left alone
    live: tuple[int, ...] = ()


class LostWorkflowError(Exception):
    """The row no longer says what the worker expects: somebody else decided about it."""


# -- the API's side ---------------------------------------------------------------------------


def create(conn: Conn, name: str, steps: int, resumable: bool) -> Workflow:
    row = conn.execute(
        f"INSERT INTO workflows (name, total_steps, resumable) VALUES (%s, %s, %s) "
        f"RETURNING {_COLUMNS}",
        (name, steps, resumable),
    ).fetchone()
    assert row is not None
    return Workflow(*row)


def get(conn: Conn, workflow_id: int) -> Workflow | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM workflows WHERE id = %s", (workflow_id,)).fetchone()
    return Workflow(*row) if row else None


def list_all(conn: Conn, state: str | None = None) -> list[Workflow]:
    if state is None:
        rows = conn.execute(f"SELECT {_COLUMNS} FROM workflows ORDER BY id").fetchall()
    else:
        rows = conn.execute(
            f"SELECT {_COLUMNS} FROM workflows WHERE state = %s ORDER BY id", (state,)
        ).fetchall()
    return [Workflow(*row) for row in rows]


def steps(conn: Conn, workflow_id: int) -> list[Step]:
    rows = conn.execute(
        "SELECT step, node, done_at FROM workflow_steps WHERE workflow_id = %s ORDER BY step",
        (workflow_id,),
    ).fetchall()
    return [Step(*row) for row in rows]


# -- the worker's side ------------------------------------------------------------------------


def claim(conn: Conn, node: str) -> Workflow | None:
    """Take the oldest pending workflow: lock it for this session, then mark it running.

    The lock is taken before the row says ``running`` and outlives the transaction, so no
    other session ever sees a running row of a live worker with its lock free.
    """
    locked: int | None = None
    try:
        with conn.transaction():
            row = conn.execute(
                "SELECT id FROM workflows WHERE state = 'pending' "
                "ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
            ).fetchone()
            if row is None or not _try_lock(conn, int(row[0])):
                return None  # nothing to do, or a recovery pass holds it this very moment
            locked = int(row[0])
            claimed = conn.execute(
                f"UPDATE workflows SET state = 'running', node = %s, updated_at = now() "
                f"WHERE id = %s RETURNING {_COLUMNS}",
                (node, locked),
            ).fetchone()
    except BaseException:
        if locked is not None:  # a session lock outlives the rolled-back transaction
            with contextlib.suppress(psycopg.Error):
                unlock(conn, locked)
        raise
    assert claimed is not None
    return Workflow(*claimed)


def adopt(conn: Conn, workflow_id: int, node: str) -> Workflow | None:
    """Take back a workflow this node was running when its connection broke.

    Only while nobody has decided about it since: still ``running``, on this node, and its
    lock free (the broken session's lock is gone with it).
    """
    if not _try_lock(conn, workflow_id):
        return None
    found = get(conn, workflow_id)
    if found is None or found.state != "running" or found.node != node:
        unlock(conn, workflow_id)
        return None
    return found


def record_step(conn: Conn, workflow: Workflow, step: int, node: str) -> None:
    """Record ``step`` as done, in one transaction with the workflow's progress.

    The workflow succeeds in the same transaction as its last step. A killed worker has
    either recorded a step or not: there is no half-recorded one to redo or to skip.
    """
    with conn.transaction():
        done = conn.execute(
            "UPDATE workflows SET current_step = %s, updated_at = now(), "
            "state = CASE WHEN %s = total_steps THEN 'succeeded' ELSE state END "
            "WHERE id = %s AND state = 'running' AND node = %s AND current_step = %s",
            (step, step, workflow.id, node, step - 1),
        ).rowcount
        if done != 1:
            raise LostWorkflowError(
                f"workflow {workflow.id} is no longer running at step {step - 1} on {node}"
            )
        conn.execute(
            "INSERT INTO workflow_steps (workflow_id, step, node) VALUES (%s, %s, %s)",
            (workflow.id, step, node),
        )


def hand_back(conn: Conn, workflow_id: int, node: str) -> None:
    """Return a resumable workflow to ``pending`` (a worker stopping on purpose)."""
    with conn.transaction():
        conn.execute(
            "UPDATE workflows SET state = 'pending', node = NULL, updated_at = now() "
            "WHERE id = %s AND state = 'running' AND node = %s",
            (workflow_id, node),
        )


def fail(conn: Conn, workflow_id: int, node: str, error: str) -> None:
    with conn.transaction():
        conn.execute(
            "UPDATE workflows SET state = 'failed', error = %s, updated_at = now() "
            "WHERE id = %s AND state = 'running' AND node = %s",
            (error, workflow_id, node),
        )


def unlock(conn: Conn, workflow_id: int) -> None:
    conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_CLASS, workflow_id))


def _try_lock(conn: Conn, workflow_id: int) -> bool:
    row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, workflow_id)).fetchone()
    return bool(row and row[0])


# -- recovery ---------------------------------------------------------------------------------


def recover_interrupted(
    conn: Conn, *, reason: str = FAILOVER_REASON, lock_timeout: float = 5.0
) -> Recovery:
    """Settle every ``running`` workflow nobody runs any more (the seed's rule).

    Resumable ones go back to ``pending``: a worker carries on from ``current_step + 1``.
    The others are marked ``failed`` with ``reason`` at once. Workflows a live worker holds
    are left alone, so this may run while workers are up (and after a promotion they are:
    hacore starts the services before ``after_promote``). Running it twice changes nothing
    the second time.
    """
    resumed: list[int] = []
    failed: list[int] = []
    live: list[int] = []
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = '{int(lock_timeout * 1000)}ms'")
        exists = conn.execute("SELECT to_regclass('workflows') IS NOT NULL").fetchone()
        if not (exists and exists[0]):
            return Recovery()  # the manager never ran against this database
        rows: Sequence[tuple[Any, ...]] = conn.execute(
            "SELECT id, resumable FROM workflows WHERE state = 'running' ORDER BY id FOR UPDATE"
        ).fetchall()
        for workflow_id, resumable in rows:
            held = conn.execute(
                "SELECT NOT pg_try_advisory_xact_lock(%s, %s)", (LOCK_CLASS, workflow_id)
            ).fetchone()
            if held and held[0]:
                live.append(workflow_id)
            elif resumable:
                conn.execute(
                    "UPDATE workflows SET state = 'pending', node = NULL, updated_at = now() "
                    "WHERE id = %s",
                    (workflow_id,),
                )
                resumed.append(workflow_id)
            else:
                conn.execute(
                    "UPDATE workflows SET state = 'failed', error = %s, updated_at = now() "
                    "WHERE id = %s",
                    (reason, workflow_id),
                )
                failed.append(workflow_id)
    return Recovery(tuple(resumed), tuple(failed), tuple(live))
