"""A start returns once the server's own pid file says it is ready, not at pg_ctl's next look.

``pg_ctl -w`` looks at ``postmaster.pid`` every 100 ms: a standby started at the end of a join
waited up to that long after it was ready (issue 15, target 3). pg_ctl still starts the server
and judges a failure; the pid file saying ``ready`` (or ``standby``) ends the wait sooner.
Here pg_ctl is the real one behind a wrapper that reports 2 s late: a start that waited for
pg_ctl would take those 2 s.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import attrs
import pytest
from test_postgresql import (  # noqa: F401  (pg_root and nodes are fixtures)
    Nodes,
    new_cluster,
    nodes,
    pg_root,
)

from hacore.backends.processes import process_table
from hacore.errors import ReplicationError
from hacore.testing.procs import wait_for
from hacore_plugins.postgresql import server
from hacore_plugins.postgresql.backend import PostgresReplication
from hacore_plugins.postgresql.commands import PgTools
from hacore_plugins.postgresql.settings import default_bin_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(default_bin_dir() is None, reason="no PostgreSQL binaries installed"),
]

#: how late the wrapped pg_ctl reports
LATE = 2.0


def late_tools(node: PostgresReplication, root: Path) -> PgTools:
    """The node's tools, with a ``pg_ctl`` that runs the real one and exits ``LATE`` later."""
    bin_dir = root / "late-bin"
    bin_dir.mkdir(exist_ok=True)
    bin_dir.chmod(0o755)
    wrapper = bin_dir / "pg_ctl"
    real = node.tools.bin_dir / "pg_ctl"
    wrapper.write_text(f'#!/bin/sh\n"{real}" "$@"\ncode=$?\nsleep {LATE}\nexit $code\n')
    wrapper.chmod(0o755)
    return attrs.evolve(node.tools, bin_dir=bin_dir)


def zombies_of(pid: int) -> set[int]:
    """``pid``'s children that exited and were not reaped."""
    return {e.pid for e in process_table() if e.ppid == pid and not e.alive}


def test_a_start_returns_when_the_server_says_ready(nodes: Nodes, pg_root: Path) -> None:  # noqa: F811
    primary = new_cluster(nodes, "start-ready")
    primary.stop()
    tools = late_tools(primary, pg_root)
    # the tests before this one in the same worker may have left children of their own
    earlier = zombies_of(os.getpid())
    began = time.monotonic()
    pid = server.start(tools, primary.layout, timeout=60, what="a test")
    took = time.monotonic() - began
    assert took < LATE, f"the start waited for pg_ctl ({took:.2f} s)"
    assert server.postmaster_pid(primary.layout) == pid
    assert server.postmaster_state(primary.layout) == "ready"
    # pg_ctl, left to finish, is reaped: no zombie stays behind
    wait_for(lambda: not zombies_of(os.getpid()) - earlier, LATE + 10, what="pg_ctl to be reaped")


def test_a_failed_start_still_says_why(nodes: Nodes, pg_root: Path) -> None:  # noqa: F811
    primary = new_cluster(nodes, "start-fails")
    primary.stop()
    conf = primary.layout.pgdata / "postgresql.conf"
    conf.write_text(conf.read_text() + "\nshared_buffers = 'not a size'\n")
    with pytest.raises(ReplicationError, match="failed to start; server log"):
        server.start(primary.tools, primary.layout, timeout=30, what="a test")
    assert server.postmaster_pid(primary.layout) is None
