"""What the primary does for the cluster: fencing tokens, synchronous standbys, members' access."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from typing import ClassVar

import attrs
import psycopg

from hacore.errors import ReplicationError
from hacore_plugins.postgresql.config_files import NO_STANDBY, quorum, slot_name
from hacore_plugins.postgresql.node import NODE_NAME, PgNode, check_hosts, one
from hacore_plugins.postgresql.sql import STANDBY_STATE, drop_slot, first_line, set_password

log = logging.getLogger(__name__)

_PASSWORD_LOCK = threading.Lock()


class PrimaryDuties(PgNode):
    rotates_password: ClassVar[bool] = True

    def fencing_token(self) -> int | None:
        """The recorded token; None only when none is recorded (or hacore never set the table
        up). A database that does not answer raises: "no token" would be a guess that makes
        the agent promote (rewriting the status key) a healthy active (DESIGN rule 7)."""
        try:
            with self._local(timeout=3) as conn:
                row = conn.execute("SELECT token FROM hacore.leadership WHERE id = 1").fetchone()
        except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
            return None
        except psycopg.Error as err:
            raise ReplicationError(
                f"cannot read the fencing token of {self.node_name}: {err}"
            ) from None
        return int(row[0]) if row else None

    def record_fencing_token(self, token: int) -> None:
        with self._local() as conn:
            try:
                with conn.transaction():
                    row = conn.execute(
                        "INSERT INTO hacore.leadership AS l (id, token, node) VALUES (1, %s, %s)"
                        " ON CONFLICT (id) DO UPDATE"
                        " SET token = EXCLUDED.token, node = EXCLUDED.node, recorded_at = now()"
                        " WHERE l.token <= EXCLUDED.token RETURNING token",
                        (token, self.node_name),
                    ).fetchone()
            except psycopg.errors.ReadOnlySqlTransaction:
                raise ReplicationError(
                    f"cannot record fencing token {token}: {self.node_name} is not writable"
                ) from None
            if row is None:
                current = conn.execute(
                    "SELECT token, node FROM hacore.leadership WHERE id = 1"
                ).fetchone()
                assert current is not None
                raise ReplicationError(
                    f"refusing fencing token {token}: the database already holds token "
                    f"{current[0]} from {current[1]}, a newer leadership"
                )

    def prepare_handover(self, *, timeout: float) -> None:
        """A CHECKPOINT while the server still serves, so that the fence's fast shutdown has
        little left to write and fsync while nobody can write: with a 1 GiB database under a
        pgbench load its shutdown checkpoint took up to 0.64 s, most of it the fsync of what
        the backends had written out since the last checkpoint. A CHECKPOINT cut short by
        ``statement_timeout`` still runs to its end in the checkpointer, which the shutdown
        then waits for: the time it took is not lost."""
        limit_ms = max(1, round(timeout * 1000))
        try:
            with self._local(timeout=max(1, math.ceil(timeout))) as conn:
                conn.execute(f"SET statement_timeout = {limit_ms}")
                conn.execute("CHECKPOINT")
        except psycopg.errors.QueryCanceled:
            raise ReplicationError(
                f"the checkpoint on {self.node_name} did not end within {timeout:.1f}s"
            ) from None
        except psycopg.Error as err:
            raise ReplicationError(
                f"the checkpoint on {self.node_name} failed: {first_line(err)}"
            ) from None

    def set_synchronous(self, standbys: Sequence[str], *, strict: bool) -> None:
        """Quorum commit over the given standbys that stream now (all of them if strict).

        Non-strict mode never names a standby that does not stream, or every commit would
        hang; with none streaming it is asynchronous. Strict mode (the argument or the node's
        ``synchronous: strict``) names the given standbys whether they stream or not, and with
        none given a name no standby has: commits wait until a later call names one.
        """
        strict = strict or self.config.strict
        bad = [name for name in standbys if not NODE_NAME.fullmatch(name)]
        if bad:
            raise ReplicationError(f"not node names: {', '.join(map(repr, bad))}")
        with self._local() as conn:
            if one(conn, "SELECT pg_is_in_recovery()"):
                raise ReplicationError(f"{self.node_name} is not a primary")
            streaming = {
                r[0]
                for r in conn.execute(
                    f"SELECT r.application_name FROM pg_stat_replication r "
                    f"WHERE {STANDBY_STATE} = 'streaming'"
                )
            }
        names = list(dict.fromkeys(standbys))
        if strict:
            value = quorum(names) if names else NO_STANDBY
        else:
            live = [name for name in names if name in streaming]
            value = quorum(live) if live else ""
        state = attrs.evolve(self._state(), sync_names=value)
        self._save(state)
        self._write_node_files(state)
        self._reload_and_confirm("synchronous_standby_names", value)
        with self._local() as conn:
            # Waiting commits are released on a standby's next reply, which comes with new WAL
            # or only every wal_receiver_status_interval (10 s): a tiny WAL record brings it now.
            conn.execute("SELECT pg_logical_emit_message(false, 'hacore', 'sync')")
        log.info("%s: synchronous_standby_names = %r", self.node_name, value)

    def allow_member(self, node_name: str, host: str) -> None:
        check_hosts([host])
        if not self.layout.node_dir.is_dir():
            raise ReplicationError(
                f"cannot let {node_name} reach {self.node_name}'s database: there is none here "
                "yet (members are let in once this node is bootstrapped or cloned)"
            )
        state = self._state()
        new = state.with_member(node_name, host)
        if new != state:
            self._save(new)
            self._write_node_files(new)
            self._reload()

    def drop_member(self, node_name: str) -> None:
        new = self._state().without_member(node_name)
        self._save(new)
        self._write_node_files(new)
        self._reload()
        if self.postmaster_pid() is None:
            raise ReplicationError(
                f"access of {node_name} removed, but its replication slot stays until "
                f"{self.node_name}'s server runs (then drop it again)"
            )
        with self._local() as conn:
            dropped = drop_slot(conn, slot_name(node_name))
        log.info("%s: removed member %s (slot dropped: %s)", self.node_name, node_name, dropped)

    def rotate_password(self, user: str, password: str) -> None:
        """``ALTER ROLE`` on this primary (standbys get it with the WAL; their streams stay
        up, only new logins need the new password), and this node's passfile updated."""
        if not self.apply_password(user, password):
            raise ReplicationError(f"{self.node_name} is not a primary")
        log.info("%s: the password of %s was changed", self.node_name, user)

    def apply_password(self, user: str, password: str) -> bool:
        """Give ``user`` ``password`` here if this is a primary (False on a standby).

        Committed locally, not waiting for a synchronous standby: in strict mode with none
        streaming it would wait for ever. A primary that loses it in a failover is no loss:
        every agent that finds itself primary applies the store's password again."""
        self.remember_password(user, password)
        try:
            # One at a time: a removal's rotation and the agent loop's re-apply of the same
            # generation meet here, and two concurrent ALTER ROLE of one role fail with
            # "tuple concurrently updated".
            with _PASSWORD_LOCK, self._local() as conn:
                if one(conn, "SELECT pg_is_in_recovery()"):
                    return False
                with conn.transaction():
                    conn.execute("SET LOCAL synchronous_commit = local")
                    set_password(conn, user, password)
        except psycopg.Error as err:
            raise ReplicationError(
                f"cannot set the password of {user} on {self.node_name}: {err}"
            ) from None
        return True
