"""Reaching the node this one copies from or streams from (its source, the leader).

The slot on the source, the password in the passfile, the connection strings of
``pg_basebackup`` and ``pg_rewind``, and the copy itself. With TLS, every one of these
connections checks the source's certificate against the cluster CA and its host name, and
shows this node's certificate.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import attrs
import psycopg
from psycopg.conninfo import make_conninfo

from hacore.backends.replication import ProgressCallback, ReplicationSource
from hacore.errors import ReplicationError
from hacore_plugins.postgresql import clone as copying
from hacore_plugins.postgresql import tls_files
from hacore_plugins.postgresql.config_files import (
    copy_application_name,
    parse_pgpass,
    render_pgpass,
    slot_name,
)
from hacore_plugins.postgresql.node import PgNode, file_size
from hacore_plugins.postgresql.sql import (
    Conn,
    connect_source,
    create_slot,
    describe,
    drop_slot,
    first_line,
)
from hacore_plugins.postgresql.state import NodeState, Upstream

log = logging.getLogger(__name__)

#: seconds a clone's check of its slot stands for the start that follows (the agent starts
#: the standby right after the copy)
SLOT_CHECK_VALID_S = 30.0


class SourceAccess(PgNode):
    """What a standby (or a node about to become one) does on and with its source."""

    def _refuse_if_was_primary(self, state: NodeState, source: ReplicationSource) -> None:
        if state.was_primary:
            raise ReplicationError(
                f"{self.node_name} was a primary and may hold writes {source.node_name} lacks: "
                f"rewind it instead of following"
            )

    def _pointed_at(self, state: NodeState, source: ReplicationSource) -> NodeState:
        upstream = Upstream.of(source)
        mark = state.log_mark if upstream == state.upstream else file_size(self.layout.log_file)
        return attrs.evolve(
            state.with_member(source.node_name, source.host), upstream=upstream, log_mark=mark
        )

    def _become_standby_of(self, source: ReplicationSource) -> None:
        state = attrs.evolve(
            self._pointed_at(self._state(), source), was_primary=False, sync_names=None
        )
        self._save(state)
        self._write_node_files(state)

    def _conninfo(self, source: ReplicationSource, **extra: Any) -> str:
        """How pg_basebackup and pg_rewind reach ``source`` (the password is in the passfile;
        with TLS, the server user's copies of the TLS files, refreshed here first)."""
        if self.tls is not None:
            self._install_tls()
            extra.update(tls_files.tool_options(self.layout))
        return make_conninfo(
            host=source.host,
            port=source.port,
            user=source.user,
            passfile=str(self.layout.pgpass),
            application_name=copy_application_name(self.node_name),
            connect_timeout=10,
            **extra,
        )

    def _copy_from(
        self,
        source: ReplicationSource,
        progress: ProgressCallback | None,
        slot: copying.SlotBeside | None = None,
    ) -> None:
        self._remember_password(source)
        conninfo = self._conninfo(source)
        if not self.is_initialized():
            # nothing to keep: straight into the data directory, no swap
            with copying.straight_in(self.layout) as pgdata:
                self._basebackup(source, pgdata, conninfo, progress, slot)
                self._prepare_data(pgdata, standby=True)
            return
        self._basebackup(source, self.layout.clone_tmp, conninfo, progress, slot)
        try:
            self._prepare_data(self.layout.clone_tmp, standby=True)
            self._stop()
            copying.swap_in(self.layout, self.layout.clone_tmp)
        except BaseException:
            copying.remove_tree(self.layout.clone_tmp)
            raise

    def _basebackup(
        self,
        source: ReplicationSource,
        target: Path,
        conninfo: str,
        progress: ProgressCallback | None,
        slot: copying.SlotBeside | None = None,
    ) -> None:
        copying.basebackup(
            self.tools,
            target,
            source,
            conninfo=conninfo,
            max_rate=self.config.clone_max_rate,
            progress=progress,
            slot=slot,
        )

    def _connect_source(self, source: ReplicationSource, *, timeout: int = 10) -> Conn:
        return connect_source(source, self.config.database, timeout=timeout, tls=self.tls)

    def _ensure_source_slot(
        self, source: ReplicationSource, *, fresh: bool = False, timeout: int = 10
    ) -> bool:
        """Create this node's slot on ``source``; also proves the credentials work."""
        return self._create_source_slot(source, fresh=fresh, timeout=timeout) is not None

    def _slot_made_by_clone(self, source: ReplicationSource) -> bool:
        """A clone from ``source`` just ended, its slot made and checked there: the start
        that follows it need not connect once more to make sure of the slot. Once only."""
        checked, self._slot_checked = self._slot_checked, None
        return (
            checked is not None
            and checked[0] == source
            and time.monotonic() - checked[1] < SLOT_CHECK_VALID_S
        )

    def _slot_beside(self, source: ReplicationSource) -> copying.SlotBeside:
        """A clone's new slot on ``source``, made while its copy runs."""
        return copying.SlotBeside(
            lambda: self._create_source_slot(source, fresh=True),
            lambda: self._forget_source_slot(source),
        )

    def _create_source_slot(
        self, source: ReplicationSource, *, fresh: bool = False, timeout: int = 10
    ) -> int | None:
        """:meth:`_ensure_source_slot`; where a new slot keeps WAL from (None: it existed)."""
        with self._connect_source(source, timeout=timeout) as conn:
            try:
                return create_slot(conn, slot_name(self.node_name), fresh=fresh)
            except psycopg.Error as err:
                raise ReplicationError(
                    f"cannot create the replication slot of {self.node_name} on "
                    f"{describe(source)}: {first_line(err)}"
                ) from None

    def _forget_source_slot(self, source: ReplicationSource) -> None:
        try:
            with self._connect_source(source, timeout=3) as conn:
                drop_slot(conn, slot_name(self.node_name), timeout=3)
        except (ReplicationError, psycopg.Error) as err:
            log.info("%s: slot left on %s: %s", self.node_name, describe(source), err)

    def _checkpoint(self, source: ReplicationSource) -> None:
        """Right after a promotion pg_rewind may see no fork until the new timeline is
        checkpointed, and wrongly say "no rewind required"."""
        with self._connect_source(source) as conn:
            try:
                conn.execute("CHECKPOINT")
            except psycopg.Error as err:
                raise ReplicationError(
                    f"cannot CHECKPOINT {describe(source)} before rewinding: {first_line(err)}"
                ) from None

    def _remember_password(self, source: ReplicationSource) -> None:
        try:
            entries = parse_pgpass(self.layout.pgpass.read_text())
        except FileNotFoundError:
            entries = {}
        key = (source.host, source.port, source.user)
        if entries.get(key) != source.password:
            entries[key] = source.password
            self.tools.write_file(self.layout.pgpass, render_pgpass(entries))
