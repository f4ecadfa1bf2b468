"""Destructive commands ask on a terminal, take ``--yes``, and refuse without either.

The real ``hacore`` executable runs with its stdin a pipe (a script) or a real pseudo-terminal
(a person). Its profile names a node on a port nothing listens on, so a command that passes
the confirmation fails next on the unreachable node: the error tells which gate it reached.
"""

from __future__ import annotations

import os
import pty
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hacore.client.profile import Profile, save_profile

HACORE = str(Path(sys.executable).with_name("hacore"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture()
def env(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "profile.json"
    url = f"http://127.0.0.1:{_free_port()}"
    save_profile(path, Profile("c1", "admin", "secret", nodes=(("n1", url),)))
    return {**os.environ, "HACORE_PROFILE": str(path)}


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [HACORE, "cluster", "nodes", "remove", "n2", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_without_a_terminal_and_without_yes_remove_is_refused_naming_yes(
    env: dict[str, str],
) -> None:
    done = _run(env)
    assert done.returncode == 2
    assert "--yes" in done.stderr
    assert "remove node n2 from cluster c1" in done.stderr


def test_yes_confirms_in_a_script(env: dict[str, str]) -> None:
    done = _run(env, "--yes")
    assert done.returncode == 3  # past the confirmation, the node cannot be reached
    assert "--yes" not in done.stderr  # past the confirmation: the node does not answer


def _on_terminal(env: dict[str, str], answer: bytes) -> tuple[int, str]:
    """Run ``nodes remove n2`` on a pseudo-terminal, answer the question, return (status,
    everything it printed)."""
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execve(HACORE, [HACORE, "cluster", "nodes", "remove", "n2"], env)
    out = b""
    deadline = time.monotonic() + 60
    answered = False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        if not answered and b"Continue?" in out:
            os.write(fd, answer)
            answered = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def test_on_a_terminal_no_aborts(env: dict[str, str]) -> None:
    code, out = _on_terminal(env, b"n\n")
    assert "remove node n2 from cluster c1 for good. Continue? [y/N]" in out
    assert code == 1
    assert "Aborted" in out


def test_on_a_terminal_yes_goes_on(env: dict[str, str]) -> None:
    code, out = _on_terminal(env, b"y\n")
    assert "Continue? [y/N]" in out
    assert code == 3  # past the confirmation, the node cannot be reached
    assert "Aborted" not in out
    assert "--yes" not in out
