"""The rsync filesync plugin with real rsync daemons on loopback ports, in temp dirs.

Node ``a`` serves, ``b`` mirrors it with no timer of its own (interval one hour), so each
test pulls explicitly; the timer test starts a third node that pulls every 0.3 s. The nodes
speak TLS with a cluster CA made for the module (stunnel in front of the daemon, openssl on
the mirror), as a cluster with ``tls.enabled`` does; one test runs without TLS.
"""

from __future__ import annotations

import filecmp
import os
import re
import shutil
import socket
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from cryptography import x509
from rsync_greeting import rsync_greeting

from hacore import pki
from hacore.api.errors import UnavailableError
from hacore.backends.records import TlsFiles
from hacore.cluster.ticket import JoinRequest
from hacore.config.node import NodeConfig, load_config
from hacore.errors import ConfigError, FilesyncError, HacoreError
from hacore.pki.revocation import build_crl, crl_path, install_crl
from hacore.plugins.registry import load_plugins
from hacore.testing.procs import free_port, holds_for, wait_for
from hacore_plugins import rsync as rsync_plugin
from hacore_plugins.rsync import RsyncFilesync
from hacore_plugins.rsync.backend import PASSWORD_FILE
from hacore_plugins.rsync.secret import RsyncSecretPart

pytestmark = [
    pytest.mark.skipif(shutil.which("rsync") is None, reason="no rsync binary on PATH"),
    pytest.mark.skipif(
        shutil.which("stunnel4") is None or shutil.which("openssl") is None,
        reason="rsync over TLS needs stunnel4 and openssl",
    ),
]

PASSWORD = "cluster-secret"


@attrs.define
class Node:
    name: str
    backend: RsyncFilesync
    files: Path


@attrs.frozen
class Authority:
    """A CA and the TLS material it issues, as ``cluster start`` and ``join`` lay it out."""

    base: Path
    ca: pki.CaMaterial

    @classmethod
    def create(cls, base: Path, name: str) -> Authority:
        return cls(base, pki.ensure_ca(name, base / "ca"))

    def issue(self, node: str, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> TlsFiles:
        cert = pki.ensure_node_certificate(self.ca, node, hosts, self.base / "nodes" / node)
        return TlsFiles(ca_file=cert.ca_file, cert_file=cert.cert_file, key_file=cert.key_file)


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority.create(tmp_path_factory.mktemp("rsync-ca"), "rsync-test")


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    """Another cluster's CA: what it signs proves nothing to this one."""
    return Authority.create(tmp_path_factory.mktemp("rsync-other-ca"), "rsync-test")


def make_node(base: Path, name: str, tls: TlsFiles | None, **settings: object) -> Node:
    files = base / name / "files"
    files.mkdir(parents=True, exist_ok=True)
    backend = RsyncFilesync(
        {"port": free_port(), "password": PASSWORD, "interval": 3600, **settings},
        node_name=name,
        host="127.0.0.1",
        data_dir=base / name / "data",
        directories=[files],
        tls=tls,
    )
    return Node(name, backend, files)


def connect(backend: RsyncFilesync, port: int) -> dict[str, str]:
    """The environment of a hand-made rsync client that speaks TLS as ``backend`` does."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSYNC_")}
    return {**env, "RSYNC_CONNECT_PROG": backend.connect_command("127.0.0.1", port)}


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, authority: Authority
) -> Iterator[dict[str, Node]]:
    base = tmp_path_factory.mktemp("rsync")
    nodes = {
        "a": make_node(base, "a", authority.issue("a")),
        "b": make_node(base, "b", authority.issue("b")),
    }
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
        ({"listen": 1}, 'unknown key "listen" in filesync'),
        ({"port": 0}, r"port must be a TCP port number 1-65535 \(got 0\)"),
        ({"port": 1.5}, "TCP port"),
        ({"interval": "often"}, "must be a number"),
        ({"password": ""}, "non-empty"),
        ({"password": "a\nb"}, "one line"),
        ({"stunnel_binary": "/usr/bin/stunnel4 -x"}, "white space"),
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
        node = make_node(tmp_path, "x", None, port=port)
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


def secret_files(base: Path) -> tuple[Path, Path]:
    wrong = base / "wrong"
    wrong.write_text("not-the-password\n")
    wrong.chmod(0o600)
    right = base / "right"
    right.write_text(PASSWORD + "\n")
    right.chmod(0o600)
    return wrong, right


def test_the_daemon_is_read_only_and_wants_the_password(
    pair: dict[str, Node], tmp_path: Path
) -> None:
    port = pair["a"].backend.config.port
    module = f"rsync://hacore@127.0.0.1:{port}/hacore-files/"
    wrong, right = secret_files(tmp_path)
    env = connect(pair["b"].backend, port)

    def rsync(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["rsync", *args], capture_output=True, text=True, timeout=30, env=env)

    refused = rsync("-a", f"--password-file={wrong}", module, str(tmp_path / "copy"))
    assert refused.returncode != 0
    assert "auth failed" in refused.stderr
    upload = tmp_path / "upload.txt"
    upload.write_text("must not land on the source")
    pushed = rsync(f"--password-file={right}", str(upload), module)
    assert pushed.returncode != 0
    # over TLS the daemon's refusal reaches its log, not the client
    log = pair["a"].backend.home / "rsyncd.log"
    assert "ERROR: module is read only" in log.read_text()
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
    # an earlier test may have changed the directory in this very second, and rsync may
    # compare whole seconds: an old time makes the one the new file gives it differ for sure
    os.utime(a.files, (1_000_000_000, 1_000_000_000))
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
    roles: dict[str, Node], tmp_path_factory: pytest.TempPathFactory, authority: Authority
) -> None:
    base = tmp_path_factory.mktemp("rsync-timer")
    c = make_node(base, "c", authority.issue("c"), interval=0.3)
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
        # five timer periods, each of which would have pulled it (as just seen above)
        holds_for(lambda: not (c.files / name).exists(), 5 * 0.3, what="a source pulls nothing")
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
    src = make_node(tmp_path, "src", None)
    dst = make_node(tmp_path, "dst", None)
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


# -- who may read, and whom a mirror believes ------------------------------------------------


def test_non_members_are_refused(
    pair: dict[str, Node], tmp_path: Path, stranger: Authority
) -> None:
    """Only a client with a certificate from the cluster CA *and* the secret reads a file."""
    a, b = pair["a"], pair["b"]
    secret = unique("secret")
    (a.files / secret).write_text("for members only")
    port = a.backend.config.port
    module = f"rsync://hacore@127.0.0.1:{port}/hacore-files/"
    wrong, right = secret_files(tmp_path)

    def pull(env: dict[str, str], *args: str) -> str:
        """rsync's error output; "" when the file arrived."""
        dest = tmp_path / unique("copy")
        done = subprocess.run(
            ["rsync", "-r", *args, module, f"{dest}/"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        if (dest / secret).exists():
            assert done.returncode == 0
            return ""
        assert done.returncode != 0
        return done.stderr

    member = connect(b.backend, port)
    assert pull(member, f"--password-file={right}") == ""  # the control
    assert "auth failed" in pull(member)
    assert "auth failed" in pull(member, f"--password-file={wrong}")
    # a certificate from another CA, with the right secret; the client trusts the server
    ours, theirs = b.backend.tls, stranger.issue("outsider")
    assert ours is not None
    command = member["RSYNC_CONNECT_PROG"]
    foreign = command.replace(str(ours.cert_file), str(theirs.cert_file))
    foreign = foreign.replace(str(ours.key_file), str(theirs.key_file))
    assert foreign != command
    assert "unknown ca" in pull(
        {**member, "RSYNC_CONNECT_PROG": foreign}, f"--password-file={right}"
    )
    # no certificate at all
    anonymous = re.sub(r" -cert \S+ -key \S+", "", command)
    assert "-cert" not in anonymous
    refused = pull({**member, "RSYNC_CONNECT_PROG": anonymous}, f"--password-file={right}")
    assert "certificate required" in refused
    # the daemon protocol in clear text, as before TLS
    clear = {k: v for k, v in member.items() if k != "RSYNC_CONNECT_PROG"}
    assert pull(clear, f"--password-file={right}", "--contimeout=10", "--timeout=10")


def test_a_forged_source_is_not_believed(
    pair: dict[str, Node], tmp_path: Path, authority: Authority, stranger: Authority
) -> None:
    """A server whose certificate the cluster CA did not sign, or signed for another address,
    gets no pull: the mirror refuses it before it sends anything, and keeps its files."""
    b = pair["b"]
    kept = unique("kept")
    (b.files / kept).write_text("the mirror's last good copy")
    forgeries = {
        "forged": stranger.issue("forged"),
        # a member's certificate that does not name the address the mirror dials
        "elsewhere": authority.issue("elsewhere", ("10.255.0.1",)),
    }
    try:
        for name, tls in forgeries.items():
            fake = make_node(tmp_path, name, tls, password=PASSWORD)
            (fake.files / "planted").write_text("from an impostor")
            fake.backend.start()
            try:
                fake.backend.become_source()
                peers = {"a": pair["a"].backend.identity(), name: fake.backend.identity()}
                b.backend.set_peers({**peers, "b": b.backend.identity()})
                b.backend.become_mirror(name)
                with pytest.raises(FilesyncError, match="certificate is not trusted"):
                    b.backend.sync_now()
                state = b.backend.state()
                assert not state.in_sync
                assert "certificate is not trusted" in state.detail
                assert not (b.files / "planted").exists()
                assert (b.files / kept).read_text() == "the mirror's last good copy"
            finally:
                fake.backend.stop()
    finally:
        b.backend.set_peers({n: node.backend.identity() for n, node in pair.items()})
        b.backend.become_mirror("a")
        (b.files / kept).unlink(missing_ok=True)


def greeting(tls: TlsFiles, port: int) -> str:
    return rsync_greeting(tls.ca_file, tls.cert_file, tls.key_file, port)


def test_a_revoked_certificate_completes_no_handshake(tmp_path: Path, authority: Authority) -> None:
    """A removal revokes the node's certificate: the agent writes the cluster's new CRL to
    ``crl.pem`` beside the node's CA certificate, and within seconds the member's stunnel
    refuses that certificate while a member's still gets in; a mirror that holds the CRL
    does not believe a source with a revoked certificate either."""
    names = {role: unique(role) for role in ("served", "member", "removed")}
    served = make_node(tmp_path, "served", authority.issue(names["served"]))
    member, removed = authority.issue(names["member"]), authority.issue(names["removed"])
    assert served.backend.tls is not None
    crl = crl_path(served.backend.tls.ca_file)
    assert crl.is_file()  # an empty CRL, made with the node certificate
    served.backend.start()
    port = served.backend.config.port
    try:
        assert greeting(member, port) == ""
        assert greeting(removed, port) == ""  # before the removal: the control
        serial = x509.load_pem_x509_certificate(removed.cert_file.read_bytes()).serial_number
        install_crl(crl, build_crl(authority.ca, [serial]), authority.ca.certificate)
        wait_for(
            lambda: "revoked" in greeting(removed, port),
            30,
            what="stunnel refusing the revoked certificate",
        )
        assert greeting(member, port) == ""
        assert served.backend.daemon.running()
        # the other way: a mirror with the CRL refuses a source whose certificate is revoked
        mirror = make_node(tmp_path, "mirror", authority.issue(unique("mirror")))
        assert mirror.backend.tls is not None
        source = x509.load_pem_x509_certificate(served.backend.tls.cert_file.read_bytes())
        mirror_crl = crl_path(mirror.backend.tls.ca_file)
        install_crl(
            mirror_crl, build_crl(authority.ca, [source.serial_number]), authority.ca.certificate
        )
        command = mirror.backend.connect_command("127.0.0.1", port)
        assert f"-CRL {mirror_crl} -crl_check" in command
        done = subprocess.run(
            command, shell=True, capture_output=True, text=True, timeout=30,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert done.returncode != 0
        assert "certificate revoked" in done.stderr
    finally:
        served.backend.stop()


@pytest.mark.skipif(os.getuid() != 0, reason="device nodes and foreign owners need root")
def test_a_pull_plants_no_setuid_device_owner_or_escaping_symlink(roles: dict[str, Node]) -> None:
    a, b = roles["a"], roles["b"]
    sub = a.files / unique("hostile")
    sub.mkdir()
    (sub / "suid").write_bytes(b"#!/bin/sh\n")
    (sub / "suid").chmod(0o6755)
    (sub / "plain").write_text("a plain file")
    (sub / "plain").chmod(0o640)
    os.chown(sub / "plain", 12345, 12345)
    os.mknod(sub / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mkfifo(sub / "fifo")
    (sub / "passwd").symlink_to("/etc/passwd")
    (sub / "up").symlink_to("../../../../..")
    (sub / "inside").symlink_to("plain")
    b.backend.sync_now()
    got = b.files / sub.name
    mode = (got / "suid").stat().st_mode
    assert not mode & (stat.S_ISUID | stat.S_ISGID)
    assert stat.S_IMODE(mode) == 0o755
    assert stat.S_IMODE((got / "plain").stat().st_mode) == 0o640
    assert (got / "plain").stat().st_uid == os.getuid()
    assert (got / "plain").stat().st_gid == os.getgid()
    for absent in ("null", "fifo", "passwd", "up"):
        assert not os.path.lexists(got / absent), absent
    assert os.readlink(got / "inside") == "plain"
    assert b.backend.wait_in_sync(30).in_sync
    shutil.rmtree(sub)
    b.backend.sync_now()


def test_the_daemon_serves_nothing_outside_its_directory(
    roles: dict[str, Node], tmp_path: Path
) -> None:
    """A symlink in a served directory does not lead the (root) daemon out of it."""
    a = roles["a"]
    link = a.files / unique("etc")
    link.symlink_to("/etc")
    port = a.backend.config.port
    _, right = secret_files(tmp_path)
    try:
        done = subprocess.run(
            [
                "rsync",
                f"--password-file={right}",
                f"rsync://hacore@127.0.0.1:{port}/hacore-files/{link.name}/passwd",
                str(tmp_path / "stolen"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=connect(roles["b"].backend, port),
        )
        assert not (tmp_path / "stolen").exists(), done.stdout
        assert done.returncode != 0
    finally:
        link.unlink()


# -- the secret --------------------------------------------------------------------------------


def node_config(data_dir: Path, files: Path, **settings: object) -> NodeConfig:
    return load_config(
        {
            "node": {"name": data_dir.name, "host": "127.0.0.1", "data_dir": str(data_dir)},
            "consensus": {"backend": "etcd"},
            "replication": {"backend": "postgresql"},
            "filesync": {"backend": "rsync", "directories": [str(files)], **settings},
        }
    )


def join_request(name: str, extensions: dict[str, object]) -> JoinRequest:
    return JoinRequest(
        name=name,
        host="127.0.0.1",
        api_url="https://127.0.0.1:1",
        version="0",
        empty=True,
        not_empty="",
        consensus_backend="etcd",
        managed=False,
        replication_backend="postgresql",
        extensions=extensions,
    )


def test_the_secret_is_made_once_and_handed_over_in_the_join_ticket(
    tmp_path: Path, authority: Authority
) -> None:
    part = RsyncSecretPart()
    founder = node_config(tmp_path / "founder", tmp_path / "founder-files" / "shared")
    joiner = node_config(tmp_path / "joiner", tmp_path / "joiner-files" / "shared")
    with pytest.raises(UnavailableError, match="no rsync secret yet"):
        part.grant(founder, join_request("joiner", {part.name: part.request(joiner)}))

    def backend(config: NodeConfig) -> RsyncFilesync:
        assert config.filesync is not None
        return RsyncFilesync(
            {"port": free_port(), "interval": 3600},
            node_name=config.node.name,
            host="127.0.0.1",
            data_dir=config.node.data_dir / "filesync",
            directories=config.filesync.directories,
            tls=authority.issue(config.node.name),
        )

    source = backend(founder)
    source.start()
    try:
        home = source.home
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        secret_file = home / "secret"
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        made = secret_file.read_text()
        source.stop()
        source.start()
        assert secret_file.read_text() == made  # kept across restarts

        # a joiner that asks (it runs rsync) gets it; one that does not, does not
        granted = part.grant(founder, join_request("joiner", {part.name: part.request(joiner)}))
        assert granted == {"secret": made.strip()}
        assert part.grant(founder, join_request("other", {})) == {}
        with pytest.raises(HacoreError, match="carries no rsync secret"):
            part.accept(joiner, {})
        part.accept(joiner, granted)
        mirror = backend(joiner)
        assert (mirror.home / "secret").read_text() == made
        assert stat.S_IMODE((mirror.home / "secret").stat().st_mode) == 0o600
        (source.directories[0] / "shared.txt").write_text("with the ticket's secret")
        mirror.start()
        try:
            ids = {"founder": source.identity(), "joiner": mirror.identity()}
            source.set_peers(ids)
            mirror.set_peers(ids)
            source.become_source()
            mirror.become_mirror("founder")
            mirror.sync_now()
            assert (mirror.directories[0] / "shared.txt").read_text() == "with the ticket's secret"
            # a node that made its own secret is no member
            (mirror.home / PASSWORD_FILE).write_text("made-up\n")
            with pytest.raises(FilesyncError, match="auth failed"):
                mirror.sync_now()
        finally:
            mirror.stop()
    finally:
        source.stop()


@pytest.mark.parametrize("bad", ["new\nline", "tab\there", "nul-free\x1b[0m"])
def test_paths_with_control_characters_are_refused(tmp_path: Path, bad: str) -> None:
    node = make_node(tmp_path, "ctl", None)
    node.backend.directories = (tmp_path / bad,)
    node.backend.modules = {"hacore-ctl": tmp_path / bad}
    with pytest.raises(FilesyncError, match="control characters"):
        node.backend.start()
    assert not node.backend.daemon.running()
    assert not (node.backend.home / "rsyncd.conf").exists()
    node.backend.stop()


@pytest.mark.parametrize("tls", [True, False], ids=["tls", "plain"])
def test_proxies_and_rsync_settings_in_the_environment_are_ignored(
    tmp_path: Path, authority: Authority, monkeypatch: pytest.MonkeyPatch, tls: bool
) -> None:
    """rsync obeys RSYNC_PROXY and RSYNC_CONNECT_PROG from its environment: a mirror must
    dial its source itself, whatever the agent's environment holds."""
    src = make_node(tmp_path, "src", authority.issue("src") if tls else None)
    dst = make_node(tmp_path, "dst", authority.issue("dst") if tls else None)
    dead = f"127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, f"http://{dead}")
    monkeypatch.setenv("RSYNC_PROXY", dead)
    monkeypatch.setenv("RSYNC_CONNECT_PROG", f"exec 3<>/dev/tcp/{dead.replace(':', '/')}")
    try:
        for node in (src, dst):
            node.backend.start()
        identities = {n.name: n.backend.identity() for n in (src, dst)}
        for node in (src, dst):
            node.backend.set_peers(identities)
        src.backend.become_source()
        dst.backend.become_mirror("src")
        (src.files / "proxied.txt").write_text("straight to the source")
        dst.backend.sync_now()
        assert (dst.files / "proxied.txt").read_text() == "straight to the source"
    finally:
        for node in (src, dst):
            node.backend.stop()


def test_a_rotated_secret_wins_over_the_password_setting(
    tmp_path: Path, authority: Authority
) -> None:
    """node.yaml's ``password`` is the value the removed node knew: once a removal rotated
    the secret, the rotated one is what the daemon wants and the pulls send, after a restart
    too, and what a joiner's ticket carries."""
    configs = {
        name: node_config(tmp_path / name, tmp_path / f"{name}-files" / "shared", password=PASSWORD)
        for name in ("src", "dst", "joiner")
    }

    def backend(name: str) -> RsyncFilesync:
        filesync = configs[name].filesync
        assert filesync is not None
        return RsyncFilesync(
            {**filesync.settings, "port": free_port(), "interval": 3600},
            node_name=name,
            host="127.0.0.1",
            data_dir=configs[name].node.data_dir / "filesync",
            directories=filesync.directories,
            tls=authority.issue(unique(name)),
        )

    source, mirror = backend("src"), backend("dst")
    nodes = (source, mirror)
    port = source.config.port
    module = f"rsync://hacore@127.0.0.1:{port}/hacore-shared/"
    old, _ = secret_files(tmp_path)
    old.write_text(PASSWORD + "\n")  # the setting's value, as the removed node held it

    def pull_with(password_file: Path) -> str:
        dest = tmp_path / unique("copy")
        done = subprocess.run(
            ["rsync", "-r", f"--password-file={password_file}", module, f"{dest}/"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
            env=connect(mirror, port),
        )  # fmt: skip
        return "" if done.returncode == 0 else done.stderr

    def roles() -> None:
        ids = {n.node_name: n.identity() for n in nodes}
        for node in nodes:
            node.set_peers(ids)
        source.become_source()
        mirror.become_mirror("src")

    def arrives(name: str) -> bool:
        (source.directories[0] / name).write_text(name)
        mirror.sync_now()
        return (mirror.directories[0] / name).exists()

    try:
        for node in nodes:
            node.start()
        roles()
        assert pull_with(old) == ""  # the control: the setting's password opens it
        rotated = "rotated-" + uuid.uuid4().hex
        for node in nodes:
            note = node.use_secret(rotated)
            assert note is not None and "filesync.password" in note
        assert "auth failed" in pull_with(old)
        assert arrives("after.txt")
        # a restart reads node.yaml's password again: the rotated secret still wins
        for node in nodes:
            node.stop()
            node.start()
        roles()
        assert "auth failed" in pull_with(old)
        assert arrives("restarted.txt")
        # and a joiner gets the rotated secret in its ticket, and uses it
        part = RsyncSecretPart()
        request = join_request("joiner", {part.name: part.request(configs["joiner"])})
        granted = part.grant(configs["src"], request)
        assert granted == {"secret": rotated}
        part.accept(configs["joiner"], granted)
        joined = backend("joiner")
        joined.start()
        try:
            assert (joined.home / "rsyncd.secrets").read_text() == f"hacore:{rotated}\n"
            assert (joined.home / PASSWORD_FILE).read_text() == f"{rotated}\n"
        finally:
            joined.stop()
    finally:
        for node in nodes:
            node.stop()
