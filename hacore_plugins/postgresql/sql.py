"""The SQL the plugin sends, and the words it uses when a connection is refused.

Local administration goes through the node's Unix socket as the database superuser (peer
authentication, mapped from root and the server's OS user). Anything sent to another node
goes over TCP as the replication user, with the password passed in memory, never on a
command line.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg import sql

from hacore.backends.records import TlsFiles
from hacore.backends.replication import ReplicationSource
from hacore.errors import ReplicationError
from hacore_plugins.postgresql.layout import Layout
from hacore_plugins.postgresql.settings import SUPERUSER, PgSettings
from hacore_plugins.postgresql.tls_files import hacore_options

Conn = psycopg.Connection[tuple[Any, ...]]

#: Functions pg_rewind calls on its source; granted so the replication user can run it.
REWIND_FUNCTIONS = (
    "pg_catalog.pg_ls_dir(text, boolean, boolean)",
    "pg_catalog.pg_stat_file(text, boolean)",
    "pg_catalog.pg_read_binary_file(text)",
    "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)",
)

LEADERSHIP_TABLE = """
CREATE TABLE IF NOT EXISTS hacore.leadership (
    id integer PRIMARY KEY CHECK (id = 1),
    token bigint NOT NULL,
    node text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
)"""

#: A standby that has not replied for this long is not counted as streaming, though its
#: walsender still says so (until wal_sender_timeout, 60 s): one cut off silently must not
#: stay the synchronous standby and hold every commit. Standbys reply every second
#: (``wal_receiver_status_interval`` in the plugin's defaults).
STANDBY_SILENCE_S = 4

#: ``pg_stat_replication r``'s state, with a silent standby's shown as "silent".
STANDBY_STATE = (
    "CASE WHEN r.state = 'streaming' AND r.reply_time < now() - "
    f"interval '{STANDBY_SILENCE_S} seconds' THEN 'silent' ELSE r.state END"
)

#: Everything ``status`` reports, in one statement (one round trip).
STATUS = """
SELECT pg_is_in_recovery(),
       current_setting('default_transaction_read_only') = 'on',
       CASE WHEN pg_is_in_recovery()
            THEN greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) - '0/0'::pg_lsn
            ELSE pg_current_wal_lsn() - '0/0'::pg_lsn END,
       CASE WHEN pg_is_in_recovery() THEN NULL
            ELSE pg_walfile_name(pg_current_wal_lsn()) END,
       (SELECT timeline_id FROM pg_control_checkpoint()),
       w.received_tli, w.sender_host, w.sender_port, w.status,
       (SELECT coalesce(json_agg(json_build_object(
                   'name', r.application_name, 'state', {state}, 'sync_state', r.sync_state,
                   'lag', (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                                ELSE pg_current_wal_lsn() END) - r.replay_lsn,
                   'lag_s', extract(epoch FROM r.replay_lag))
                   ORDER BY r.application_name), '[]'::json)
          FROM pg_stat_replication r),
       EXISTS (SELECT 1 FROM pg_settings WHERE pending_restart)
  FROM (SELECT 1) AS one LEFT JOIN pg_stat_wal_receiver w ON true
""".replace("{state}", STANDBY_STATE)


def connect_local(
    layout: Layout, settings: PgSettings, *, dbname: str | None = None, timeout: int = 10
) -> Conn:
    try:
        return psycopg.connect(
            host=str(layout.run_dir),
            port=settings.port,
            user=SUPERUSER,
            dbname=dbname or settings.database,
            connect_timeout=timeout,
            autocommit=True,
            application_name="hacore",
            # hacore's own writes (setup, fencing token) must never wait for a standby: in
            # strict synchronous mode none may be streaming yet.
            options="-c synchronous_commit=local",
        )
    except psycopg.Error as err:
        raise ReplicationError(
            f"cannot connect to the local PostgreSQL: {first_line(err)}"
        ) from None


def connect_source(
    source: ReplicationSource, dbname: str, *, timeout: int = 10, tls: TlsFiles | None = None
) -> Conn:
    secure: dict[str, Any] = hacore_options(tls) if tls is not None else {}
    try:
        return psycopg.connect(
            host=source.host,
            port=source.port,
            user=source.user,
            password=source.password,
            dbname=dbname,
            connect_timeout=timeout,
            autocommit=True,
            application_name="hacore",
            **secure,
        )
    except psycopg.Error as err:
        raise ReplicationError(explain(str(err), source)) from None


def describe(source: ReplicationSource) -> str:
    return f"{source.node_name} ({source.host}:{source.port})"


def first_line(err: object) -> str:
    text = str(err).strip()
    for line in text.splitlines():
        line = line.strip()
        if line:
            return line.split("failed: ", 1)[-1] if "connection to server" in line else line
    return text or type(err).__name__


def explain(text: str, source: ReplicationSource) -> str:
    """Turn a libpq or tool message about ``source`` into a sentence a person can act on."""
    where = describe(source)
    if "password authentication failed" in text:
        return f"{where} refused the password of user {source.user!r}: the password is wrong"
    if "requires a valid client certificate" in text:
        return f"{where} wants a client certificate from the cluster CA: this node sent none"
    if "unknown ca" in text or "bad certificate" in text or "certificate unknown" in text:
        return f"{where} refused this node's certificate: it was not signed by the cluster CA"
    if "certificate verify failed" in text or "does not match host name" in text:
        return (
            f"{where} is not who it claims: its certificate is not from the cluster CA or does "
            f"not name {source.host} ({last_error_line(text)})"
        )
    if "no pg_hba.conf entry" in text:
        return (
            f"{where} does not let this host connect as {source.user!r} (pg_hba.conf): "
            "allow this member on it first"
        )
    if f'role "{source.user}" does not exist' in text:
        return f"{where} has no user {source.user!r}"
    if "server closed the connection" in text or "could not receive data" in text:
        return f"lost the connection to {where}: {last_error_line(text)}"
    for word in ("Connection refused", "could not connect", "timeout expired", "No route"):
        if word in text:
            return f"cannot reach {where}: {last_error_line(text)}"
    return f"{where}: {last_error_line(text)}"


def last_error_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() or "FATAL" in line]
    line = (errors or lines or [""])[-1]
    return line.split("failed: ", 1)[-1] if "connection to server" in line else line


def create_slot(conn: Conn, slot: str, *, fresh: bool = False) -> int | None:
    """Create physical slot ``slot`` unless it exists; where the new slot keeps WAL from
    (bytes from ``0/0``), None when it was there already.

    ``fresh`` replaces an unused slot: a new copy needs WAL from now on, and an old slot may
    have been invalidated (``max_slot_wal_keep_size``) while its node was away. A physical
    slot keeps the WAL from the redo point of the source's last checkpoint on.
    """
    if fresh:
        conn.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
            " WHERE slot_name = %s AND NOT active",
            (slot,),
        )
    row = conn.execute(
        "SELECT (pg_create_physical_replication_slot(%s, true)).lsn - '0/0'::pg_lsn"
        " WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = %s)",
        (slot, slot),
    ).fetchone()
    return int(row[0]) if row is not None else None


def drop_slot(conn: Conn, slot: str, *, timeout: float = 15.0) -> bool:
    """Drop ``slot``, cutting the walsender that holds it; True if it existed."""
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone()
        if row is None:
            return False
        if row[0] is not None:
            conn.execute("SELECT pg_terminate_backend(%s)", (row[0],))
        try:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            return True
        except psycopg.errors.UndefinedObject:
            return False
        except psycopg.errors.ObjectInUse:
            # The standby reconnected between the two statements.
            if time.monotonic() > deadline:
                raise ReplicationError(f"replication slot {slot} stays in use") from None
            time.sleep(0.1)


def encrypted_password(conn: Conn, password: str, user: str) -> str:
    """The SCRAM verifier, computed by libpq, so the clear password never reaches the server."""
    verifier = conn.pgconn.encrypt_password(password.encode(), user.encode(), b"scram-sha-256")
    return verifier.decode()


def set_password(conn: Conn, user: str, password: str) -> None:
    conn.execute(
        sql.SQL("ALTER ROLE {} PASSWORD {}").format(
            sql.Identifier(user), sql.Literal(encrypted_password(conn, password, user))
        )
    )


def setup_cluster(conn: Conn, settings: PgSettings, replication_password: str) -> None:
    """Roles and database, at bootstrap; run as the superuser on the new primary."""
    user = settings.replication_user
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,)).fetchone()
    if exists is None:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN REPLICATION").format(sql.Identifier(user)))
    set_password(conn, user, replication_password)
    # CHECKPOINT on a new primary before pg_rewind, without being a superuser.
    conn.execute(sql.SQL("GRANT pg_checkpoint TO {}").format(sql.Identifier(user)))
    if settings.superuser_password:
        set_password(conn, SUPERUSER, settings.superuser_password)
    found = conn.execute(
        "SELECT 1 FROM pg_database WHERE datname = %s", (settings.database,)
    ).fetchone()
    if found is None:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(settings.database)))


def setup_database(conn: Conn, settings: PgSettings) -> None:
    """Grants and the hacore schema, inside ``settings.database``."""
    user = sql.Identifier(settings.replication_user)
    for function in REWIND_FUNCTIONS:
        conn.execute(sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(sql.SQL(function), user))
    conn.execute("CREATE SCHEMA IF NOT EXISTS hacore")
    conn.execute(LEADERSHIP_TABLE)
