"""Snapshots of the database: a logical dump on the active, loaded into a new primary.

Logical (``pg_dumpall --globals-only`` for the roles, then one ``pg_dump`` per database, plain
SQL) rather than a physical copy: a dump loads into a newer PostgreSQL major, which an upgrade
needs (issue 14 point 2), and it leaves out what belongs to the old cluster rather than to the
application:

- hacore's own roles (the bootstrap superuser and the replication user): their passwords are
  the cluster's credentials, and the new cluster sets its own;
- the ``hacore`` schema of the configured database (the leadership table and its fencing
  token, which belong to the old cluster's store);
- tablespaces (their paths are the old host's).

A dump runs as the server's OS user through the node's Unix socket (peer authentication: the
cluster's own credentials, none given on the command line). It is consistent per database
(``pg_dump`` reads one snapshot); databases are dumped one after the other.

The files go to ``dump/`` under the backend's home with ``index.json`` saying in which order to
load them and into which database; the core archives that directory as it is.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import ClassVar

from psycopg import sql

from hacore.errors import ReplicationError
from hacore_plugins.postgresql import clone as copying
from hacore_plugins.postgresql import server
from hacore_plugins.postgresql.commands import tail
from hacore_plugins.postgresql.node import PgNode, one
from hacore_plugins.postgresql.settings import SUPERUSER
from hacore_plugins.postgresql.sql import set_password

log = logging.getLogger(__name__)

INDEX = "index.json"
_DUMP_TIMEOUT = 6 * 3600.0
_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'


def without_roles(globals_sql: str, roles: set[str]) -> str:
    """``pg_dumpall --globals-only`` output without the statements that create, change or
    grant to ``roles`` (hacore's own, which the new cluster has with its own passwords)."""
    kept = []
    head = re.compile(rf"^(?:CREATE ROLE|ALTER ROLE|COMMENT ON ROLE) ({_IDENT})[ ;]")
    grant = re.compile(rf"^GRANT .* TO ({_IDENT})(?: |;)")
    for line in globals_sql.splitlines():
        found = head.match(line) or grant.match(line)
        if found is not None and _unquote(found.group(1)) in roles:
            continue
        kept.append(line)
    return "\n".join(kept) + "\n"


def _unquote(ident: str) -> str:
    if ident.startswith('"'):
        return ident[1:-1].replace('""', '"')
    return ident


class SnapshotDuties(PgNode):
    """The database side of ``hacore snapshot create`` and ``restore`` (see the module)."""

    #: implements hacore.cluster.snapshot.DatabaseSnapshots
    takes_snapshots: ClassVar[bool] = True

    @property
    def dump_dir(self) -> Path:
        return self.layout.home / "dump"

    def server_version(self) -> str:
        with self._local(dbname="postgres") as conn:
            return str(one(conn, "SHOW server_version")).split()[0]

    def server_major(self) -> int:
        return self.config.major

    def dump_logical(self) -> Path:
        """Dump the running primary into :attr:`dump_dir` (replaced); returns it."""
        with self._local(dbname="postgres") as conn:
            if one(conn, "SELECT pg_is_in_recovery()"):
                raise ReplicationError(f"{self.node_name}'s database is not a primary")
            names = [
                str(row[0])
                for row in conn.execute(
                    "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate "
                    "ORDER BY datname"
                )
            ]
        self.discard_dump()
        self.tools.make_dir(self.dump_dir)
        connection = ["-h", str(self.layout.run_dir), "-p", str(self.config.port), "-U", SUPERUSER]
        raw_globals = self.dump_dir / "globals.raw.sql"
        self._run(
            "pg_dumpall",
            [*connection, "--globals-only", "--no-tablespaces", "-f", str(raw_globals)],
        )
        globals_file = self.dump_dir / "00-globals.sql"
        text = without_roles(raw_globals.read_text(), {SUPERUSER, self.config.replication_user})
        self.tools.write_file(globals_file, text)
        raw_globals.unlink()
        index = [{"file": globals_file.name, "database": "postgres", "create": False}]
        for number, name in enumerate(names, start=1):
            target = self.dump_dir / f"{number:02d}-database.sql"
            exists = name in ("postgres", self.config.database)
            args = [*connection, "-d", name, "--no-tablespaces", "-f", str(target)]
            if name == self.config.database:
                args.append("--exclude-schema=hacore")
            if not exists:
                args.append("--create")
            self._run("pg_dump", args)
            index.append({"file": target.name, "database": name, "create": not exists})
        self.tools.write_file(self.dump_dir / INDEX, json.dumps(index, indent=2) + "\n")
        return self.dump_dir

    def discard_dump(self) -> None:
        copying.remove_tree(self.dump_dir)

    def load_logical(self, dump: Path) -> None:
        """Bootstrap a new primary here and load ``dump`` (a :meth:`dump_logical` directory,
        moved under this backend's home), then stop it: :meth:`adopt_restored` starts it
        as the cluster's primary. Refuses a node that holds a database."""
        self.bootstrap(replication_password=secrets.token_urlsafe(24), allowed_hosts=[])
        try:
            loading = self.layout.home / "dump.load"
            copying.remove_tree(loading)
            shutil.move(str(dump), str(loading))
            self.tools.own(loading, 0o700)
            for entry in loading.iterdir():
                self.tools.own(entry, 0o600)
            index = json.loads((loading / INDEX).read_text())
            connection = [
                "-h",
                str(self.layout.run_dir),
                "-p",
                str(self.config.port),
                "-U",
                SUPERUSER,
            ]
            for item in index:
                database = "postgres" if item["create"] else str(item["database"])
                self._make_room(str(item["database"]), create=bool(item["create"]))
                self._run(
                    "psql",
                    [
                        *connection,
                        "-X",
                        "-q",
                        "-v",
                        "ON_ERROR_STOP=1",
                        "-d",
                        database,
                        "-f",
                        str(loading / os.path.basename(str(item["file"]))),
                    ],
                )
            copying.remove_tree(loading)
        finally:
            server.stop(self.layout, timeout=self.config.stop_timeout)
        log.info("%s: database loaded from a snapshot", self.node_name)

    def adopt_restored(self, replication_password: str) -> None:
        """Start a restored database as this new cluster's primary and give the replication
        user the cluster's password (``cluster start``'s database step)."""
        if self.postmaster_pid() is None:
            self._prepare_data(self.layout.pgdata, standby=False)
            self._start(what="the restored primary")
        with self._local(dbname="postgres") as conn:
            set_password(conn, self.config.replication_user, replication_password)
            if self.config.superuser_password:
                set_password(conn, SUPERUSER, self.config.superuser_password)
        log.info("%s: restored database started as the primary", self.node_name)

    def _make_room(self, name: str, *, create: bool) -> None:
        """A database the old cluster had already (its ``postgres`` or configured one) but
        this node's ``replication.database`` is not: made empty here. One the dump creates
        must not exist yet (this node's configured database is another one's name)."""
        with self._local(dbname="postgres") as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            exists = found.fetchone() is not None
            if not create and not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        if create and exists:
            raise ReplicationError(
                f"the snapshot creates database {name}, which this node's "
                f"replication.database makes already: give replication.database the old "
                "cluster's value, then restore again"
            )

    def _run(self, tool: str, args: list[str]) -> None:
        if not (self.config.bin_dir / tool).is_file():
            raise ReplicationError(f"{tool} is not in {self.config.bin_dir}: install it")
        result = self.tools.run(tool, args, timeout=_DUMP_TIMEOUT)
        if result.returncode != 0:
            raise ReplicationError(f"{tool} failed: {tail(result.stdout + result.stderr)}")
