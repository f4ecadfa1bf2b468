"""The rsync filesync plugin with real rsync daemons on loopback ports, in temp dirs.

Node ``a`` serves, ``b`` mirrors it with no timer of its own (interval one hour), so each
test pulls explicitly; the timer test starts a third node that pulls every 0.3 s.
"""

from __future__ import annotations

import filecmp
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from hacore.errors import ConfigError, FilesyncError
from hacore.plugins import load_plugins
from hacore.testing.procs import free_port, wait_for
from hacore_plugins import rsync as rsync_plugin
from hacore_plugins.rsync import RsyncFilesync

pytestmark = pytest.mark.skipif(shutil.which("rsync") is None, reason="no rsync binary on PATH")

PASSWORD = "cluster-secret"


@attrs.define
class Node:
    name: str
    backend: RsyncFilesync
    files: Path


def make_node(base: Path, name: str, **settings: object) -> Node:
    files = base / name / "files"
    files.mkdir(parents=True, exist_ok=True)
    backend = RsyncFilesync(
        {"port": free_port(), "password": PASSWORD, "interval": 3600, **settings},
        node_name=name,
        host="127.0.0.1",
        data_dir=base / name / "data",
        directories=[files],
    )
    return Node(name, backend, files)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Node]]:
    base = tmp_path_factory.mktemp("rsync")
    nodes = {"a": make_node(base, "a"), "b": make_node(base, "b")}
    try:
        for node in nodes.values():
            node.backend.start()
        identities = {n: node.backend.identity() for n, node in nodes.items()}
        for node in nodes.values():
            node.backend.set_peers(identities)
        nodes["a"].backend.become_source()
        nodes["b"].backend.become_mirror("a")
        yield nodes
    finally:
        for node in nodes.values():
            node.backend.stop()


@pytest.fixture
def roles(pair: dict[str, Node]) -> Iterator[dict[str, Node]]:
    """a serves, b mirrors it and holds a's copy."""
    pair["a"].backend.become_source()
    pair["b"].backend.become_mirror("a")
    pair["b"].backend.sync_now()
    yield pair
    pair["a"].backend.become_source()
    pair["b"].backend.become_mirror("a")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def same_tree(left: Path, right: Path) -> bool:
    def walk(cmp: filecmp.dircmp[str]) -> bool:
        if cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files:
            return False
        return all(walk(sub) for sub in cmp.subdirs.values())

    return walk(filecmp.dircmp(left, right))


def test_registered_as_a_filesync_backend() -> None:
    plugins = load_plugins([rsync_plugin], entry_points=False)
    assert plugins.registry.filesync("rsync") is RsyncFilesync


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"listen": 1}, "unknown rsync setting"),
        ({"port": 0}, "at least 1"),
        ({"port": 1.5}, "TCP port"),
        ({"interval": "often"}, "must be a number"),
        ({"password": ""}, "non-empty"),
        ({"password": "a\nb"}, "one line"),
    ],
)
def test_bad_settings_are_refused(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RsyncFilesync.validate_settings(settings)


def test_a_taken_port_is_refused_before_the_daemon_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = make_node(tmp_path, "x", port=port)
        try:
            with pytest.raises(
                FilesyncError, match=f"rsync port {port} on 127.0.0.1 is already in use"
            ):
                node.backend.start()
            assert not node.backend.daemon.running()
        finally:
            node.backend.stop()


def test_identity_is_the_daemon_url(pair: dict[str, Node]) -> None:
    backend = pair["a"].backend
    assert backend.identity() == {"rsync_url": f"rsync://127.0.0.1:{backend.config.port}"}


def test_the_daemon_is_read_only_and_wants_the_password(
    pair: dict[str, Node], tmp_path: Path
) -> None:
    port = pair["a"].backend.config.port
    module = f"rsync://hacore@127.0.0.1:{port}/hacore-files/"
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    right = tmp_path / "right"
    right.write_text(PASSWORD + "\n")
    right.chmod(0o600)

    def rsync(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["rsync", *args], capture_output=True, text=True, timeout=30)

    refused = rsync("-a", f"--password-file={wrong}", module, str(tmp_path / "copy"))
    assert refused.returncode != 0
    assert "auth failed" in refused.stderr
    upload = tmp_path / "upload.txt"
    upload.write_text("must not land on the source")
    pushed = rsync(f"--password-file={right}", str(upload), module)
    assert pushed.returncode != 0
    assert "read only" in pushed.stderr
    assert not (pair["a"].files / "upload.txt").exists()


def test_pull_copies_and_deletes(roles: dict[str, Node]) -> None:
    a, b = roles["a"], roles["b"]
    sub = a.files / unique("dir")
    sub.mkdir()
    (sub / "nested.txt").write_text("nested")
    (a.files / "top.txt").write_text("top")
    (a.files / "link").unlink(missing_ok=True)
    (a.files / "link").symlink_to("top.txt")
    (b.files / "local-only.txt").write_text("a mirror's own file is not kept")
    b.backend.sync_now()
    assert same_tree(a.files, b.files)
    assert os.readlink(b.files / "link") == "top.txt"
    assert not (b.files / "local-only.txt").exists()
    shutil.rmtree(sub)
    (a.files / "top.txt").unlink()
    b.backend.sync_now()
    assert not (b.files / sub.name).exists()
    assert not (b.files / "top.txt").exists()
    assert same_tree(a.files, b.files)


def test_state_reports_pending_changes_and_the_last_pull(roles: dict[str, Node]) -> None:
    a, b = roles["a"], roles["b"]
    before = time.time()
    b.backend.sync_now()
    synced = b.backend.state()
    assert synced.in_sync
    assert synced.last_change is not None and synced.last_change >= before
    name = unique("pending")
    (a.files / name).write_bytes(b"x" * 100_000)
    pending = b.backend.state()
    assert not pending.in_sync
    assert pending.need_bytes == 100_000
    assert pending.completion < 100
    # the new file, and the modification time of the directory it was created in
    assert pending.detail == "hacore-files: 2 item(s) differ from a"
    assert pending.last_change == synced.last_change
    assert not (b.files / name).exists()  # a dry run changes nothing
    assert a.backend.state().in_sync
    assert b.backend.wait_in_sync(30).in_sync
    assert (b.files / name).read_bytes() == b"x" * 100_000


def test_the_timer_pulls_without_being_asked(
    roles: dict[str, Node], tmp_path_factory: pytest.TempPathFactory
) -> None:
    c = make_node(tmp_path_factory.mktemp("rsync-timer"), "c", interval=0.3)
    try:
        c.backend.start()
        c.backend.set_peers({"a": roles["a"].backend.identity(), "c": c.backend.identity()})
        c.backend.become_mirror("a")
        name = unique("timed")
        (roles["a"].files / name).write_text("pulled by the timer")
        wait_for(
            lambda: (
                (c.files / name).exists() and (c.files / name).read_text() == "pulled by the timer"
            ),
            30,
            what="the timer to pull",
        )
        (roles["a"].files / name).unlink()
        wait_for(lambda: not (c.files / name).exists(), 30, what="the timer to delete")
        c.backend.become_source()
        (roles["a"].files / name).write_text("not pulled by a source")
        time.sleep(1.5)
        assert not (c.files / name).exists()
    finally:
        c.backend.stop()
    assert not c.backend.daemon.running()


def test_flip_reverses_the_direction(roles: dict[str, Node]) -> None:
    a, b = roles["a"], roles["b"]
    b.backend.become_source()
    a.backend.become_mirror("b")
    name = unique("from-b")
    (b.files / name).write_text("the new source wrote this")
    a.backend.sync_now()
    assert (a.files / name).read_text() == "the new source wrote this"
    with pytest.raises(FilesyncError, match="is the source"):
        b.backend.sync_now()


def test_an_unreachable_source_is_reported(roles: dict[str, Node]) -> None:
    a, b = roles["a"], roles["b"]
    a.backend.stop()
    try:
        with pytest.raises(FilesyncError, match="rsync of hacore-files from a"):
            b.backend.sync_now()
        state = b.backend.state()
        assert not state.in_sync
        assert "from a" in state.detail
        with pytest.raises(FilesyncError, match=re.escape("not in sync after 0.5s")):
            b.backend.wait_in_sync(0.5)
    finally:
        a.backend.start()
    assert b.backend.wait_in_sync(30).in_sync


def test_a_source_whose_directory_does_not_exist_yet_serves_it_empty(tmp_path: Path) -> None:
    """A fresh active may have no resources directory yet: its daemon must still serve the
    module (rsync's "chdir failed" made every mirror's pull fail), and files written later
    reach the mirror."""
    src = make_node(tmp_path, "src")
    dst = make_node(tmp_path, "dst")
    shutil.rmtree(src.files)
    try:
        for node in (src, dst):
            node.backend.start()
        identities = {n.name: n.backend.identity() for n in (src, dst)}
        for node in (src, dst):
            node.backend.set_peers(identities)
        src.backend.become_source()
        dst.backend.become_mirror("src")
        assert src.files.is_dir()
        dst.backend.sync_now()
        (src.files / "late.txt").write_text("written after the start\n")
        dst.backend.sync_now()
        assert (dst.files / "late.txt").read_text() == "written after the start\n"
    finally:
        for node in (src, dst):
            node.backend.stop()
