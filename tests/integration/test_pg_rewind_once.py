"""A rewind reads what it copies from its source once (issue 15, target 4).

pg_rewind copies every file of the source's ``pg_wal`` whole (recycled segments too: about
1 GiB on a standby that replayed a 1 GiB load), and its ``--dry-run`` fetches all that the run
fetches, only without writing it. A dry run before the run made a rewind that had something to
undo copy that twice: 40 % of pg_rewind's time, rejoins of 10 to 13 s beside re-clones of 8 s
in benchmarks/join.py. pg_rewind checks all it can before it first changes the target (another
cluster, no common timeline, WAL missing on the target), so the run alone fails as early,
leaving the data as it was, in those cases (``test_rewind_falls_back_to_a_fresh_clone``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_postgresql import (  # noqa: F401  (pg_root and nodes are fixtures)
    Nodes,
    crash,
    has_note,
    insert,
    new_cluster,
    new_standby,
    nodes,
    pg_root,
    source_of,
    wait_following,
    wait_replicated,
)

from hacore_plugins.postgresql.settings import default_bin_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(default_bin_dir() is None, reason="no PostgreSQL binaries installed"),
]


def _noting_bin_dir(root: Path, calls: Path) -> Path:
    """PostgreSQL's binaries, with pg_rewind noting its arguments in ``calls`` first."""
    real = default_bin_dir()
    assert real is not None
    wrapped = root / "bin"
    wrapped.mkdir()
    for tool in real.iterdir():
        (wrapped / tool.name).symlink_to(tool)
    (wrapped / "pg_rewind").unlink()
    (wrapped / "pg_rewind").write_text(
        f'#!/bin/sh\necho "$*" >> {calls}\nexec {real / "pg_rewind"} "$@"\n'
    )
    (wrapped / "pg_rewind").chmod(0o755)
    calls.touch()
    os.chmod(calls, 0o666)  # the tools run as the server's user
    return wrapped


def test_a_rewind_runs_pg_rewind_once(nodes: Nodes) -> None:  # noqa: F811
    root = nodes.root / f"rewind-once-{os.getpid()}-{len(nodes.made)}"
    root.mkdir()
    calls = root / "pg_rewind.calls"
    bin_dir = _noting_bin_dir(root, calls)
    a = new_cluster(nodes, "once-a", bin_dir=str(bin_dir))
    b = new_standby(nodes, "once-b", a, bin_dir=str(bin_dir))
    insert(a, "before-crash")
    wait_replicated(b, "before-crash")
    b.stop()
    insert(a, "divergent")
    inode = a.layout.pgdata.stat().st_ino
    crash(a)
    b.start()
    b.promote(timeout=60.0)
    insert(b, "after-crash")

    b.allow_member("once-a", a.host)
    a.rewind(source_of(b))
    wait_following(a, "once-b")
    wait_replicated(a, "after-crash")
    assert not has_note(a, "divergent"), "the write b never had survived: no rewind happened"
    assert a.layout.pgdata.stat().st_ino == inode, "re-cloned instead of rewound"
    runs = calls.read_text().splitlines()
    assert len(runs) == 1, f"pg_rewind ran {len(runs)} times: {runs}"
    assert "--dry-run" not in runs[0].split()
