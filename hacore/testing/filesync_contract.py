"""The filesync contract: what every :class:`~hacore.FilesyncBackend` must do.

A backend passes when :class:`FilesyncContract` passes against its real sync engine. The
implementer provides one fixture, ``filesync_harness``, yielding a started
:class:`FilesyncHarness`, and subclasses the suite::

    import pytest
    from hacore.testing.pytest_plugin import run_family_harness
    from hacore.testing.filesync_contract import FilesyncContract
    from my_pkg.testing import MyHarness

    @pytest.fixture(scope="module")
    def filesync_harness(tmp_path_factory):
        yield from run_family_harness(MyHarness, tmp_path_factory.mktemp("mine"))

    class TestMine(FilesyncContract): pass

Two nodes, ``a`` and ``b``, each with one directory, are started once per class and given
each other as peers; every test begins with ``a`` the source and ``b`` its mirror. What is
checked is what the interface promises (``hacore.filesync``): identities survive JSON (they
travel in join tickets and member records); a file written, changed or deleted on the source
reaches the mirror by itself; a mirror's local changes are overwritten and never sent back;
roles flip; a mirror cut off from its source does not claim to be in sync and
``wait_in_sync`` then raises :class:`~hacore.FilesyncError`; mirroring a node that is not a
peer is a :class:`~hacore.FilesyncError`; ``stop`` is idempotent.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from hacore import FilesyncBackend, FilesyncError, SyncState
from hacore.testing.family_harness import FilesyncHarness
from hacore.testing.procs import wait_for

#: Seconds a change may take to reach a mirror on a loaded machine (engines scan, batch and
#: retry on their own schedule; how fast they are is the benchmarks' business).
WAIT = 90.0


@attrs.define
class Node:
    name: str
    backend: FilesyncBackend
    files: Path


@attrs.define
class Pair:
    a: Node
    b: Node

    @property
    def nodes(self) -> tuple[Node, Node]:
        return (self.a, self.b)

    def introduce(self) -> None:
        identities = {node.name: node.backend.identity() for node in self.nodes}
        for node in self.nodes:
            node.backend.set_peers(identities)

    def make_source(self, source: Node, mirror: Node) -> None:
        source.backend.become_source()
        mirror.backend.become_mirror(source.name)


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}.txt"


def _content(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _wait_content(path: Path, content: str | None, what: str) -> None:
    wait_for(lambda: _content(path) == content, WAIT, what=what)


def _in_sync(state: SyncState) -> bool:
    assert isinstance(state, SyncState), f"state() returned {state!r}"
    return state.in_sync


class FilesyncContract:
    """Propagation, mirror discipline, role changes, state and errors of one engine."""

    @pytest.fixture(scope="class")
    @classmethod
    def pair(cls, filesync_harness: FilesyncHarness) -> Iterator[Pair]:
        nodes = []
        for name in ("a", "b"):
            files = filesync_harness.workdir / name / "files"
            files.mkdir(parents=True, exist_ok=True)
            nodes.append(Node(name, filesync_harness.make_backend(name, [files]), files))
        pair = Pair(*nodes)
        try:
            for node in pair.nodes:
                node.backend.start()
            pair.introduce()
            pair.make_source(pair.a, pair.b)
            yield pair
        finally:
            for node in pair.nodes:
                node.backend.stop()

    @pytest.fixture
    def roles(self, pair: Pair) -> Iterator[Pair]:
        """``a`` is the source, ``b`` its mirror, both in sync; put back after the test."""
        pair.make_source(pair.a, pair.b)
        pair.b.backend.wait_in_sync(WAIT)
        yield pair
        pair.introduce()
        pair.make_source(pair.a, pair.b)

    # -- identity and state ----------------------------------------------------------------

    def test_identity_survives_json(self, pair: Pair) -> None:
        for node in pair.nodes:
            identity = node.backend.identity()
            assert isinstance(identity, dict) and identity, identity
            assert json.loads(json.dumps(identity)) == identity
        assert pair.a.backend.identity() != pair.b.backend.identity()

    def test_a_mirror_in_sync_says_so(self, roles: Pair) -> None:
        state = roles.b.backend.wait_in_sync(WAIT)
        assert isinstance(state, SyncState) and state.in_sync, state
        state = roles.b.backend.state()
        assert _in_sync(state), state
        assert 0.0 <= state.completion <= 100.0, state
        assert state.need_bytes >= 0, state

    # -- propagation -----------------------------------------------------------------------

    def test_a_file_written_on_the_source_reaches_the_mirror(self, roles: Pair) -> None:
        name = _unique("written")
        (roles.a.files / name).write_text("from the source")
        _wait_content(roles.b.files / name, "from the source", f"{name} to reach b")
        (roles.a.files / name).write_text("changed on the source")
        _wait_content(roles.b.files / name, "changed on the source", f"{name}'s change on b")
        (roles.a.files / name).unlink()
        _wait_content(roles.b.files / name, None, f"{name}'s deletion to reach b")
        assert _in_sync(roles.b.backend.wait_in_sync(WAIT))

    def test_scan_then_wait_in_sync_brings_every_file(self, roles: Pair) -> None:
        """A planned switchover: the writers stopped, the active scans, the mirror waits."""
        names = [_unique("switchover") for _ in range(5)]
        for name in names:
            (roles.a.files / name).write_text(name)
        roles.a.backend.scan()
        wait_for(
            lambda: all(_content(roles.b.files / n) == n for n in names),
            WAIT,
            what="every file written before the scan to reach b",
        )
        assert _in_sync(roles.b.backend.wait_in_sync(WAIT))

    def test_a_mirrors_own_changes_are_overwritten_and_never_sent_back(self, roles: Pair) -> None:
        kept = _unique("kept")
        (roles.a.files / kept).write_text("the source's version")
        _wait_content(roles.b.files / kept, "the source's version", f"{kept} to reach b")
        stray = _unique("stray")
        (roles.b.files / stray).write_text("written on the mirror")
        (roles.b.files / kept).write_text("changed on the mirror")
        _wait_content(roles.b.files / stray, None, "the mirror's own file to be removed")
        _wait_content(roles.b.files / kept, "the source's version", "the mirror's change undone")
        assert _in_sync(roles.b.backend.wait_in_sync(WAIT))
        assert not (roles.a.files / stray).exists(), "a mirror's file reached the source"
        assert _content(roles.a.files / kept) == "the source's version"

    def test_after_a_flip_the_new_source_reaches_the_old_one(self, roles: Pair) -> None:
        roles.make_source(roles.b, roles.a)
        name = _unique("flipped")
        (roles.b.files / name).write_text("from the new source")
        _wait_content(roles.a.files / name, "from the new source", f"{name} to reach a")
        stray = _unique("old-source")
        (roles.a.files / stray).write_text("the old source is a mirror now")
        _wait_content(roles.a.files / stray, None, "the new mirror's own file to be removed")
        assert not (roles.b.files / stray).exists()

    # -- failures --------------------------------------------------------------------------

    def test_a_mirror_cut_off_from_its_source_is_not_in_sync(self, roles: Pair) -> None:
        roles.a.backend.stop()
        try:
            (roles.a.files / _unique("unsent")).write_text("the mirror cannot have this")
            wait_for(
                lambda: not _in_sync(roles.b.backend.state()),
                WAIT,
                what="b to stop claiming it is in sync with a stopped source",
            )
            with pytest.raises(FilesyncError):
                roles.b.backend.wait_in_sync(1.0, interval=0.1)
        finally:
            roles.a.backend.start()

    def test_mirroring_a_node_that_is_not_a_peer_is_an_error(self, roles: Pair) -> None:
        with pytest.raises(FilesyncError):
            roles.b.backend.become_mirror("nobody")
        with pytest.raises(FilesyncError):
            roles.b.backend.become_mirror("b")
        name = _unique("still-mirrored")
        (roles.a.files / name).write_text("b still mirrors a")
        _wait_content(roles.b.files / name, "b still mirrors a", "b to go on mirroring a")

    def test_stop_is_idempotent(self, filesync_harness: FilesyncHarness) -> None:
        files = filesync_harness.workdir / "c" / "files"
        files.mkdir(parents=True, exist_ok=True)
        backend = filesync_harness.make_backend("c", [files])
        backend.stop()
        backend.start()
        backend.stop()
        backend.stop()
