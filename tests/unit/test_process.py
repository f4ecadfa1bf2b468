"""DetachedProcess: stopping a server tree whose child escaped our process group, and pid files."""

from __future__ import annotations

import itertools
import os
import shlex
import signal
import socket
import sys
import time
from pathlib import Path

from hacore.backends.processes import DetachedProcess, descendants, pauses

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


# A parent that exits on SIGTERM and leaves a child in its own group that ignores it, as a
# server's worker still closing its sockets does for a moment: the pid goes first.
LINGERING = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import os, signal, sys, time;"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN);"
    "open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(600)", sys.argv[1]])
time.sleep(600)
"""


def test_stop_returns_once_the_server_s_children_are_gone_too(tmp_path: Path) -> None:
    """A start right after a stop must not find the old server's child still holding its
    port (Syncthing's server outlived its killed monitor by a moment)."""
    proc = _process(tmp_path)
    child_file = tmp_path / "child.pid"
    pid = proc.start([sys.executable, "-c", LINGERING, str(child_file)])
    child = _wait_file(child_file)
    try:
        proc.stop(signal.SIGTERM, timeout=0.5)
        assert not _alive(pid)
        assert not _alive(child), "stop() returned while the server's child still ran"
    finally:
        for leftover in (child, pid):
            if _alive(leftover):
                os.kill(leftover, signal.SIGKILL)


# Its first thread ends (a zombie in /proc) while another still serves a port, as the last
# threads of a killed Go server (Syncthing, etcd) do for a moment.
HALF_EXITED = """
import ctypes, signal, socket, sys, threading, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
open(sys.argv[1], "w").write(str(listener.getsockname()[1]))
threading.Thread(target=time.sleep, args=(600,)).start()
ctypes.CDLL(None).pthread_exit(None)
"""


def test_a_process_whose_first_thread_ended_is_not_gone_while_another_runs(
    tmp_path: Path,
) -> None:
    port_file = tmp_path / "port"
    pid = _process(tmp_path).start([sys.executable, "-c", HALF_EXITED, str(port_file)])
    port = _wait_file(port_file)
    proc = _process(tmp_path)  # as after a restart of whoever started it: the pid file only
    try:
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid), "the first thread never ended: the test shows nothing"
        assert proc.pid() == pid, "a process with a running thread was taken for gone"
        proc.stop(signal.SIGTERM, timeout=0.5)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))  # free: every thread of the server has exited
    finally:
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)


def test_pauses_start_short_and_double_up_to_the_most() -> None:
    assert list(itertools.islice(pauses(0.01, 0.05), 5)) == [0.01, 0.02, 0.04, 0.05, 0.05]
