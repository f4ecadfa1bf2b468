"""DetachedProcess: stopping a server tree whose child escaped our process group, and pid files."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from pathlib import Path

from hacore.backends.processes import DetachedProcess, descendants

# A parent that ignores SIGTERM and starts a child in a session of its own, as Syncthing's
# monitor does with its server process: a signal to the parent's group misses the child.
ESCAPING = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time, signal;"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"], start_new_session=True)
open(sys.argv[1], "w").write(str(child.pid))
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _process(tmp_path: Path, name: str = "server") -> DetachedProcess:
    return DetachedProcess(
        name,
        log_path=tmp_path / f"{name}.log",
        pid_path=tmp_path / f"{name}.pid",
        executable_name=os.path.basename(sys.executable),
    )


def _wait_file(path: Path) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"{path} never written")


def test_stop_kills_a_child_that_left_the_process_group(tmp_path: Path) -> None:
    proc = _process(tmp_path)
    child_file = tmp_path / "child.pid"
    pid = proc.start([sys.executable, "-c", ESCAPING, str(child_file)])
    child = _wait_file(child_file)
    try:
        assert child in descendants(pid)
        proc.stop(timeout=0.5)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the escaped child outlived stop()"
        assert not proc.pid_path.exists()
    finally:
        for leftover in (child, pid):
            if _alive(leftover):
                os.kill(leftover, signal.SIGKILL)


def test_stop_keeps_the_pid_file_of_a_newer_server(tmp_path: Path) -> None:
    old = _process(tmp_path)
    old.start([sys.executable, "-c", "import time; time.sleep(600)"])
    old_pid = old.pid()
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while old.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    # Another agent process started the next server in the meantime.
    newer = _process(tmp_path)
    new_pid = newer.start([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        old.stop()
        assert newer.pid() == new_pid
        assert old.pid_path.read_text().strip() == str(new_pid)
    finally:
        newer.stop(signal.SIGKILL)
    assert not newer.pid_path.exists()


def test_stop_keeps_the_pid_file_of_a_newer_server_still_starting(tmp_path: Path) -> None:
    """The newer server's command line is not yet the program's (it is still exec-ing, here
    behind a shell): its pid file is still its own, not a stale one to remove."""
    old = _process(tmp_path)
    old.start([sys.executable, "-c", "import time; time.sleep(600)"])
    old_pid = old.pid()
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while old.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    newer = _process(tmp_path)
    script = f"sleep 5; exec {shlex.quote(sys.executable)} -c 'import time; time.sleep(600)'"
    new_pid = newer.start(["/bin/sh", "-c", script])
    try:
        old.stop()
        assert old.pid_path.read_text().strip() == str(new_pid)
    finally:
        newer.stop(signal.SIGKILL)
