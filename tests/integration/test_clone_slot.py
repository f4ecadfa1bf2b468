"""A clone makes its node's replication slot on the source while the copy runs.

Real servers: a primary on 127.0.0.2 with some 30 MB of rows, copied at a limited rate so the
copy lasts a while, into nodes on 127.0.0.1. The slot is made on a connection of its own; the
tests hold it back (until the copy runs, until the copy has ended) by wrapping the method
that makes it, and look at ``pg_replication_slots`` on the primary.
"""

from __future__ import annotations

import itertools
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pg_admin import query, stop_by_pid

from hacore.backends.replication import ReplicationSource
from hacore.errors import ReplicationError
from hacore.testing.procs import free_port, wait_for
from hacore_plugins.postgresql.backend import PostgresReplication
from hacore_plugins.postgresql.config_files import slot_name
from hacore_plugins.postgresql.settings import default_bin_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(default_bin_dir() is None, reason="no PostgreSQL binaries installed"),
]

PASSWORD = f"repl-{secrets.token_hex(8)}"
PARAMETERS = {"shared_buffers": "16MB", "max_connections": 30, "fsync": "off"}
#: a database session of the replication user: the slot's connection (pg_basebackup's and
#: the standby's are replication connections, logged otherwise)
SLOT_SESSION = re.compile(
    r"connection authorized: user=replicator database=\S+ application_name=hacore"
)
WAIT = 60.0
#: seconds the wrapped slot maker waits for the copy to start (or end)
HOLD = 20.0
_names = itertools.count()


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    # pytest's own temp dirs are 0700 root: the postgres user could not enter them.
    path = Path(tempfile.mkdtemp(prefix="hacore-pg-slot-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def made(root: Path) -> Iterator[list[PostgresReplication]]:
    nodes: list[PostgresReplication] = []
    yield nodes
    for node in nodes:
        stop_by_pid(node)


def make(
    made: list[PostgresReplication], root: Path, name: str, host: str = "127.0.0.1", **extra: Any
) -> PostgresReplication:
    node = PostgresReplication(
        {"port": free_port(host), "parameters": PARAMETERS, **extra},
        node_name=name,
        host=host,
        data_dir=root / f"{name}-{next(_names)}",
    )
    made.append(node)
    return node


@pytest.fixture(scope="module")
def primary(made: list[PostgresReplication], root: Path) -> PostgresReplication:
    node = make(
        made, root, "sp", host="127.0.0.2", parameters={**PARAMETERS, "log_connections": "on"}
    )
    node.bootstrap(replication_password=PASSWORD, allowed_hosts=[])
    query(
        node,
        "CREATE TABLE big AS SELECT g, repeat(md5(g::text), 6) AS pad"
        " FROM generate_series(1, 150000) AS g",
    )
    return node


def source_of(node: PostgresReplication) -> ReplicationSource:
    return ReplicationSource(node.node_name, node.host, node.config.port, "replicator", PASSWORD)


def slot_of(primary: PostgresReplication, node: PostgresReplication) -> list[Any]:
    return query(
        primary,
        "SELECT restart_lsn::text, active FROM pg_replication_slots WHERE slot_name = %s",
        (slot_name(node.node_name),),
    )


def copies_into(pgdata: Path) -> bool:
    """A pg_basebackup writes into ``pgdata`` now."""
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"pg_basebackup" in a for a in argv) and str(pgdata).encode() in argv:
            return True
    return False


def held_back(node: PostgresReplication, until: Any) -> list[str]:
    """Wrap the node's slot maker, once: it first waits for ``until()``; what it saw is
    listed."""
    create = node._create_source_slot
    seen: list[str] = []

    def wrapped(source: ReplicationSource, *, fresh: bool = False, timeout: int = 10) -> Any:
        node._create_source_slot = create  # type: ignore[method-assign]
        wait_for(until, HOLD, 0.02, what="the moment to make the slot")
        seen.append("copying" if copies_into(node.layout.pgdata) else "not copying")
        return create(source, fresh=fresh, timeout=timeout)

    node._create_source_slot = wrapped  # type: ignore[method-assign]
    return seen


def test_the_copy_starts_before_the_slot_exists(
    made: list[PostgresReplication], root: Path, primary: PostgresReplication
) -> None:
    """The slot is made while the copy runs, not before it: the clone does not wait for a
    connection to the source before copying; the slot is there when the clone returns, and
    the standby streams through it."""
    node = make(made, root, "early", clone_max_rate="8M")
    primary.allow_member(node.node_name, node.host)
    seen = held_back(node, lambda: copies_into(node.layout.pgdata))
    node.clone(source_of(primary))
    assert seen == ["copying"]
    assert slot_of(primary, node), "the clone returned without its slot on the source"
    node.start(follow=source_of(primary))
    wait_for(lambda: slot_of(primary, node)[0][1] is True, WAIT, what="the slot in use")
    assert node.status().following == primary.node_name


def test_a_slot_made_after_the_copy_and_a_checkpoint_fails_the_clone(
    made: list[PostgresReplication], root: Path, primary: PostgresReplication
) -> None:
    """A slot keeps WAL from the source's last checkpoint: one made only after the copy
    ended and a checkpoint came may have let the WAL the standby needs first go. The clone
    fails, the node is empty again and the slot is dropped."""
    node = make(made, root, "late", clone_max_rate="16M")
    primary.allow_member(node.node_name, node.host)
    pgdata = node.layout.pgdata
    began: list[bool] = []

    def copy_over() -> bool:
        if copies_into(pgdata):
            began.append(True)
            return False
        if not began:
            return False
        query(primary, "INSERT INTO big VALUES (0, 'after the copy')")
        query(primary, "SELECT pg_switch_wal()")
        query(primary, "CHECKPOINT")
        return True

    held_back(node, copy_over)
    with pytest.raises(ReplicationError, match="slot was made after the copy ended"):
        node.clone(source_of(primary))
    assert not node.is_initialized() and not pgdata.exists()
    assert not node.layout.cloning.exists()
    assert slot_of(primary, node) == []


def test_a_slot_that_cannot_be_made_stops_the_copy_at_once(
    made: list[PostgresReplication], root: Path, primary: PostgresReplication
) -> None:
    """The copy does not run to its end (some 15 s here) for nothing: the slot's failure
    stops it within a progress report, and the node is empty again."""
    node = make(made, root, "noslot", clone_max_rate="2M")
    primary.allow_member(node.node_name, node.host)

    def refused(source: ReplicationSource, *, fresh: bool = False, timeout: int = 10) -> Any:
        wait_for(lambda: copies_into(node.layout.pgdata), HOLD, 0.02, what="the copy")
        raise ReplicationError("cannot create the replication slot: refused by the test")

    node._create_source_slot = refused  # type: ignore[method-assign]
    began = time.monotonic()
    with pytest.raises(ReplicationError, match="refused by the test"):
        node.clone(source_of(primary))
    assert time.monotonic() - began < 6.0
    assert not node.is_initialized() and not node.layout.pgdata.exists()
    assert not copies_into(node.layout.pgdata)
    assert slot_of(primary, node) == []


def test_a_copy_cut_short_drops_the_slot_made_meanwhile(
    made: list[PostgresReplication], root: Path, primary: PostgresReplication
) -> None:
    node = make(made, root, "cut", clone_max_rate="4M")
    primary.allow_member(node.node_name, node.host)

    class Interrupted(Exception):
        pass

    def interrupt(done: int, total: int) -> None:
        wait_for(lambda: slot_of(primary, node), WAIT, 0.02, what="the slot made meanwhile")
        raise Interrupted

    with pytest.raises(Interrupted):
        node.clone(source_of(primary), progress=interrupt)
    assert not node.is_initialized() and not node.layout.pgdata.exists()
    assert slot_of(primary, node) == []
    assert not copies_into(node.layout.pgdata)


def test_the_start_after_a_clone_does_not_make_the_slot_again(
    made: list[PostgresReplication], root: Path, primary: PostgresReplication
) -> None:
    """The agent starts the standby right after its clone: the slot the clone just made and
    checked is not made sure of again on one more connection (TLS, SCRAM) to the source."""
    node = make(made, root, "once")
    primary.allow_member(node.node_name, node.host)
    log = primary.layout.log_file
    mark = log.stat().st_size
    node.clone(source_of(primary))
    node.start(follow=source_of(primary))
    wait_for(lambda: slot_of(primary, node)[0][1] is True, WAIT, what="the slot in use")
    with log.open("rb") as lines:
        lines.seek(mark)
        sessions = SLOT_SESSION.findall(lines.read().decode(errors="replace"))
    assert len(sessions) == 1, sessions
    # a later start (the server stopped meanwhile) makes sure of the slot again
    node.stop()
    mark = log.stat().st_size
    node.start(follow=source_of(primary))
    with log.open("rb") as lines:
        lines.seek(mark)
        assert len(SLOT_SESSION.findall(lines.read().decode(errors="replace"))) == 1
