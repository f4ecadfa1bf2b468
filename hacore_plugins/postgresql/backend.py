"""PostgreSQL streaming replication as a hacore replication backend.

One instance manages one node's server under its own ``data_dir`` (see ``layout.py``). The
rules it keeps, whatever the caller does:

- only ``bootstrap`` and ``promote`` make a writable primary; every ``start`` comes up in
  recovery, so a node restarted without the lease cannot take writes;
- a node whose data was a primary's can only follow someone after a ``rewind``;
- data is replaced by a clone only once the clone is complete;
- nothing node-local (port, socket, upstream, slot, access rules) is read from a file that a
  clone or rewind copies from another node.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import psycopg
from psycopg.conninfo import make_conninfo

from hacore.errors import ConfigError, ReplicationError
from hacore.replication import (
    ProgressCallback,
    ReplicationBackend,
    ReplicationSource,
    ReplicationStatus,
    StandbyState,
)
from hacore_plugins.postgresql import clone as copying
from hacore_plugins.postgresql import server
from hacore_plugins.postgresql.commands import PgTools, ServerUser, tail
from hacore_plugins.postgresql.config_files import (
    NO_STANDBY,
    UNUSED_HBA,
    copy_application_name,
    parse_pgpass,
    quorum,
    render_hba,
    render_ident,
    render_node_conf,
    render_pgpass,
    slot_name,
    with_include,
    without_managed,
)
from hacore_plugins.postgresql.layout import Layout
from hacore_plugins.postgresql.settings import SUPERUSER, PgSettings, parse_settings
from hacore_plugins.postgresql.sql import (
    STATUS,
    Conn,
    connect_local,
    connect_source,
    describe,
    drop_slot,
    ensure_slot,
    first_line,
    setup_cluster,
    setup_database,
)
from hacore_plugins.postgresql.state import NodeState, Upstream, load_state

log = logging.getLogger(__name__)

_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
#: How long a fence waits for a fast shutdown before an immediate one: a fence must be quick,
#: and an immediate shutdown only costs crash recovery at the next start.
FENCE_FAST_WAIT = 5.0
#: Messages of a standby whose history went past its upstream's: only a rewind helps.
_DIVERGED = (
    "is not a child of this server's history",
    "forked off current database system timeline",
    "is ahead of the WAL flush position of this server",
)


class PostgresReplication(ReplicationBackend):
    def __init__(self, settings: Any, *, node_name: str, host: str, data_dir: Path) -> None:
        super().__init__(settings, node_name=node_name, host=host, data_dir=data_dir)
        if not isinstance(node_name, str) or not _NODE_NAME.fullmatch(node_name):
            raise ConfigError(
                f"node name {node_name!r} must be 1-63 letters, digits, '.', '-' or '_' "
                "(it names the node's replication slot and standby entry)"
            )
        if not isinstance(host, str) or not host or any(c.isspace() for c in host):
            raise ConfigError(f"node host {host!r} must be an IP address or a DNS name")
        self.config: PgSettings = parse_settings(self.settings)
        self.layout = Layout(self.data_dir.absolute())
        self.user = ServerUser.lookup(self.config.os_user)
        self.tools = PgTools(self.config.bin_dir, self.user, self.layout.home)
        socket = self.layout.run_dir / f".s.PGSQL.{self.config.port}"
        if len(str(socket)) > 107:
            raise ConfigError(
                f"data_dir {self.data_dir} is too long: the socket path {socket} exceeds the "
                "107 bytes a Unix socket allows"
            )

    @classmethod
    def validate_settings(cls, settings: Any) -> None:
        parse_settings(settings)

    # ---------------------------------------------------------------------------------------
    # Queries

    def is_initialized(self) -> bool:
        copying.recover_swap(self.layout)
        return (self.layout.pgdata / "PG_VERSION").is_file()

    def address(self) -> tuple[str, int]:
        """The node's host and the port the server listens on (5432 when not set)."""
        return (self.host, self.config.port)

    def postmaster_pid(self) -> int | None:
        """The running server's pid, None when it is stopped."""
        return server.postmaster_pid(self.layout)

    def status(self) -> ReplicationStatus:
        state = self._state()
        if self.postmaster_pid() is None:
            return ReplicationStatus(running=False, role="stopped", needs_rewind=state.was_primary)
        try:
            with self._local(timeout=3) as conn:
                row = conn.execute(STATUS).fetchone()
        except (ReplicationError, psycopg.Error) as err:
            log.debug("%s: status query failed: %s", self.node_name, err)
            role = "standby" if self.layout.standby_signal.exists() else "primary"
            return ReplicationStatus(running=True, role=role, needs_rewind=state.was_primary)
        assert row is not None
        in_recovery, read_only, position, walfile, checkpoint_tli = row[:5]
        received_tli, sender_host, sender_port, receiver, standbys = row[5:]
        following = None
        if in_recovery and receiver == "streaming" and sender_host:
            following = self._upstream_name(state, sender_host, sender_port)
        timeline = int(walfile[:8], 16) if walfile else received_tli or checkpoint_tli
        needs_rewind = in_recovery and (
            state.was_primary or (following is None and self._diverged_in_log(state))
        )
        return ReplicationStatus(
            running=True,
            role="standby" if in_recovery else "primary",
            writable=not in_recovery and not read_only,
            position=int(position) if position is not None else None,
            timeline=int(timeline) if timeline is not None else None,
            following=following,
            standbys=tuple(
                StandbyState(
                    name=s["name"],
                    state=s["state"],
                    lag_bytes=int(s["lag"]) if s["lag"] is not None else None,
                    sync=s["sync_state"] in ("sync", "quorum"),
                    sync_state=s["sync_state"],
                )
                for s in standbys
            ),
            needs_rewind=bool(needs_rewind),
        )

    def fencing_token(self) -> int | None:
        with self._local() as conn:
            row = conn.execute("SELECT token FROM hacore.leadership WHERE id = 1").fetchone()
        return int(row[0]) if row else None

    # ---------------------------------------------------------------------------------------
    # Creating data

    def bootstrap(self, *, replication_password: str, allowed_hosts: Sequence[str]) -> None:
        if self.is_initialized():
            raise ReplicationError(
                f"{self.node_name} already holds a database in {self.layout.pgdata}; "
                "refusing to bootstrap over it"
            )
        hosts = tuple(dict.fromkeys(_check_hosts(allowed_hosts)))
        self._prepare_home()
        copying.remove_tree(self.layout.init_tmp)
        result = self.tools.run(
            "initdb",
            [
                "-D",
                str(self.layout.init_tmp),
                "-U",
                SUPERUSER,
                "--data-checksums",
                "-E",
                "UTF8",
                f"--locale={self.config.locale}",
                "--auth-local=peer",
                "--auth-host=scram-sha-256",
            ],
            timeout=600,
        )
        if result.returncode != 0:
            copying.remove_tree(self.layout.init_tmp)
            raise ReplicationError(f"initdb failed: {tail(result.stdout + result.stderr)}")
        self._prepare_data(self.layout.init_tmp, standby=False)
        os.rename(self.layout.init_tmp, self.layout.pgdata)
        state = NodeState(was_primary=True, static_hosts=hosts)
        try:
            self._save(state)
            self._start(what="the new primary")
            with self._local(dbname="postgres") as conn:
                setup_cluster(conn, self.config, replication_password)
            with self._local() as conn:
                setup_database(conn, self.config)
        except BaseException:
            # The node was empty before: leave it empty, not half-bootstrapped.
            server.stop(self.layout, timeout=self.config.stop_timeout)
            copying.remove_tree(self.layout.pgdata)
            raise
        log.info("%s: bootstrapped a new primary in %s", self.node_name, self.layout.pgdata)

    def clone(self, source: ReplicationSource, *, progress: ProgressCallback | None = None) -> None:
        self._prepare_home()
        copying.recover_swap(self.layout)
        created = self._ensure_source_slot(source, fresh=True)
        try:
            self._copy_from(source, progress)
        except BaseException:
            if created:
                self._forget_source_slot(source)
            raise
        self._become_standby_of(source)
        log.info("%s: cloned from %s", self.node_name, describe(source))

    def rewind(self, source: ReplicationSource) -> None:
        if not self.is_initialized():
            self.clone(source)
            self._start(what=f"a standby of {source.node_name}")
            return
        self._stop()
        self._ensure_source_slot(source)
        self._remember_password(source)
        self._checkpoint(source)
        conninfo = self._conninfo(source, dbname=self.config.database)
        try:
            self._finish_crash_recovery()
            copying.rewind(self.tools, self.layout, conninfo=conninfo, dry_run=True)
            output = copying.rewind(self.tools, self.layout, conninfo=conninfo, dry_run=False)
        except ReplicationError as err:
            log.warning(
                "%s: cannot rewind from %s (%s); cloning it again, old data kept until the "
                "clone is complete",
                self.node_name,
                describe(source),
                err,
            )
            try:
                self._ensure_source_slot(source, fresh=True)
                self._copy_from(source, None)
            except ReplicationError as clone_err:
                raise ReplicationError(
                    f"{self.node_name} could neither rewind ({err}) nor re-clone ({clone_err})"
                ) from None
        else:
            log.info("%s: pg_rewind from %s: %s", self.node_name, describe(source), output)
            self._prepare_data(self.layout.pgdata, standby=True)
        self._become_standby_of(source)
        self._start(what=f"a standby of {source.node_name}")

    def _finish_crash_recovery(self) -> None:
        """Leave the data of a server that was killed (not shut down) cleanly shut down.

        pg_rewind accepts only cleanly shut down data. Its own remedy, a single-user crash
        recovery, is skipped by ``--dry-run`` (which then fails with "target server must be
        shut down cleanly") and writes an end-of-recovery checkpoint. A read-only start with
        no upstream replays the local WAL without writing any; a fast stop then leaves the
        data "shut down in recovery", which pg_rewind takes.
        """
        state = server.cluster_state(self.tools, self.layout)
        if state in server.CLEAN_STATES:
            return
        log.info(
            "%s: the data was left %r by a server that did not shut down; replaying its WAL "
            "read-only before the rewind",
            self.node_name,
            state,
        )
        self._prepare_data(self.layout.pgdata, standby=True)
        self._write_node_files(attrs.evolve(self._state(), upstream=None))
        try:
            server.start(
                self.tools,
                self.layout,
                timeout=self.config.start_timeout,
                what=f"{self.node_name} (crash recovery before a rewind)",
            )
        finally:
            self._stop()

    # ---------------------------------------------------------------------------------------
    # Running

    def start(self, *, follow: ReplicationSource | None = None) -> None:
        if not self.is_initialized():
            raise ReplicationError(f"{self.node_name} has no database: bootstrap or clone first")
        if self.postmaster_pid() is not None:
            if follow is not None:
                self.follow(follow)
            return
        state = self._state()
        if follow is not None:
            self._refuse_if_was_primary(state, follow)
            try:
                self._ensure_source_slot(follow)
            except ReplicationError as err:
                # The standby retries by itself; the next follow() creates the slot.
                log.warning("%s: starting without a slot on the leader: %s", self.node_name, err)
            self._remember_password(follow)
            state = self._pointed_at(state, follow)
            self._save(state)
        self._prepare_data(self.layout.pgdata, standby=True)
        self._write_node_files(state)
        upstream = state.upstream if self._streams(state) else None
        what = f"a standby of {upstream.node_name}" if upstream else "read-only"
        self._start(what=what)

    def stop(self) -> None:
        self._stop()

    def follow(self, source: ReplicationSource) -> None:
        if not self.is_initialized():
            raise ReplicationError(f"{self.node_name} has no database: clone it first")
        state = self._state()
        self._refuse_if_was_primary(state, source)
        self._ensure_source_slot(source)
        self._remember_password(source)
        new = self._pointed_at(state, source)
        changed = new.upstream != state.upstream or not self.layout.standby_signal.exists()
        self._save(new)
        self._write_node_files(new)
        pid = self.postmaster_pid()
        if pid is None:
            self._prepare_data(self.layout.pgdata, standby=True)
        elif changed:
            # PostgreSQL 13+ restarts its WAL receiver on a changed primary_conninfo.
            os.kill(pid, signal.SIGHUP)
            log.info("%s: now following %s", self.node_name, describe(source))

    def promote(self, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if not self.is_initialized():
            raise ReplicationError(f"{self.node_name} has no database to promote")
        pid = self.postmaster_pid()
        if pid is not None and self.status().role == "primary":
            self._wait_writable(deadline, timeout)
            return
        # Recorded first: from here on the data may hold writes no other node has. The
        # synchronous setting starts from the mode's default until set_synchronous.
        state = attrs.evolve(self._state(), was_primary=True, sync_names=None)
        self._save(state)
        self._write_node_files(state)
        if pid is None:
            self._prepare_data(self.layout.pgdata, standby=True)
            self._start(what="promotion")
        else:
            os.kill(pid, signal.SIGHUP)
        remaining = max(1, int(deadline - time.monotonic()))
        try:
            with self._local() as conn:
                if _one(conn, "SELECT pg_is_in_recovery()"):
                    conn.execute("SELECT pg_promote(true, %s)", (remaining,))
        except (ReplicationError, psycopg.Error) as err:
            raise ReplicationError(f"cannot promote {self.node_name}: {first_line(err)}") from None
        status = self._wait_writable(deadline, timeout)
        log.info("%s: promoted, timeline %s", self.node_name, status.timeline)

    def _wait_writable(self, deadline: float, timeout: float) -> ReplicationStatus:
        status = self.status()
        while not status.writable and time.monotonic() < deadline:
            time.sleep(0.1)
            status = self.status()
        if not status.writable:
            where = f"a {status.role}" if status.running else "stopped"
            if status.running and status.position is not None:
                where += f" at WAL position {status.position}"
            raise ReplicationError(
                f"{self.node_name} did not become writable within {timeout:.0f}s: it is "
                f"still {where}"
            )
        return status

    def fence(self) -> None:
        """Stop the server at once, whatever its role.

        A read-only setting can be overridden by any session and a terminated backend may
        still be committing; only a stopped postmaster guarantees that no write is
        acknowledged after this returns. The server comes back read-only on ``start``.
        """
        if server.stop(self.layout, timeout=min(self.config.stop_timeout, FENCE_FAST_WAIT)):
            log.warning("%s: fenced (server stopped)", self.node_name)

    # ---------------------------------------------------------------------------------------
    # Primary duties

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

    def set_synchronous(self, standbys: Sequence[str], *, strict: bool) -> None:
        """Quorum commit over the given standbys that stream now (all of them if strict).

        Non-strict mode never names a standby that does not stream, or every commit would
        hang; with none streaming it is asynchronous. Strict mode (the argument or the node's
        ``synchronous: strict``) names the given standbys whether they stream or not, and with
        none given a name no standby has: commits wait until a later call names one.
        """
        strict = strict or self.config.strict
        bad = [name for name in standbys if not _NODE_NAME.fullmatch(name)]
        if bad:
            raise ReplicationError(f"not node names: {', '.join(map(repr, bad))}")
        with self._local() as conn:
            if _one(conn, "SELECT pg_is_in_recovery()"):
                raise ReplicationError(f"{self.node_name} is not a primary")
            streaming = {
                r[0]
                for r in conn.execute(
                    "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'"
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
        _check_hosts([host])
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

    # ---------------------------------------------------------------------------------------
    # Helpers

    @contextmanager
    def _local(self, *, dbname: str | None = None, timeout: int = 10) -> Iterator[Conn]:
        conn = connect_local(self.layout, self.config, dbname=dbname, timeout=timeout)
        try:
            yield conn
        finally:
            conn.close()

    def _state(self) -> NodeState:
        return load_state(self.layout.state)

    def _save(self, state: NodeState) -> None:
        self.tools.write_file(self.layout.state, state.to_json())

    def _streams(self, state: NodeState) -> bool:
        return state.upstream is not None and not state.was_primary

    def _write_node_files(self, state: NodeState) -> None:
        shown = state if self._streams(state) else attrs.evolve(state, upstream=None)
        conf = render_node_conf(
            self.config, self.layout, node_name=self.node_name, host=self.host, state=shown
        )
        self.tools.write_file(self.layout.node_conf, conf)
        self.tools.write_file(
            self.layout.hba, render_hba(self.config, state.allowed_hosts(self.host))
        )
        local_users = ["root", self.user.name, _current_user()]
        self.tools.write_file(self.layout.ident, render_ident(local_users))

    def _prepare_home(self) -> None:
        blocked = self.user.can_enter(self.layout.home.parent)
        if blocked is not None:
            raise ReplicationError(
                f"the {self.user.name} user cannot enter {blocked} (mode "
                f"{blocked.stat().st_mode & 0o777:04o}); PostgreSQL runs as {self.user.name}: "
                "make that directory traversable or choose another data_dir"
            )
        for directory in self.layout.owned_dirs():
            self.tools.make_dir(directory)

    def _prepare_data(self, pgdata: Path, *, standby: bool) -> None:
        """Make a data directory (new, cloned or rewound) read this node's settings only."""
        main = pgdata / "postgresql.conf"
        text = main.read_text() if main.exists() else ""
        self.tools.write_file(main, with_include(text))
        self.tools.write_file(pgdata / "pg_hba.conf", UNUSED_HBA)
        auto = pgdata / "postgresql.auto.conf"
        if auto.exists():
            self.tools.write_file(auto, without_managed(auto.read_text()))
        signal_file = pgdata / "standby.signal"
        if standby and not signal_file.exists():
            self.tools.write_file(signal_file, "")
        for leftover in ("recovery.signal", "postmaster.opts"):
            (pgdata / leftover).unlink(missing_ok=True)

    def _start(self, *, what: str) -> None:
        self._write_node_files(self._state())
        auto = self.layout.pgdata / "postgresql.auto.conf"
        if auto.exists():
            self.tools.write_file(auto, without_managed(auto.read_text()))
        server.start(
            self.tools,
            self.layout,
            timeout=self.config.start_timeout,
            what=f"{self.node_name} ({what})",
        )

    def _stop(self) -> None:
        server.stop(self.layout, timeout=self.config.stop_timeout)

    def _reload(self) -> None:
        pid = self.postmaster_pid()
        if pid is not None:
            os.kill(pid, signal.SIGHUP)

    def _reload_and_confirm(self, name: str, value: str, timeout: float = 15.0) -> None:
        """Reload, and return once new sessions see ``name = value``."""
        self._reload()
        deadline = time.monotonic() + timeout
        while True:
            with self._local() as conn:
                if _one(conn, f"SHOW {name}") == value:
                    return
            if time.monotonic() > deadline:
                raise ReplicationError(
                    f"{self.node_name} did not load {name} = {value!r} within {timeout:.0f}s; "
                    f"server log:\n{server.log_tail(self.layout)}"
                )
            time.sleep(0.05)

    def _refuse_if_was_primary(self, state: NodeState, source: ReplicationSource) -> None:
        if state.was_primary:
            raise ReplicationError(
                f"{self.node_name} was a primary and may hold writes {source.node_name} lacks: "
                f"rewind it instead of following"
            )

    def _pointed_at(self, state: NodeState, source: ReplicationSource) -> NodeState:
        upstream = Upstream.of(source)
        mark = state.log_mark if upstream == state.upstream else _size(self.layout.log_file)
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
        """How pg_basebackup and pg_rewind reach ``source`` (the password is in the passfile)."""
        return make_conninfo(
            host=source.host,
            port=source.port,
            user=source.user,
            passfile=str(self.layout.pgpass),
            application_name=copy_application_name(self.node_name),
            connect_timeout=10,
            **extra,
        )

    def _copy_from(self, source: ReplicationSource, progress: ProgressCallback | None) -> None:
        self._remember_password(source)
        copying.basebackup(
            self.tools,
            self.layout,
            source,
            conninfo=self._conninfo(source),
            max_rate=self.config.clone_max_rate,
            progress=progress,
        )
        try:
            self._prepare_data(self.layout.clone_tmp, standby=True)
            self._stop()
            copying.swap_in(self.layout, self.layout.clone_tmp)
        except BaseException:
            copying.remove_tree(self.layout.clone_tmp)
            raise

    def _ensure_source_slot(self, source: ReplicationSource, *, fresh: bool = False) -> bool:
        """Create this node's slot on ``source``; also proves the credentials work."""
        with connect_source(source, self.config.database) as conn:
            try:
                return ensure_slot(conn, slot_name(self.node_name), fresh=fresh)
            except psycopg.Error as err:
                raise ReplicationError(
                    f"cannot create the replication slot of {self.node_name} on "
                    f"{describe(source)}: {first_line(err)}"
                ) from None

    def _forget_source_slot(self, source: ReplicationSource) -> None:
        try:
            with connect_source(source, self.config.database, timeout=3) as conn:
                drop_slot(conn, slot_name(self.node_name), timeout=3)
        except (ReplicationError, psycopg.Error) as err:
            log.info("%s: slot left on %s: %s", self.node_name, describe(source), err)

    def _checkpoint(self, source: ReplicationSource) -> None:
        """Right after a promotion pg_rewind may see no fork until the new timeline is
        checkpointed, and wrongly say "no rewind required"."""
        with connect_source(source, self.config.database) as conn:
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

    def _upstream_name(self, state: NodeState, host: str, port: int | None) -> str:
        up = state.upstream
        if up is not None and up.host == host and up.port == port:
            return up.node_name
        return f"{host}:{port}"

    def _diverged_in_log(self, state: NodeState, limit: int = 262144) -> bool:
        try:
            with open(self.layout.log_file, "rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                start = state.log_mark if state.log_mark <= size else 0
                handle.seek(max(start, size - limit))
                text = handle.read().decode(errors="replace")
        except OSError:
            return False
        return any(message in text for message in _DIVERGED)


def _one(conn: Conn, query: str) -> Any:
    row = conn.execute(query).fetchone()
    return row[0] if row else None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _current_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def _check_hosts(hosts: Sequence[str]) -> list[str]:
    checked = []
    for host in hosts:
        if not isinstance(host, str) or not re.fullmatch(r"[A-Za-z0-9.:_-]+", host):
            raise ConfigError(f"allowed host {host!r} must be an IP address or a DNS name")
        checked.append(host)
    return checked
