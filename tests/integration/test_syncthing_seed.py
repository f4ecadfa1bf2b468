"""A joiner's first copy by rsync over TLS before Syncthing takes over (real Syncthing,
stunnel, rsync and openssl processes on loopback)."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from hacore import pki
from hacore.backends.processes import descendants, port_taken
from hacore.backends.records import TlsFiles
from hacore.testing.procs import free_port, wait_for
from hacore_plugins.syncthing import SyncthingFilesync, first_copy
from hacore_plugins.syncthing.seed import Seeder

pytestmark = pytest.mark.skipif(
    any(shutil.which(p) is None for p in ("syncthing", "rsync", "stunnel4", "openssl")),
    reason="needs syncthing, rsync, stunnel4 and openssl",
)

FOLDER = "hacore-files"


@attrs.define
class Node:
    name: str
    backend: SyncthingFilesync
    files: Path


@attrs.frozen
class Authority:
    base: Path
    ca: pki.CaMaterial

    def issue(self, node: str) -> TlsFiles:
        cert = pki.ensure_node_certificate(
            self.ca, node, ("127.0.0.1", "localhost"), self.base / "nodes" / node
        )
        return TlsFiles(ca_file=cert.ca_file, cert_file=cert.cert_file, key_file=cert.key_file)


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    base = tmp_path_factory.mktemp("seed-ca")
    return Authority(base, pki.ensure_ca("seed-test", base / "ca"))


def make_node(base: Path, name: str, tls: TlsFiles | None, **settings: object) -> Node:
    files = base / name / "files"
    backend = SyncthingFilesync(
        {"listen_port": free_port(), "seed": True, "seed_port": free_port(), **settings},
        node_name=name,
        host="127.0.0.1",
        data_dir=base / name / "data",
        directories=[files],
        tls=tls,
    )
    return Node(name, backend, files)


def write_tree(root: Path, count: int, size: int) -> None:
    for i in range(count):
        path = root / f"d{i % 4}" / f"f{i}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(size))


def digest(root: Path) -> dict[str, str]:
    """Every file but Syncthing's own marker, by relative path: its SHA-256."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".stfolder" not in p.parts
    }


@pytest.fixture
def active(tmp_path: Path, authority: Authority) -> Iterator[Node]:
    """The source, started empty (its folder held for a seed until its role came)."""
    a = make_node(tmp_path, "a", authority.issue("a"))
    a.backend.start()
    try:
        a.backend.set_peers({"a": a.backend.identity()})
        a.backend.become_source()
        write_tree(a.files, 40, 1024 * 1024)
        a.backend.scan()
        yield a
    finally:
        a.backend.stop()


def join(active: Node, joiner: Node) -> None:
    """What a join does: the new node starts, everyone learns it, it mirrors the active."""
    joiner.backend.start()
    peers = {"a": active.backend.identity(), joiner.name: joiner.backend.identity()}
    active.backend.set_peers(peers)
    joiner.backend.set_peers(peers)
    joiner.backend.become_mirror("a")


def test_a_joiner_is_seeded_over_tls_and_ends_identical(
    active: Node, tmp_path: Path, authority: Authority, caplog: pytest.LogCaptureFixture
) -> None:
    before = digest(active.files)
    b = make_node(tmp_path, "b", authority.issue("b"))
    caplog.set_level(logging.INFO, logger="hacore_plugins.syncthing.seed")
    try:
        join(active, b)
        # the seed ran inside become_mirror: the tree is there before Syncthing sends a byte
        assert any("seeded hacore-files from a" in r.getMessage() for r in caplog.records)
        assert digest(b.files) == before
        assert b.backend.wait_in_sync(60).in_sync
        assert active.backend.wait_in_sync(60).in_sync
        assert not first_copy.marked(b.backend.home, FOLDER)
        # Syncthing took the seeded files for the source's: a change still travels
        (active.files / "d0" / "f0.bin").write_bytes(b"changed on the active")
        active.backend.scan()
        wait_for(
            lambda: (b.files / "d0" / "f0.bin").read_bytes() == b"changed on the active",
            30,
            what="the change on b",
        )
        assert digest(b.files) == digest(active.files)
    finally:
        b.backend.stop()


def test_seed_off_by_default_or_without_tls_leaves_the_copy_to_syncthing(
    active: Node, tmp_path: Path, authority: Authority
) -> None:
    off = make_node(tmp_path, "off", authority.issue("off"), seed=False)
    default = SyncthingFilesync(
        {"listen_port": free_port()},
        node_name="default",
        host="127.0.0.1",
        data_dir=tmp_path / "default" / "data",
        directories=[tmp_path / "default" / "files"],
        tls=authority.issue("default"),
    )
    plain = make_node(tmp_path, "plain", None)
    assert "seed_address" in active.backend.identity()
    for node in (off, Node("default", default, tmp_path / "default" / "files"), plain):
        node.backend.start()
        try:
            assert "seed_address" not in node.backend.identity()
        finally:
            node.backend.stop()


def test_the_seed_server_and_client_trust_only_the_cluster_ca(
    tmp_path: Path, authority: Authority
) -> None:
    """A node whose certificate another CA signed (though it trusts the cluster CA) gets
    nothing from the seed server, and, as a server, gives a mirror nothing (stunnel and
    rsync alone, no Syncthing)."""
    stranger = Authority(tmp_path / "other", pki.ensure_ca("seed-test", tmp_path / "other" / "ca"))
    foreign = stranger.issue("x")
    impostor = TlsFiles(
        ca_file=authority.issue("a").ca_file, cert_file=foreign.cert_file, key_file=foreign.key_file
    )
    files = tmp_path / "served"
    write_tree(files, 3, 1024)

    def seeder(name: str, tls: TlsFiles, folder: Path) -> Seeder:
        return Seeder(
            tls,
            node_name=name,
            host="127.0.0.1",
            port=free_port(),
            home=tmp_path / name,
            folders={FOLDER: folder},
        )

    member, outsider = (
        seeder("a", authority.issue("a"), files),
        seeder("x", impostor, files),
    )
    for server, client in ((member, outsider), (outsider, member)):
        server.serve()
        target = tmp_path / f"{client.node_name}-from-{server.node_name}"
        target.mkdir()
        pulling = seeder(f"{client.node_name}-pull", client.tls.tls, target)
        try:
            wait_for(lambda s=server: port_taken("127.0.0.1", s.port), 10, what="the seed server")
            assert not pulling.pull(FOLDER, server.node_name, server.address)
            assert not any(target.iterdir())
        finally:
            server.stop_serving()
    assert not (member.server.running() or outsider.server.running())
    # the same client with the cluster's certificate is let in: the refusals above are TLS
    target = tmp_path / "member-copy"
    target.mkdir()
    member.serve()
    try:
        wait_for(lambda: port_taken("127.0.0.1", member.port), 10, what="the seed server")
        assert seeder("b", authority.issue("b"), target).pull(FOLDER, "a", member.address)
        assert digest(target) == digest(files)
    finally:
        member.stop_serving()


def _seed_clients(port: int) -> list[int]:
    """This test's rsync client processes that pull from the seed server on ``port``."""
    found = []
    for pid in descendants(os.getpid()):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"rsync") and any(f":{port}/".encode() in a for a in argv):
            found.append(pid)
    return found


def test_a_seed_cut_halfway_still_ends_in_sync_with_nothing_lost(
    active: Node, tmp_path: Path, authority: Authority, caplog: pytest.LogCaptureFixture
) -> None:
    """The rsync client dies mid-transfer (its temporary file left behind): Syncthing still
    compares everything, fetches the rest, and the active's files (one changed meanwhile)
    win."""
    before = digest(active.files)
    # 40 MiB at 8 MiB/s: about 5 s of seed to cut into
    b = make_node(tmp_path, "b", authority.issue("b"), max_recv_kbps=8192)
    seed_port = active.backend.config.seed_port
    failure: list[BaseException] = []

    def run_join() -> None:
        try:
            join(active, b)
        except BaseException as err:  # reported below
            failure.append(err)

    thread = threading.Thread(target=run_join)
    thread.start()
    try:
        wait_for(lambda: _seed_clients(seed_port), 30, what="the seed to start")
        wait_for(lambda: len(digest(b.files)) >= 5, 30, what="a few seeded files")
        pids = _seed_clients(seed_port)
        assert pids
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        copied = {k: v for k, v in digest(b.files).items() if before.get(k) == v}
        assert 0 < len(copied) < len(before), "the seed was not cut halfway"
        thread.join(60)
        assert not thread.is_alive() and not failure, failure
        assert any("the seed of hacore-files from a failed" in m for m in caplog.messages)
        changed = sorted(copied)[0]
        (active.files / changed).write_bytes(b"newer on the active")
        active.backend.scan()
        assert b.backend.wait_in_sync(90).in_sync
        assert active.backend.wait_in_sync(30).in_sync
        expected = {**before, changed: hashlib.sha256(b"newer on the active").hexdigest()}
        assert digest(active.files) == expected
        assert digest(b.files) == expected
    finally:
        thread.join(60)
        b.backend.stop()
