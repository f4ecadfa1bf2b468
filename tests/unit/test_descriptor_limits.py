"""Running out of file descriptors: the agent raises its limit, and a database whose pid file
cannot be read for lack of descriptors is unknown, never "stopped" (DESIGN rule 7).

Both run in a child process: lowering the limit in the test process would break the others.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hacore.errors import ReplicationError
from hacore_plugins.postgresql import server
from hacore_plugins.postgresql.layout import Layout


def run_child(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_agent_raises_its_soft_limit_to_the_hard_one() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip("the hard limit is too low to see a raise")
    out = run_child(
        """
        import resource
        from hacore.api.limits import connection_budget, raise_open_file_limit
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        before = connection_budget()
        raised = raise_open_file_limit()
        print(before, raised, resource.getrlimit(resource.RLIMIT_NOFILE)[0], connection_budget())
        """
    )
    before, raised, now, budget = (int(word) for word in out.split())
    assert before == 64  # the floor, with a limit that leaves nothing after the reserve
    expected = hard if hard != resource.RLIM_INFINITY else 65536
    assert raised == now == expected
    assert budget == expected - 256


def test_a_pid_file_unreadable_for_lack_of_descriptors_is_unknown(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    layout.pgdata.mkdir(parents=True)
    # this process is alive: the pid file names a running "postmaster"
    layout.pid_file.write_text(f"{os.getpid()}\n{layout.pgdata}\n")
    assert server.postmaster_pid(layout) == os.getpid()
    out = run_child(
        f"""
        import os, resource
        from pathlib import Path
        from hacore.errors import ReplicationError
        from hacore_plugins.postgresql import server
        from hacore_plugins.postgresql.layout import Layout
        layout = Layout(Path({str(tmp_path)!r}))
        layout.pid_file.write_text(f"{{os.getpid()}}\\n")
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
        held = []
        try:
            while True:
                held.append(open(os.devnull))
        except OSError:
            pass
        try:
            print("answer", server.postmaster_pid(layout))
        except ReplicationError as err:
            print("unknown", err)
        """
    )
    assert out.startswith("unknown cannot read"), out
    assert "Too many open files" in out
    # and an absent pid file is still "stopped", as before
    layout.pid_file.unlink()
    assert server.postmaster_pid(layout) is None


def test_an_unreadable_pid_file_is_an_error_not_a_stopped_database(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    layout.pgdata.mkdir(parents=True)
    layout.pid_file.mkdir()  # EISDIR: not absent, just unreadable
    with pytest.raises(ReplicationError, match="state is unknown"):
        server.postmaster_pid(layout)
