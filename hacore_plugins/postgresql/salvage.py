"""Minority mode's salvage for PostgreSQL: a logical slot on the active, read before a rewind.

With ``failover.minority_mode: on`` the agent calls :meth:`SalvageDuties.configure_salvage`
(``wal_level: logical`` is then required, see ``validate_failover``). From then on:

- the active keeps a logical replication slot (:data:`SLOT`, contrib ``test_decoding``)
  while it holds the lease, advanced to the position *every* other member has flushed, and
  only while every one of them streams: whoever wins a later election has at least that
  much, so nothing the slot gave up can be missing from the winner. PostgreSQL 15 does not
  carry logical slots to standbys, so each new active creates its own;
- cut off in a minority (:meth:`minority_holding`), the active stops waiting for a
  synchronous standby it cannot reach and keeps its slot (created now at the latest);
- before a rewind or a re-clone (:meth:`salvage_before_rewind`), the loser's server is
  started privately (no TCP listener, a private socket directory, read-only by default), the
  slot's pending changes are decoded, the server is stopped, pg_rewind's dry run names the
  fork point, and the transactions committed past it are written to an archive
  (hacore/backends/salvage.py). Only then is the slot dropped and the rewind allowed; any
  failure before that raises, and the rewind does not happen.
"""

from __future__ import annotations

import datetime
import logging
import shlex
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import attrs
import psycopg

from hacore.backends import salvage as archives
from hacore.errors import HacoreError, ReplicationError
from hacore_plugins.postgresql import clone as copying
from hacore_plugins.postgresql import server
from hacore_plugins.postgresql.node import PgNode, one
from hacore_plugins.postgresql.settings import SUPERUSER
from hacore_plugins.postgresql.sql import Conn, first_line

log = logging.getLogger(__name__)

SLOT = "hacore_salvage"
PLUGIN = "test_decoding"
#: a slot is created only when no transaction runs; never hold the agent's loop for long
_CREATE_TIMEOUT_MS = 2000
_PEEK = (
    "SELECT lsn::text, xid::text, data FROM pg_logical_slot_peek_changes(%s, NULL, NULL, "
    "'include-xids', '1', 'include-timestamp', '1', 'skip-empty-xacts', '1')"
)


class SalvageDuties(PgNode):
    """The salvage side of the PostgreSQL backend (mixed into ``PostgresReplication``)."""

    _salvage_dir: Path | None = None
    _salvage_said: str = ""

    def configure_salvage(self, directory: Path) -> None:
        self._salvage_dir = directory

    # -- on the active ------------------------------------------------------------------------

    def minority_holding(self) -> None:
        with _as_replication_error("minority mode"):
            self._release_and_keep()

    def keep_salvage_slot(self, members: Sequence[str]) -> None:
        with _as_replication_error("the salvage slot"):
            self._keep_slot(members)

    def _release_and_keep(self) -> None:
        state = self._state()
        if state.sync_names != "":
            self._save(attrs.evolve(state, sync_names=""))
            self._write_node_files(self._state())
            self._reload_and_confirm("synchronous_standby_names", "")
            log.warning(
                "%s: minority mode: commits no longer wait for a synchronous standby",
                self.node_name,
            )
        with self._local() as conn:
            self._ensure_slot(conn)

    def _keep_slot(self, members: Sequence[str]) -> None:
        with self._local() as conn:
            if not self._ensure_slot(conn):
                return
            flushed = {
                str(name): str(at)
                for name, at in conn.execute(
                    "SELECT application_name, flush_lsn::text FROM pg_stat_replication "
                    "WHERE flush_lsn IS NOT NULL"
                )
            }
            if not members or any(m not in flushed for m in members):
                return
            target = min(archives.lsn(flushed[m]) for m in members)
            current = one(
                conn,
                f"SELECT confirmed_flush_lsn::text FROM pg_replication_slots "
                f"WHERE slot_name = '{SLOT}'",
            )
            if current is None or archives.lsn(current) < target:
                conn.execute(
                    "SELECT pg_replication_slot_advance(%s, %s::pg_lsn)",
                    (SLOT, archives.lsn_text(target)),
                )

    def _ensure_slot(self, conn: Conn) -> bool:
        """The slot exists on this primary (created if missing); False when it cannot."""
        if one(conn, "SELECT pg_is_in_recovery()"):
            return False
        if one(conn, "SHOW wal_level") != "logical":
            self._say("minority mode needs wal_level logical: no salvage slot")
            return False
        if one(conn, f"SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{SLOT}'"):
            return True
        try:
            conn.execute(f"SET statement_timeout = {_CREATE_TIMEOUT_MS}")
            conn.execute("SELECT pg_create_logical_replication_slot(%s, %s)", (SLOT, PLUGIN))
            conn.execute("RESET statement_timeout")
        except psycopg.Error as err:
            self._say(f"cannot create the salvage slot yet: {first_line(err)}")
            return False
        log.info("%s: salvage slot %s created", self.node_name, SLOT)
        return True

    def _say(self, message: str) -> None:
        if message != self._salvage_said:
            log.warning("%s: %s", self.node_name, message)
        self._salvage_said = message

    # -- before a rewind ----------------------------------------------------------------------

    def salvage_before_rewind(self, winner: str, conninfo: str) -> Path | None:
        """Export the transactions the winner does not have; the archive's path, or None when
        there was nothing to export. Raises ReplicationError when the export failed: the
        caller must then not rewind."""
        directory = self._salvage_dir
        if directory is None:
            return None
        try:
            return self._salvage(directory, winner, conninfo)
        except (HacoreError, psycopg.Error, OSError) as err:
            text = first_line(err) if isinstance(err, psycopg.Error) else str(err)
            raise ReplicationError(
                f"{archives.FAILED} on {self.node_name} ({text}); not rewinding, so that "
                "nothing is lost: the database stays stopped until the export succeeds"
            ) from None

    def _salvage(self, directory: Path, winner: str, conninfo: str) -> Path | None:
        with self._private_server() as conn:
            exists = one(
                conn, f"SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{SLOT}'"
            )
            if not exists:
                log.warning(
                    "%s: no salvage slot in this data: nothing recorded to salvage",
                    self.node_name,
                )
                return None
            rows = [(str(p), x, str(d)) for p, x, d in conn.execute(_PEEK, (SLOT,)).fetchall()]
            timeline = one(conn, "SELECT timeline_id FROM pg_control_checkpoint()")
        found = archives.transactions(rows)
        fork, kept = self._past_fork(found, conninfo) if found else (None, [])
        path = None
        if kept:
            data = archives.archive(
                node=self.node_name,
                winner=winner,
                now=datetime.datetime.now(datetime.UTC),
                timeline=int(timeline) if timeline is not None else None,
                fork=fork,
                kept=kept,
            )
            path = archives.write(directory, data)
            log.warning(
                "%s: salvaged %d transaction(s) that the winner %s does not have to %s",
                self.node_name,
                len(kept),
                winner,
                path,
            )
        else:
            log.info("%s: nothing to salvage: the winner has every write", self.node_name)
        # only now, with the archive on disk: the slot must not outlive this history
        with self._private_server() as conn:
            conn.execute("SET default_transaction_read_only = off")
            conn.execute("SELECT pg_drop_replication_slot(%s)", (SLOT,))
        return path

    def _past_fork(
        self, found: list[archives.Transaction], conninfo: str
    ) -> tuple[int | None, list[archives.Transaction]]:
        """The fork point from pg_rewind's dry run (the server is stopped), and the
        transactions committed past it."""
        try:
            output = copying.rewind(self.tools, self.layout, conninfo=conninfo, dry_run=True)
        except ReplicationError as err:
            log.warning(
                "%s: pg_rewind's dry run failed (%s): keeping every decoded transaction",
                self.node_name,
                err,
            )
            return None, list(found)
        if "no rewind required" in output:
            return None, []
        fork = archives.fork_point(output)
        return fork, archives.diverged(found, fork)

    @contextmanager
    def _private_server(self) -> Iterator[Conn]:
        """This node's server started as a primary that no client can reach, for decoding;
        stopped again (cleanly: pg_rewind takes only clean data) when the block ends."""
        try:
            self._start_private()
            conn = self._private_connect()
            try:
                yield conn
            finally:
                conn.close()
        finally:
            server.stop(self.layout, timeout=self.config.stop_timeout)

    @property
    def _private_dir(self) -> Path:
        return self.layout.home / "salvage-run"

    def _start_private(self) -> None:
        if server.postmaster_pid(self.layout) is not None:
            raise ReplicationError("the server runs: it must be stopped before a rewind")
        self.tools.make_dir(self._private_dir)
        self.layout.standby_signal.unlink(missing_ok=True)
        (self.layout.pgdata / "recovery.signal").unlink(missing_ok=True)
        options = " ".join(
            [
                "-c listen_addresses=''",
                f"-c unix_socket_directories={shlex.quote(str(self._private_dir))}",
                "-c default_transaction_read_only=on",
                "-c synchronous_standby_names=''",
                "-c archive_mode=off",
            ]
        )
        result = self.tools.run(
            "pg_ctl",
            [
                "start",
                "-D",
                str(self.layout.pgdata),
                "-l",
                str(self.layout.log_file),
                "-w",
                "-t",
                str(int(self.config.start_timeout)),
                "-s",
                "-o",
                options,
            ],
            timeout=self.config.start_timeout + 30,
        )
        if result.returncode != 0 or server.postmaster_pid(self.layout) is None:
            raise ReplicationError(
                f"cannot start the server privately to decode: {server.log_tail(self.layout)}"
            )

    def _private_connect(self) -> Conn:
        try:
            return psycopg.connect(
                host=str(self._private_dir),
                port=self.config.port,
                user=SUPERUSER,
                dbname=self.config.database,
                connect_timeout=10,
                autocommit=True,
                application_name="hacore-salvage",
            )
        except psycopg.Error as err:
            raise ReplicationError(f"cannot reach the private server: {first_line(err)}") from None


@contextmanager
def _as_replication_error(what: str) -> Iterator[None]:
    try:
        yield
    except psycopg.Error as err:
        raise ReplicationError(f"{what}: {first_line(err)}") from None
