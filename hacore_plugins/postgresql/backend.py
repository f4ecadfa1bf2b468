"""PostgreSQL streaming replication as a hacore replication backend.

One instance manages one node's server under its own ``data_dir`` (see ``layout.py``). The
rules it keeps, whatever the caller does:

- only ``bootstrap`` and ``promote`` make a writable primary; every ``start`` comes up in
  recovery, so a node restarted without the lease cannot take writes;
- a node whose data was a primary's can only follow someone after a ``rewind``;
- data is replaced by a clone only once the clone is complete;
- nothing node-local (port, socket, upstream, slot, access rules, TLS files) is read from a
  file that a clone or rewind copies from another node;
- with ``tls``, members reach each other only over TLS, with certificates from the cluster CA.

The class is assembled from ``node.py`` (this node's server and files), ``sources.py`` (the
node it copies or streams from) and ``primary.py`` (the primary's duties); this module holds
the life cycle: creating data, starting, following, promoting, fencing, and the status.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
from collections.abc import Sequence
from typing import Any

import attrs
import psycopg

from hacore.backends.replication import (
    UNKNOWN_STATUS,
    ProgressCallback,
    ReplicationRole,
    ReplicationSource,
    ReplicationStatus,
    StandbyState,
)
from hacore.errors import ReplicationError
from hacore_plugins.postgresql import clone as copying
from hacore_plugins.postgresql import server
from hacore_plugins.postgresql.commands import tail
from hacore_plugins.postgresql.node import check_hosts, one
from hacore_plugins.postgresql.primary import PrimaryDuties
from hacore_plugins.postgresql.salvage import SalvageDuties
from hacore_plugins.postgresql.settings import SUPERUSER
from hacore_plugins.postgresql.snapshot import SnapshotDuties
from hacore_plugins.postgresql.sources import SourceAccess
from hacore_plugins.postgresql.sql import (
    STATUS,
    describe,
    first_line,
    setup_cluster,
    setup_database,
)
from hacore_plugins.postgresql.state import NodeState

log = logging.getLogger(__name__)

#: How long a fence waits for a fast shutdown before an immediate one. The fast shutdown's
#: first step (new connections refused, every session cut) is the fence itself; what it does
#: next, a shutdown checkpoint and waiting for every connected standby to confirm the end of
#: the WAL, is only a courtesy, and it never ends while a standby is cut off or frozen (until
#: ``wal_sender_timeout``). A fence runs while the lease is at stake, and holds the agent's
#: loop: after 1 s the server gets an immediate shutdown, which costs crash recovery at the
#: next start and loses nothing acknowledged (a commit is flushed before it is acknowledged).
FENCE_FAST_WAIT = 1.0
#: How long a fence waits for an immediate shutdown before SIGKILL of the postmaster and
#: every backend: a fence must end in bounded time. A server whose processes are stopped
#: (SIGSTOP) acts on no signal but SIGKILL: it is killed at once.
FENCE_IMMEDIATE_WAIT = 1.0
#: Messages of a standby whose history went past its upstream's: only a rewind helps.
_DIVERGED = (
    "is not a child of this server's history",
    "forked off current database system timeline",
    "is ahead of the WAL flush position of this server",
)


#: seconds a call made on the agent's loop (start, follow) waits for the leader's database;
#: libpq's minimum is 2
ON_LOOP_CONNECT_TIMEOUT = 3


class PostgresReplication(PrimaryDuties, SourceAccess, SalvageDuties, SnapshotDuties):
    """The backend registered as ``postgresql``; ``tls=None`` runs plain, as before TLS."""

    # ---------------------------------------------------------------------------------------
    # Queries

    def address(self) -> tuple[str, int]:
        """The node's host and the port the server listens on (5432 when not set)."""
        return (self.host, self.config.port)

    def status(self) -> ReplicationStatus:
        state = self._state()
        if not self._streams(state):
            # Read every loop, so the server log's size bound lives here. Not on a standby:
            # its log is searched for divergence from a byte mark a truncation would skip.
            self.log_trimmer.tick()
        if self.postmaster_pid() is None:
            return ReplicationStatus(
                running=False, role=ReplicationRole.STOPPED, needs_rewind=state.was_primary
            )
        try:
            with self._local(timeout=3) as conn:
                row = conn.execute(STATUS).fetchone()
        except (ReplicationError, psycopg.Error) as err:
            # A postmaster runs but did not answer (frozen, starting, overloaded, or this
            # process is out of descriptors): its state is unknown (DESIGN rule 7). A guess
            # such as "primary, not writable" made the agent finish a promotion that was not
            # half-done on a healthy active and rewrite the status key without its
            # synchronous standby (issue 9).
            why = "cannot open a socket" if _out_of_descriptors(err) else "no answer"
            raise ReplicationError(
                f"the local database (postmaster {self.postmaster_pid()}) did not answer the "
                f"status query ({why}), so its state is unknown: {first_line(err)}"
            ) from err
        assert row is not None
        in_recovery, read_only, position, walfile, checkpoint_tli = row[:5]
        received_tli, sender_host, sender_port, receiver, standbys, pending_restart = row[5:]
        following = None
        if in_recovery and receiver == "streaming" and sender_host:
            following = self._upstream_name(state, sender_host, sender_port)
        timeline = int(walfile[:8], 16) if walfile else received_tli or checkpoint_tli
        needs_rewind = in_recovery and (
            state.was_primary or (following is None and self._diverged_in_log(state))
        )
        return ReplicationStatus(
            running=True,
            role=ReplicationRole.STANDBY if in_recovery else ReplicationRole.PRIMARY,
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
                    lag_seconds=_lag_seconds(s),
                )
                for s in standbys
            ),
            needs_rewind=bool(needs_rewind),
            pending_restart=bool(pending_restart),
        )

    # ---------------------------------------------------------------------------------------
    # Creating data

    def bootstrap(self, *, replication_password: str, allowed_hosts: Sequence[str]) -> None:
        if self.is_initialized():
            raise ReplicationError(
                f"{self.node_name} already holds a database in {self.layout.pgdata}; "
                "refusing to bootstrap over it"
            )
        hosts = tuple(dict.fromkeys(check_hosts(allowed_hosts)))
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
        copying.recover_interrupted(self.layout)
        slot = self._slot_beside(source)
        try:
            self._copy_from(source, progress, slot)
        except BaseException:
            slot.undo()
            raise
        self._slot_checked = (source, time.monotonic())
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
        # minority mode: the writes the leader does not have are archived first, or raises
        self.salvage_before_rewind(source.node_name, conninfo)
        try:
            self._finish_crash_recovery()
            # No --dry-run first: it fetches all the run fetches (the source's whole pg_wal),
            # and pg_rewind makes its checks (same system, common timeline, the target's WAL)
            # before it first changes the target.
            began = time.monotonic()
            output = copying.rewind(self.tools, self.layout, conninfo=conninfo, dry_run=False)
            took = time.monotonic() - began
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
            log.info(
                "%s: pg_rewind from %s in %.2fs: %s", self.node_name, describe(source), took, output
            )
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
                if not self._slot_made_by_clone(follow):
                    self._ensure_source_slot(follow, timeout=ON_LOOP_CONNECT_TIMEOUT)
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

    def restart_in_place(self) -> None:
        """A primary restarts as the primary it was (no standby.signal, no promotion, same
        timeline); a standby as the standby it was."""
        if not self.is_initialized():
            raise ReplicationError(f"{self.node_name} has no database to restart")
        primary = (
            self.postmaster_pid() is not None and self.status().role is ReplicationRole.PRIMARY
        )
        self._stop()
        if not primary:
            self.start()
            return
        self._prepare_data(self.layout.pgdata, standby=False)
        self._start(what="restart in place")

    def follow(self, source: ReplicationSource) -> None:
        if not self.is_initialized():
            raise ReplicationError(f"{self.node_name} has no database: clone it first")
        state = self._state()
        self._refuse_if_was_primary(state, source)
        try:
            self._ensure_source_slot(source, timeout=ON_LOOP_CONNECT_TIMEOUT)
        except ReplicationError as err:
            # follow() runs on the agent's loop: an unreachable leader must not hold it for
            # long; the standby connects by itself and a later follow() makes the slot.
            log.warning("%s: following without a slot on the leader: %s", self.node_name, err)
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
        if pid is not None and self.status().role is ReplicationRole.PRIMARY:
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
        try:
            with self._local() as conn:
                if one(conn, "SELECT pg_is_in_recovery()"):
                    # pg_promote(wait => true) looks every 100 ms whether recovery ended: on
                    # average 50 ms of every failover's write gap; this looks sooner
                    conn.execute("SELECT pg_promote(false)")
                    waits = server.poll_pauses()
                    while one(conn, "SELECT pg_is_in_recovery()"):
                        if time.monotonic() >= deadline:
                            break
                        time.sleep(next(waits))
        except (ReplicationError, psycopg.Error) as err:
            raise ReplicationError(f"cannot promote {self.node_name}: {first_line(err)}") from None
        status = self._wait_writable(deadline, timeout)
        log.info("%s: promoted, timeline %s", self.node_name, status.timeline)

    def _wait_writable(self, deadline: float, timeout: float) -> ReplicationStatus:
        status = self._status_or_unknown()
        while not status.writable and time.monotonic() < deadline:
            time.sleep(0.1)
            status = self._status_or_unknown()
        if not status.known:
            raise ReplicationError(
                f"{self.node_name} did not become writable within {timeout:.0f}s: its "
                "database does not answer"
            )
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

        Bounded, about 2 s at most: fast shutdown, immediate shutdown after
        :data:`FENCE_FAST_WAIT`, then SIGKILL of the postmaster and every backend after
        :data:`FENCE_IMMEDIATE_WAIT`; a frozen server (SIGSTOP) is SIGKILLed at once. Sending
        it SIGCONT instead would let its frozen backends acknowledge commits after the fence.
        """
        if server.stop(
            self.layout,
            timeout=min(self.config.stop_timeout, FENCE_FAST_WAIT),
            immediate_wait=FENCE_IMMEDIATE_WAIT,
        ):
            log.warning("%s: fenced (server stopped)", self.node_name)

    # ---------------------------------------------------------------------------------------
    # Helpers

    def _status_or_unknown(self) -> ReplicationStatus:
        """``status()``, or :data:`UNKNOWN_STATUS` while the server does not answer (a wait
        for a promotion tries again until its own deadline)."""
        try:
            return self.status()
        except ReplicationError:
            return UNKNOWN_STATUS

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


_OUT_OF_DESCRIPTORS = (os.strerror(errno.EMFILE), os.strerror(errno.ENFILE))


def _out_of_descriptors(err: Exception) -> bool:
    """libpq reports a failed ``socket()`` only as text ("could not create socket: Too many
    open files"), so the text is what tells it apart from a database that refused."""
    return any(text in str(err) for text in _OUT_OF_DESCRIPTORS)


def _lag_seconds(standby: dict[str, Any]) -> float | None:
    """``replay_lag`` in seconds. PostgreSQL shows NULL once a standby caught up and nothing
    is written: that is no lag, not an unknown one."""
    if standby.get("lag_s") is not None:
        return float(standby["lag_s"])
    return 0.0 if standby.get("lag") == 0 else None
