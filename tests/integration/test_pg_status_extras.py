"""What the PostgreSQL status adds for the metrics (issue 13.8), on real servers: each
standby's replay lag in seconds, and ``pending_restart`` once a setting needs a restart."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pg_admin import query

from hacore.backends.replication import ReplicationSource
from hacore.testing.procs import free_port, wait_for
from hacore_plugins.postgresql.backend import PostgresReplication
from hacore_plugins.postgresql.settings import default_bin_dir

pytestmark = pytest.mark.skipif(default_bin_dir() is None, reason="no PostgreSQL binaries")

PASSWORD = "status-extras"
PARAMETERS = {"shared_buffers": "16MB", "max_connections": 20, "fsync": "off"}


@pytest.fixture
def root() -> Iterator[Path]:
    # pytest's own temp dirs are 0700 root: the postgres user could not enter them.
    path = Path(tempfile.mkdtemp(prefix="hacore-pgx-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make(root: Path, name: str) -> PostgresReplication:
    return PostgresReplication(
        {"port": free_port(), "parameters": PARAMETERS},
        node_name=name,
        host="127.0.0.1",
        data_dir=root / name,
    )


def test_lag_seconds_and_pending_restart(root: Path) -> None:
    primary, standby = make(root, "p1"), make(root, "s1")
    try:
        primary.bootstrap(replication_password=PASSWORD, allowed_hosts=[])
        primary.allow_member("s1", standby.host)
        source = ReplicationSource("p1", "127.0.0.1", primary.config.port, "replicator", PASSWORD)
        standby.clone(source)
        standby.start(follow=source)
        wait_for(lambda: standby.status().following == "p1", 120, what="s1 streaming")
        query(primary, "CREATE TABLE t (x int); INSERT INTO t VALUES (1)")

        def seen() -> float | None:
            found = [s for s in primary.status().standbys if s.name == "s1"]
            return found[0].lag_seconds if found and found[0].lag_bytes == 0 else None

        wait_for(lambda: seen() is not None, 120, what="s1 caught up, its replay lag known")
        [row] = [s for s in primary.status().standbys if s.name == "s1"]
        assert row.lag_seconds is not None and 0.0 <= row.lag_seconds < 60.0

        assert primary.status().pending_restart is False
        query(primary, "ALTER SYSTEM SET max_connections = 25")
        query(primary, "SELECT pg_reload_conf()")
        wait_for(lambda: primary.status().pending_restart is True, 60, what="pending_restart shown")
        assert standby.status().pending_restart is False
    finally:
        standby.stop()
        primary.stop()
