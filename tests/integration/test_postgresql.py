"""The postgresql replication plugin on real PostgreSQL servers.

Every server runs on a free loopback port, in a directory under one session temp root that
the ``postgres`` user may enter, and is stopped by the pid in its ``postmaster.pid`` when the
test (or the session, for the shared primary and standby) ends. Primaries listen on their own
loopback address (127.0.0.2, 127.0.0.3) while every client connects from 127.0.0.1, so the
access rules really decide who gets in.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import psycopg
import pytest
from pg_admin import connect, postmaster, query, stop_by_pid

from hacore.backends.replication import ReplicationSource
from hacore.errors import ConfigError, ReplicationError
from hacore.plugins.registry import load_plugins
from hacore.testing.procs import free_port, kill_with_children, wait_for
from hacore_plugins.postgresql.backend import PostgresReplication
from hacore_plugins.postgresql.layout import INCLUDE_LINE
from hacore_plugins.postgresql.settings import default_bin_dir, parse_settings

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(default_bin_dir() is None, reason="no PostgreSQL binaries installed"),
]

PASSWORD = f"repl-{secrets.token_hex(8)}"
SUPERUSER_PASSWORD = f"su-{secrets.token_hex(8)}"
#: Small servers, as a busy two-core machine runs many at once; no fsync, as nothing here has
#: to survive an operating-system crash.
TEST_PARAMETERS = {"shared_buffers": "16MB", "max_connections": 30, "fsync": "off"}
WAIT = 60.0

_names = itertools.count()


# -------------------------------------------------------------------------------------------
# Servers: made in one root the postgres user can enter, stopped by pid.


def crash(node: PostgresReplication) -> None:
    """SIGKILL the whole server, as a host death would."""
    pid = postmaster(node)
    assert pid is not None, f"{node.node_name} is not running"
    kill_with_children(pid)


class Nodes:
    """Makes backends under ``root``; stops every server they started."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: list[PostgresReplication] = []

    def make(self, name: str, host: str = "127.0.0.1", **settings: Any) -> PostgresReplication:
        node = PostgresReplication(
            {"port": free_port(host), "parameters": TEST_PARAMETERS, **settings},
            node_name=name,
            host=host,
            data_dir=self.root / f"{name}-{next(_names)}",
        )
        self.made.append(node)
        return node

    def again(self, node: PostgresReplication, **settings: Any) -> PostgresReplication:
        """Another backend object on the same node, with some settings changed."""
        twin = PostgresReplication(
            {**node.settings, **settings},
            node_name=node.node_name,
            host=node.host,
            data_dir=node.data_dir,
        )
        self.made.append(twin)
        return twin

    def stop_all(self) -> None:
        for node in self.made:
            stop_by_pid(node)


@pytest.fixture(scope="session")
def pg_root() -> Iterator[Path]:
    # pytest's own temp dirs are 0700 root: the postgres user could not enter them.
    root = Path(tempfile.mkdtemp(prefix="hacore-pg-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def session_nodes(pg_root: Path) -> Iterator[Nodes]:
    nodes = Nodes(pg_root)
    yield nodes
    nodes.stop_all()


@pytest.fixture
def nodes(pg_root: Path) -> Iterator[Nodes]:
    made = Nodes(pg_root)
    yield made
    made.stop_all()


def source_of(node: PostgresReplication, password: str = PASSWORD) -> ReplicationSource:
    return ReplicationSource(node.node_name, node.host, node.config.port, "replicator", password)


def scalar(node: PostgresReplication, sql: str, params: tuple[Any, ...] = ()) -> Any:
    return query(node, sql, params)[0][0]


def has_note(node: PostgresReplication, note: str) -> bool:
    return bool(scalar(node, "SELECT count(*) FROM items WHERE note = %s", (note,)))


def wait_following(node: PostgresReplication, upstream: str) -> None:
    wait_for(
        lambda: node.status().following == upstream,
        WAIT,
        what=f"{node.node_name} to stream from {upstream}",
    )


def wait_replicated(node: PostgresReplication, note: str) -> None:
    wait_for(lambda: has_note(node, note), WAIT, what=f"row {note!r} on {node.node_name}")


def insert(node: PostgresReplication, note: str) -> None:
    query(node, "INSERT INTO items (note) VALUES (%s)", (note,))


def new_cluster(
    nodes: Nodes, name: str, host: str = "127.0.0.1", **settings: Any
) -> PostgresReplication:
    primary = nodes.make(name, host=host, **settings)
    primary.bootstrap(replication_password=PASSWORD, allowed_hosts=[])
    query(primary, "CREATE TABLE items (id serial PRIMARY KEY, note text)")
    return primary


def new_standby(
    nodes: Nodes, name: str, primary: PostgresReplication, **settings: Any
) -> PostgresReplication:
    node = nodes.make(name, **settings)
    primary.allow_member(name, node.host)
    node.clone(source_of(primary))
    node.start()
    wait_following(node, primary.node_name)
    return node


def leftovers(node: PostgresReplication) -> list[str]:
    return sorted(p.name for p in node.layout.home.iterdir() if p.name.startswith("pgdata."))


def plant_marker(node: PostgresReplication) -> str:
    marker = secrets.token_hex(8)
    (node.layout.pgdata / "hacore-test-marker").write_text(marker)
    return marker


def marker_of(node: PostgresReplication) -> str | None:
    try:
        return (node.layout.pgdata / "hacore-test-marker").read_text()
    except FileNotFoundError:
        return None


# -------------------------------------------------------------------------------------------
# The shared primary (on 127.0.0.2) and its streaming standby.


@attrs.frozen
class Standby:
    node: PostgresReplication
    progress: list[tuple[int, int]]


@pytest.fixture(scope="session")
def primary(session_nodes: Nodes) -> PostgresReplication:
    return new_cluster(session_nodes, "p1", host="127.0.0.2")


@pytest.fixture(scope="session")
def standby(session_nodes: Nodes, primary: PostgresReplication) -> Standby:
    node = session_nodes.make("s1")
    calls: list[tuple[int, int]] = []
    primary.allow_member("s1", node.host)
    node.clone(source_of(primary), progress=lambda done, total: calls.append((done, total)))
    node.start()
    wait_following(node, "p1")
    return Standby(node, calls)


# -------------------------------------------------------------------------------------------
# Settings


def test_settings_are_checked_with_clear_messages() -> None:
    bad: list[tuple[dict[str, Any], str]] = [
        ({"synchronous": "maybe"}, "off, on, strict"),
        ({"port": 0}, "TCP port"),
        ({"parameters": {"port": 5433}}, "set by hacore per node"),
        ({"parameters": {"primary_conninfo": "host=x"}}, "set by hacore per node"),
        ({"parameters": {"hot_standby": False}}, "must stay on"),
        ({"bin_dir": "/nonexistent"}, "lacks initdb"),
        ({"replication_user": "Bad-Name"}, "lower-case SQL name"),
        ({"prot": 5432}, 'unknown key "prot" in replication; did you mean "port"?'),
        ({"clone_max_rate": "fast"}, "clone_max_rate"),
    ]
    for settings, words in bad:
        with pytest.raises(ConfigError) as info:
            PostgresReplication.validate_settings(settings)
        assert words in str(info.value), (settings, str(info.value))
    # YAML 1.1 turns a bare on/off into booleans.
    assert parse_settings({"synchronous": True}).synchronous == "on"
    assert parse_settings({"synchronous": False}).synchronous == "off"
    assert parse_settings({"synchronous": "strict"}).strict
    with pytest.raises(ConfigError, match="node name"):
        PostgresReplication({}, node_name="bad name", host="127.0.0.1", data_dir=Path("/x"))


def test_plugin_registers_the_backend() -> None:
    registry = load_plugins().registry
    assert registry.replication("postgresql") is PostgresReplication


def test_address_is_the_host_and_the_effective_port(pg_root: Path) -> None:
    def backend(settings: dict[str, Any]) -> PostgresReplication:
        return PostgresReplication(
            settings, node_name="addr", host="127.0.0.5", data_dir=pg_root / "addr"
        )

    assert backend({}).address() == ("127.0.0.5", 5432)
    assert backend({"port": 6543}).address() == ("127.0.0.5", 6543)


# -------------------------------------------------------------------------------------------
# Bootstrap, clone, streaming, status


def test_bootstrap_makes_a_replication_ready_primary(primary: PostgresReplication) -> None:
    assert primary.is_initialized()
    settings = dict(
        query(
            primary,
            "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
            (
                [
                    "data_checksums",
                    "wal_log_hints",
                    "hot_standby",
                    "wal_level",
                    "port",
                    "cluster_name",
                    "listen_addresses",
                ],
            ),
        )
    )
    assert settings == {
        "data_checksums": "on",
        "wal_log_hints": "on",
        "hot_standby": "on",
        "wal_level": "replica",
        "port": str(primary.config.port),
        "cluster_name": "p1",
        "listen_addresses": "127.0.0.2",
    }
    assert scalar(primary, "SELECT rolreplication FROM pg_roles WHERE rolname = 'replicator'")
    assert scalar(primary, "SELECT to_regclass('hacore.leadership') IS NOT NULL")
    # Node-local settings are outside the data directory; the data dir only includes them.
    main_conf = (primary.layout.pgdata / "postgresql.conf").read_text()
    assert main_conf.rstrip().endswith(INCLUDE_LINE)
    assert "port = '" in primary.layout.node_conf.read_text()
    assert not primary.layout.node_conf.is_relative_to(primary.layout.pgdata)
    with pytest.raises(ReplicationError, match="already holds a database"):
        primary.bootstrap(replication_password=PASSWORD, allowed_hosts=[])


def test_clone_reports_monotonic_progress(standby: Standby) -> None:
    calls = standby.progress
    assert calls, "no progress was reported"
    assert all(total > 0 and 0 <= done <= total for done, total in calls), calls
    dones = [done for done, _ in calls]
    assert dones == sorted(dones), calls
    assert calls[-1][0] == calls[-1][1], "the last report must say the copy is complete"
    assert leftovers(standby.node) == []


def test_a_clone_holds_no_backup_manifest(standby: Standby) -> None:
    """The copy is made without one: a standby never reads it, and its checksums cost the
    source CPU the copy needs."""
    assert not (standby.node.layout.pgdata / "backup_manifest").exists()


def test_rows_written_on_the_primary_reach_the_standby(
    primary: PostgresReplication, standby: Standby
) -> None:
    note = f"row-{secrets.token_hex(4)}"
    insert(primary, note)
    wait_replicated(standby.node, note)
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        insert(standby.node, "refused")


def test_status_reports_roles_positions_and_standbys(
    primary: PostgresReplication, standby: Standby
) -> None:
    insert(primary, "status")
    target = primary.status().position
    assert target is not None
    wait_for(
        lambda: (standby.node.status().position or 0) >= target,
        WAIT,
        what="the standby to catch up",
    )
    # the standby first: the primary writes WAL of its own (a running-xacts record every
    # 15 s), so a standby read after the primary may already be past what it showed
    s = standby.node.status()
    p = primary.status()
    assert (p.running, p.role, p.writable, p.timeline, p.following) == (
        True,
        "primary",
        True,
        1,
        None,
    )
    assert (s.running, s.role, s.writable, s.timeline, s.following) == (
        True,
        "standby",
        False,
        1,
        "p1",
    )
    assert isinstance(p.position, int) and isinstance(s.position, int)
    assert 0 < s.position <= p.position
    [seen] = [sb for sb in p.standbys if sb.name == "s1"]
    assert seen.state == "streaming"
    assert seen.lag_bytes is not None and seen.lag_bytes >= 0
    assert not p.needs_rewind and not s.needs_rewind


def test_stopped_standby_restarts_where_it_was(
    primary: PostgresReplication, standby: Standby
) -> None:
    node = standby.node
    node.stop()
    node.stop()  # idempotent
    assert node.status().role == "stopped" and not node.status().running
    insert(primary, "while-stopped")
    node.start()
    wait_following(node, "p1")
    wait_replicated(node, "while-stopped")


def test_fencing_token_round_trip(primary: PostgresReplication, standby: Standby) -> None:
    base = (primary.fencing_token() or 0) + 10
    primary.record_fencing_token(base)
    assert primary.fencing_token() == base
    wait_for(lambda: standby.node.fencing_token() == base, WAIT, what="token on the standby")
    with pytest.raises(ReplicationError, match=f"already holds token {base}"):
        primary.record_fencing_token(base - 1)
    primary.record_fencing_token(base + 1)
    assert primary.fencing_token() == base + 1
    with pytest.raises(ReplicationError, match="not writable"):
        standby.node.record_fencing_token(base + 5)


def _commit_in_background(node: PostgresReplication, note: str) -> tuple[threading.Thread, Any]:
    conn = connect(node)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            conn.execute("INSERT INTO items (note) VALUES (%s)", (note,))
            outcome["done"] = True
        except psycopg.Error as err:
            outcome["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, (conn, outcome)


def _sync_rep_waiters(node: PostgresReplication) -> int:
    return int(scalar(node, "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"))


def test_synchronous_modes(primary: PostgresReplication, standby: Standby) -> None:
    try:
        # Non-strict never names a standby that does not stream: commits go through.
        primary.set_synchronous(["ghost"], strict=False)
        assert scalar(primary, "SHOW synchronous_standby_names") == ""
        insert(primary, "async-fallback")

        primary.set_synchronous(["s1", "ghost"], strict=False)
        assert scalar(primary, "SHOW synchronous_standby_names") == 'ANY 1 ("s1")'
        insert(primary, "quorum-commit")
        wait_for(
            lambda: any(sb.name == "s1" and sb.sync for sb in primary.status().standbys),
            WAIT,
            what="s1 to be a quorum standby",
        )
        [s1] = [sb for sb in primary.status().standbys if sb.name == "s1"]
        assert s1.sync_state == "quorum"

        # Strict: the named standby does not stream, so a commit waits for it.
        primary.set_synchronous(["ghost"], strict=True)
        thread, (conn, outcome) = _commit_in_background(primary, "strict-wait")
        try:
            wait_for(lambda: _sync_rep_waiters(primary) > 0, WAIT, what="a commit in SyncRep")
            assert thread.is_alive() and not outcome, "the commit did not wait"
        finally:
            # A cancelled synchronous commit stays committed locally (with a warning).
            conn.cancel_safe()
            thread.join(30)
            conn.close()
        assert not thread.is_alive()
    finally:
        primary.set_synchronous([], strict=False)
    assert scalar(primary, "SHOW synchronous_standby_names") == ""


def test_strict_primary_waits_for_a_standby_from_the_start(nodes: Nodes) -> None:
    # Bootstrap itself must not wait: no standby can exist yet.
    node = nodes.make("st", synchronous="strict")
    node.bootstrap(replication_password=PASSWORD, allowed_hosts=[])
    with connect(node, options="-c synchronous_commit=local") as conn:
        conn.execute("CREATE TABLE items (id serial PRIMARY KEY, note text)")
    thread, (conn, outcome) = _commit_in_background(node, "waits-for-standby")
    try:
        wait_for(lambda: _sync_rep_waiters(node) > 0, WAIT, what="a commit in SyncRep")
        standby = nodes.make("st-standby")
        node.allow_member("st-standby", standby.host)
        standby.clone(source_of(node))
        assert thread.is_alive() and not outcome, "a copy in progress confirmed a commit"
        standby.start()
        wait_following(standby, "st")
        assert thread.is_alive() and not outcome, "an unnamed standby confirmed a commit"
        node.set_synchronous(["st-standby"], strict=True)
        thread.join(WAIT)
        assert outcome == {"done": True}
        # The copy started while that transaction still looked running; the standby learns it
        # ended from the next running-xacts record (a checkpoint writes one; else in 15 s).
        query(node, "CHECKPOINT")
        wait_replicated(standby, "waits-for-standby")
        [seen] = node.status().standbys
        assert (seen.name, seen.sync_state) == ("st-standby", "quorum")
    finally:
        if thread.is_alive():
            conn.cancel_safe()
            thread.join(30)
        conn.close()


# -------------------------------------------------------------------------------------------
# Clone failures leave the node as it was.


def test_clone_with_a_wrong_password_changes_nothing(
    nodes: Nodes, primary: PostgresReplication
) -> None:
    fresh = nodes.make("fresh")
    primary.allow_member("fresh", fresh.host)
    with pytest.raises(ReplicationError, match="refused the password") as info:
        fresh.clone(source_of(primary, password="wrong"))
    assert "p1 (127.0.0.2:" in str(info.value)
    assert not fresh.is_initialized()
    assert leftovers(fresh) == []

    old = nodes.make("old")
    primary.allow_member("old", old.host)
    old.clone(source_of(primary))
    marker = plant_marker(old)
    inode = old.layout.pgdata.stat().st_ino
    with pytest.raises(ReplicationError, match="refused the password"):
        old.clone(source_of(primary, password="wrong"))
    assert marker_of(old) == marker and old.layout.pgdata.stat().st_ino == inode
    assert leftovers(old) == []

    # Interrupted by its caller mid-copy (rate-limited, so there is a "mid").
    class Interrupted(Exception):
        pass

    def interrupt(done: int, total: int) -> None:
        raise Interrupted

    slow = nodes.again(old, clone_max_rate="2M")
    with pytest.raises(Interrupted):
        slow.clone(source_of(primary), progress=interrupt)
    assert marker_of(old) == marker and old.layout.pgdata.stat().st_ino == inode
    assert leftovers(old) == []
    tmp = str(old.layout.clone_tmp)
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit() and tmp in _cmdline(p)], (
        "pg_basebackup still runs"
    )


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_clone_from_a_source_that_dies_midway_keeps_old_data(
    nodes: Nodes, primary: PostgresReplication
) -> None:
    # The source admits nobody but itself until its members are allowed.
    source = new_cluster(nodes, "k", host="127.0.0.3")
    query(
        source,
        "CREATE TABLE big AS SELECT g, repeat(md5(g::text), 6) AS pad"
        " FROM generate_series(1, 150000) AS g",
    )
    victim = nodes.make("victim")
    primary.allow_member("victim", victim.host)
    victim.clone(source_of(primary))
    marker = plant_marker(victim)
    inode = victim.layout.pgdata.stat().st_ino

    with pytest.raises(ReplicationError, match=r"does not let this host connect"):
        victim.clone(source_of(source))
    assert marker_of(victim) == marker

    source.allow_member("victim", victim.host)
    slow = nodes.again(victim, clone_max_rate="4M")
    seen: list[tuple[int, int]] = []

    def kill_source(done: int, total: int) -> None:
        seen.append((done, total))
        if len(seen) == 1:
            crash(source)

    with pytest.raises(ReplicationError, match=r"k \(127\.0\.0\.3:\d+\)") as info:
        slow.clone(source_of(source), progress=kill_source)
    assert seen and seen[0][0] < seen[0][1], f"the copy was not cut midway: {seen}"
    assert "clone failed" in str(info.value)
    assert marker_of(victim) == marker and victim.layout.pgdata.stat().st_ino == inode
    assert leftovers(victim) == []
    # The old data still works as it did: a standby of p1.
    victim.start()
    wait_following(victim, "p1")


def _copies_into(pgdata: Path) -> list[int]:
    """pids of the pg_basebackup processes writing into ``pgdata``."""
    found = []
    for proc in Path("/proc").iterdir():
        argv = _cmdline(proc).split()
        if proc.name.isdigit() and any("pg_basebackup" in a for a in argv) and str(pgdata) in argv:
            found.append(int(proc.name))
    return found


def test_a_clone_into_an_empty_node_killed_midway_leaves_it_empty(
    nodes: Nodes, primary: PostgresReplication
) -> None:
    """A node with no data clones straight into its data directory; its cloner killed
    half-way (the agent's process, and the copy) leaves a directory the next look recognises
    as an unfinished copy and removes: the node is empty again, and clones anew."""
    node = nodes.make("cut")
    primary.allow_member("cut", node.host)
    slow = nodes.again(node, clone_max_rate="2M")
    pgdata = node.layout.pgdata
    child = os.fork()
    if child == 0:  # the cloner, in a process of its own so that it can be killed
        try:
            slow.clone(source_of(primary))
        finally:
            os._exit(0)
    try:
        wait_for(lambda: _copies_into(pgdata), WAIT, 0.05, what="the copy running")
        wait_for(lambda: sum(1 for _ in pgdata.rglob("*")) > 50, WAIT, 0.05, what="copy progress")
        # the copy goes straight into pgdata; while its cloner lives it is left alone, and
        # it is not a database yet
        assert node.layout.cloning.exists()
        assert not node.is_initialized() and pgdata.exists()
        assert not node.layout.clone_tmp.exists()
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        for pid in _copies_into(pgdata):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
    wait_for(lambda: not _copies_into(pgdata), WAIT, 0.05, what="the copy gone")
    assert node.layout.cloning.exists() and any(pgdata.iterdir())

    assert not node.is_initialized()
    assert not pgdata.exists() and leftovers(node) == []
    node.clone(source_of(primary))
    assert node.is_initialized() and leftovers(node) == []
    node.start()
    wait_following(node, "p1")
    insert(primary, "after-cut")
    wait_replicated(node, "after-cut")


def test_start_failure_reports_the_server_log(nodes: Nodes) -> None:
    node = nodes.make("badconf", parameters={**TEST_PARAMETERS, "work_mem": "lots"})
    with pytest.raises(ReplicationError, match="failed to start") as info:
        node.bootstrap(replication_password=PASSWORD, allowed_hosts=[])
    assert 'invalid value for parameter "work_mem"' in str(info.value)
    assert not node.is_initialized()
    assert node.postmaster_pid() is None


# -------------------------------------------------------------------------------------------
# Members


def _hba_addresses(node: PostgresReplication) -> set[str]:
    rows = query(node, "SELECT address FROM pg_hba_file_rules WHERE type = 'host'")
    return {row[0] for row in rows}


def test_drop_member_removes_its_slot_and_access(
    nodes: Nodes, primary: PostgresReplication
) -> None:
    member = nodes.make("d1")
    primary.allow_member("d1", "127.0.0.9")
    primary.allow_member("other", member.host)
    wait_for(lambda: "127.0.0.9" in _hba_addresses(primary), WAIT, what="the hba entry")
    member.clone(source_of(primary))
    slot = "hacore_d1"
    assert query(primary, "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,))

    primary.drop_member("d1")
    assert not query(primary, "SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,))
    wait_for(lambda: "127.0.0.9" not in _hba_addresses(primary), WAIT, what="hba entry gone")
    assert "127.0.0.1" in _hba_addresses(primary), "other members keep their access"
    primary.drop_member("other")


# -------------------------------------------------------------------------------------------
# Failover: fence the primary, promote a standby, re-point the other, rewind the old primary.


@attrs.frozen
class Failover:
    a: PostgresReplication
    b: PostgresReplication
    c: PostgresReplication
    c_pid: int
    session_error: Exception | None
    connect_error: Exception | None


@pytest.fixture(scope="module")
def failover(pg_root: Path) -> Iterator[Failover]:
    made = Nodes(pg_root)
    try:
        a = new_cluster(made, "a", host="127.0.0.3", superuser_password=SUPERUSER_PASSWORD)
        b = new_standby(made, "b", a)
        c = new_standby(made, "c", a)
        insert(a, "before-failover")
        wait_replicated(b, "before-failover")
        wait_replicated(c, "before-failover")

        client = connect(a)
        client.execute("SELECT 1")
        a.fence()
        session_error = connect_error = None
        try:
            client.execute("SELECT 1")
        except psycopg.Error as err:
            session_error = err
        client.close()
        try:
            insert(a, "after-fence")
        except psycopg.Error as err:
            connect_error = err

        b.promote(timeout=WAIT)
        c_pid = c.postmaster_pid()
        assert c_pid is not None
        c.follow(source_of(b))
        yield Failover(a, b, c, c_pid, session_error, connect_error)
    finally:
        made.stop_all()


def test_fence_cuts_sessions_and_refuses_writes(failover: Failover) -> None:
    a = failover.a
    assert isinstance(failover.session_error, psycopg.OperationalError)
    assert isinstance(failover.connect_error, psycopg.OperationalError)
    # It comes back read-only, and only a rewind lets it follow the new primary.
    a.start()
    status = a.status()
    assert (status.role, status.writable, status.needs_rewind) == ("standby", False, True)
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        insert(a, "after-fence")
    with pytest.raises(ReplicationError, match="rewind it"):
        a.follow(source_of(failover.b))


def test_promote_makes_the_standby_writable(failover: Failover) -> None:
    status = failover.b.status()
    assert (status.role, status.writable, status.timeline) == ("primary", True, 2)
    insert(failover.b, "on-new-primary")


def test_follow_switches_upstream_without_restart(failover: Failover) -> None:
    b, c = failover.b, failover.c
    wait_following(c, "b")
    assert c.postmaster_pid() == failover.c_pid, "follow restarted the server"
    insert(b, "followed")
    wait_replicated(c, "followed")
    assert c.status().timeline == 2
    assert query(b, "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'hacore_c'")


def test_rewind_brings_the_fenced_primary_back_as_standby(failover: Failover) -> None:
    a, b = failover.a, failover.b
    inode = a.layout.pgdata.stat().st_ino
    b.allow_member("a", "127.0.0.3")
    a.rewind(source_of(b))
    wait_following(a, "b")
    insert(b, "after-rewind")
    wait_replicated(a, "after-rewind")
    assert has_note(a, "before-failover")
    assert a.layout.pgdata.stat().st_ino == inode, "rewound in place, not re-cloned"
    assert not a.status().needs_rewind
    # The superuser password set at bootstrap works over TCP from a member's address.
    tcp = {"host": a.host, "port": a.config.port, "user": "postgres", "dbname": "postgres"}
    with psycopg.connect(**tcp, password=SUPERUSER_PASSWORD, connect_timeout=10) as conn:
        assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(**tcp, password="wrong", connect_timeout=10)


def test_rewind_undoes_writes_made_after_a_missed_fence(failover: Failover) -> None:
    # c becomes primary while b, never fenced, keeps accepting writes: a timeline fork.
    b, c = failover.b, failover.c
    insert(b, "before-fork")
    wait_replicated(c, "before-fork")
    c.promote(timeout=WAIT)
    insert(b, "divergent")
    insert(c, "after-fork")
    inode = b.layout.pgdata.stat().st_ino

    c.allow_member("b", b.host)
    b.rewind(source_of(c))
    wait_following(b, "c")
    wait_replicated(b, "after-fork")
    assert not has_note(b, "divergent")
    assert has_note(b, "before-fork")
    assert b.layout.pgdata.stat().st_ino == inode, "rewound in place, not re-cloned"
    assert b.status().timeline == c.status().timeline == 3


def test_rewind_after_a_crash_of_the_old_primary(
    nodes: Nodes, caplog: pytest.LogCaptureFixture
) -> None:
    # The old primary dies by SIGKILL holding a write its standby never received; the standby
    # is promoted and written to. pg_rewind refuses data that was not shut down cleanly, so
    # without crash recovery first this would fall back to a re-clone.
    a = new_cluster(nodes, "a")
    b = new_standby(nodes, "b", a)
    insert(a, "before-crash")
    wait_replicated(b, "before-crash")
    b.stop()
    insert(a, "divergent")
    inode = a.layout.pgdata.stat().st_ino
    crash(a)
    assert a.layout.pid_file.exists(), "a SIGKILLed postmaster leaves its pid file"
    b.start()
    b.promote(timeout=WAIT)
    insert(b, "after-crash")

    b.allow_member("a", a.host)
    with caplog.at_level(logging.INFO, logger="hacore_plugins.postgresql"):
        a.rewind(source_of(b))
    wait_following(a, "b")
    wait_replicated(a, "after-crash")
    assert has_note(a, "before-crash")
    assert not has_note(a, "divergent"), "the write b never had survived: no rewind happened"
    # A re-clone swaps a new data directory in (pg_rewind removes files the source lacks, so
    # a marker file would not tell the two apart).
    assert a.layout.pgdata.stat().st_ino == inode, "re-cloned instead of rewound"
    assert "cloning it again" not in caplog.text
    assert "pg_rewind from b" in caplog.text
    assert leftovers(a) == []
    assert not a.status().needs_rewind


def test_start_ignores_locks_left_by_a_zombie_postmaster(nodes: Nodes) -> None:
    # A SIGKILLed postmaster stays a zombie until its parent reaps it; its pid still answers
    # kill(pid, 0), so PostgreSQL would take both of its lock files for a live server's.
    node = new_cluster(nodes, "zz")
    port = node.config.port
    node.stop()
    # The server's user: kill(pid, 0) on another user's process fails, which it reads as dead.
    zombie = subprocess.Popen(["true"], **node.user.popen_kwargs())
    try:
        wait_for(
            lambda: (
                Path(f"/proc/{zombie.pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
            ),
            30,
            what="a zombie process",
        )
        socket_lock = node.layout.run_dir / f".s.PGSQL.{port}.lock"
        for lock in (node.layout.pid_file, socket_lock):
            lock.write_text(f"{zombie.pid}\n{node.layout.pgdata}\n")
        node.start()
        assert node.postmaster_pid() not in (None, zombie.pid)
        assert scalar(node, "SELECT 1") == 1
    finally:
        zombie.wait()


def test_rewind_falls_back_to_a_fresh_clone(nodes: Nodes, primary: PostgresReplication) -> None:
    # A node from another cluster cannot be rewound from p1: it must be cloned again.
    stranger = new_cluster(nodes, "z")
    insert(stranger, "stranger-row")
    old_inode = stranger.layout.pgdata.stat().st_ino
    primary.allow_member("z", stranger.host)
    try:
        stranger.rewind(source_of(primary))
        wait_following(stranger, "p1")
        assert stranger.layout.pgdata.stat().st_ino != old_inode
        assert not has_note(stranger, "stranger-row")
        assert leftovers(stranger) == []
        note = f"row-{secrets.token_hex(4)}"
        insert(primary, note)
        wait_replicated(stranger, note)
    finally:
        stop_by_pid(stranger)
        primary.drop_member("z")


def test_password_changes_at_the_same_time_all_succeed(primary: PostgresReplication) -> None:
    """A removal's rotation and the agent loop's re-apply of the same generation can run at
    once (two threads of one agent): two concurrent ALTER ROLE of one role make PostgreSQL
    fail one with "tuple concurrently updated", which surfaced as an internal error of
    `nodes remove`."""
    role = "hacore_pwtest"
    with primary._local() as conn:
        conn.autocommit = True
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
            conn.execute(f"CREATE ROLE {role} LOGIN")
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def change(i: int) -> None:
        start.wait()
        try:
            for round_ in range(5):
                assert primary.apply_password(role, f"secret-{i}-{round_}")
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=change, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
