"""The Syncthing filesync plugin on three real Syncthing instances (loopback, temp dirs).

Node ``a`` starts as the source, ``b`` and ``c`` mirror it; ``c`` receives at a limited rate,
so a 50 MB transfer to it lasts long enough to be seen in progress. Tests that change roles
or peers put them back in the ``roles`` fixture.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from hacore.backends.filesync import SyncState
from hacore.backends.processes import descendants
from hacore.errors import ConfigError, FilesyncError
from hacore.plugins.registry import load_plugins
from hacore.testing.procs import free_port, holds_for, wait_for
from hacore_plugins import syncthing as syncthing_plugin
from hacore_plugins.syncthing import SyncthingFilesync, first_copy
from hacore_plugins.syncthing import home as st_home
from hacore_plugins.syncthing.api import SyncthingApi
from hacore_plugins.syncthing.folders import FolderPolicy, Peer, desired_config

pytestmark = pytest.mark.skipif(
    shutil.which("syncthing") is None, reason="no syncthing binary on PATH"
)

#: c receives at ~24 MB/s: a 50 MB file takes ~2 s to reach it
THROTTLED_KBPS = 24_000
BIG = 50 * 1024 * 1024


@attrs.define
class Node:
    name: str
    backend: SyncthingFilesync
    files: Path

    def path(self, name: str) -> Path:
        return self.files / name


@attrs.define
class Cluster:
    nodes: dict[str, Node]
    source: str = "a"

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def identities(self, *names: str) -> dict[str, dict[str, object]]:
        return {n: self.nodes[n].backend.identity() for n in names or self.nodes}

    def set_all_peers(self) -> None:
        for node in self.nodes.values():
            node.backend.set_peers(self.identities())

    def make_source(self, name: str) -> None:
        self.nodes[name].backend.become_source()
        for other in self.nodes.values():
            if other.name != name:
                other.backend.become_mirror(name)
        self.source = name


def make_node(base: Path, name: str, **settings: object) -> Node:
    files = base / name / "files"
    backend = SyncthingFilesync(
        {"listen_port": free_port(), **settings},
        node_name=name,
        host="127.0.0.1",
        data_dir=base / name / "data",
        directories=[files],
    )
    return Node(name, backend, files)


#: the module's cluster while it runs, for :func:`failure_story`
LIVE: list[Cluster] = []
#: lines of each Syncthing log a failing test's report shows
STORY_LINES = 40


def failure_story() -> str:
    """What each instance is connected to, says of its sync and last logged: a failure
    under CI's load is rarely seen again alone (tests/integration/conftest.py adds it)."""
    parts: list[str] = []
    for cluster in LIVE:
        for node in cluster.nodes.values():
            backend = node.backend
            try:
                peers = ", ".join(backend.connected_peers()) or "none"
                detail = backend.state().detail
            except Exception as err:
                peers, detail = "?", f"unreadable: {err!r}"
            log_path = backend.process.log_path
            lines = log_path.read_text(errors="replace").splitlines() if log_path.exists() else []
            parts.append(
                f"--- {node.name}: connected to {peers}; {detail}\n"
                + "\n".join(lines[-STORY_LINES:])
            )
    return "\n".join(parts)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("syncthing")
    nodes = {
        "a": make_node(base, "a"),
        "b": make_node(base, "b"),
        "c": make_node(base, "c", max_recv_kbps=THROTTLED_KBPS),
    }
    started: list[Node] = []
    try:
        threads = [threading.Thread(target=n.backend.start) for n in nodes.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        started = [n for n in nodes.values() if n.backend.process.running()]
        assert len(started) == 3, "a Syncthing instance did not start"
        cluster = Cluster(nodes)
        LIVE.append(cluster)
        cluster.set_all_peers()
        cluster.make_source("a")
        yield cluster
    finally:
        LIVE.clear()
        for node in nodes.values():
            node.backend.stop()


@pytest.fixture
def roles(cluster: Cluster) -> Iterator[Cluster]:
    """a is the source, b and c mirror it, everyone is a peer and in sync."""
    cluster.set_all_peers()
    if cluster.source != "a":
        cluster.make_source("a")
    cluster["a"].backend.wait_in_sync(60)
    yield cluster
    cluster.set_all_peers()
    if cluster.source != "a":
        cluster.make_source("a")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}.txt"


def wait_content(path: Path, content: str, timeout: float = 30.0) -> None:
    wait_for(
        lambda: path.exists() and path.read_text() == content,
        timeout,
        what=f"{path} to hold {content!r}",
    )


def wait_gone(path: Path, timeout: float = 30.0) -> None:
    wait_for(lambda: not path.exists(), timeout, what=f"{path} to disappear")


# -- settings and registration (no process) --------------------------------------------------


def test_registered_as_a_filesync_backend() -> None:
    plugins = load_plugins([syncthing_plugin], entry_points=False)
    assert plugins.registry.filesync("syncthing") is SyncthingFilesync


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"port": 1}, 'unknown key "port" in filesync; did you mean'),
        ({"api_url": "http://127.0.0.1:8384"}, "together"),
        ({"api_url": "ftp://x", "api_key": "k"}, "must be a URL"),
        ({"api_url": "unix://relative.sock", "api_key": "k"}, "must be a URL"),
        ({"listen_port": 70000}, "TCP port"),
        ({"api_port": 9000, "listen_port": 9000}, "both 9000"),
        ({"api_port": 1, "gui_port": 2}, "another name"),
        ({"home": "relative/dir"}, "absolute"),
        ({"low_priority": "maybe"}, "low_priority must be true or false"),
    ],
)
def test_bad_settings_are_refused(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SyncthingFilesync.validate_settings(settings)


def test_directories_with_the_same_name_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="same name"):
        SyncthingFilesync(
            {},
            node_name="n",
            host="127.0.0.1",
            data_dir=tmp_path,
            directories=[tmp_path / "x" / "files", tmp_path / "y" / "files"],
        )


def _config(folders: list[dict[str, object]], devices: list[str]) -> dict[str, object]:
    return {
        "devices": [{"deviceID": d, "name": d} for d in devices],
        "folders": folders,
        "defaults": {"folder": {"type": "sendreceive", "maxConflicts": 10}, "device": {}},
    }


def _shared(*devices: str) -> list[dict[str, str]]:
    return [{"deviceID": d} for d in devices]


@pytest.mark.parametrize("managed", [True, False])
def test_desired_config_touches_only_what_hacore_owns(managed: bool) -> None:
    current = _config(
        [
            {"id": "photos", "type": "sendreceive", "devices": _shared("ME", "FOREIGN")},
            {"id": "hacore-files", "type": "sendonly", "devices": _shared("ME", "GONE")},
            {"id": "hacore-dropped", "type": "sendonly", "devices": _shared("ME")},
        ],
        ["ME", "FOREIGN", "GONE", "B"],
    )
    wanted = desired_config(
        current,
        own_id="ME",
        peers={"b": Peer("b", "B", "tcp://10.0.0.2:22000"), "z": Peer("z", "Z", "tcp://z:1")},
        folders={"hacore-files": Path("/srv/files"), "hacore-new": Path("/srv/new")},
        new_folder_type="receiveonly",
        policy=FolderPolicy(watcher_delay=1, rescan_interval=300),
        managed=managed,
    )
    devices = {d["deviceID"]: d for d in wanted["devices"]}
    # GONE shared a hacore folder and is no peer any more; FOREIGN is someone else's peer
    assert set(devices) == ({"ME", "B", "Z"} if managed else {"ME", "B", "Z", "FOREIGN"})
    # hacore's own instance dials only the peers whose device ID sorts after its own (B waits
    # for B to call); one someone else runs dials every peer
    assert devices["B"]["addresses"] == (["dynamic"] if managed else ["tcp://10.0.0.2:22000"])
    assert devices["Z"]["addresses"] == ["tcp://z:1"]
    assert devices["B"]["name"] == "b"
    assert devices["B"]["autoAcceptFolders"] is False
    folders = {f["id"]: f for f in wanted["folders"]}
    assert set(folders) == {"photos", "hacore-files", "hacore-new"}
    assert folders["photos"] == {
        "id": "photos",
        "type": "sendreceive",
        "devices": _shared("ME", "FOREIGN"),
    }
    assert folders["hacore-files"]["type"] == "sendonly"  # roles change types, not peers
    assert folders["hacore-new"]["type"] == "receiveonly"
    assert folders["hacore-new"]["maxConflicts"] == 10  # built on Syncthing's defaults
    for folder_id in ("hacore-files", "hacore-new"):
        assert [d["deviceID"] for d in folders[folder_id]["devices"]] == ["ME", "B", "Z"]
        assert folders[folder_id]["fsWatcherDelayS"] == 1
        assert folders[folder_id]["rescanIntervalS"] == 300


def test_a_taken_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        node = make_node(tmp_path, "x", listen_port=port)
        try:
            with pytest.raises(
                FilesyncError, match=f"listen port {port} on 127.0.0.1 is already in use"
            ):
                node.backend.start()
            assert not node.backend.process.running()
        finally:
            node.backend.stop()


# -- one engine -------------------------------------------------------------------------------


def test_identity_and_hardened_config(cluster: Cluster) -> None:
    backend = cluster["a"].backend
    identity = backend.identity()
    assert identity["address"] == f"tcp://127.0.0.1:{backend.config.listen_port}"
    assert len(str(identity["device_id"]).split("-")) == 8
    api = SyncthingApi(backend.api_url, st_home.api_key(backend.home), timeout=10)
    try:
        config = api.config()
    finally:
        api.close()
    options = config["options"]
    assert not options["globalAnnounceEnabled"]
    assert not options["localAnnounceEnabled"]
    assert not options["relaysEnabled"]
    assert not options["natEnabled"]
    assert options["urAccepted"] == -1
    assert options["autoUpgradeIntervalH"] == 0
    assert options["reconnectionIntervalS"] == 5
    assert config["gui"]["address"] == str(backend.home / "api.sock")
    (folder,) = [f for f in config["folders"] if f["id"] == "hacore-files"]
    assert folder["type"] == "sendonly"
    assert folder["fsWatcherDelayS"] == 1
    assert {d["deviceID"] for d in folder["devices"]} == {
        str(cluster[n].backend.identity()["device_id"]) for n in "abc"
    }
    assert options["setLowPriority"] is False
    for device in config["devices"]:
        if device["deviceID"] != identity["device_id"]:
            assert not device["autoAcceptFolders"]
    # of each pair of nodes, exactly one dials the other (at its static address)
    for x, y in (("a", "b"), ("a", "c"), ("b", "c")):
        calls = [_dials(cluster[p].backend, cluster[q].backend) for p, q in ((x, y), (y, x))]
        assert sorted(calls) == [False, True], (x, y, calls)


def _dials(caller: SyncthingFilesync, callee: SyncthingFilesync) -> bool:
    """Whether ``caller``'s Syncthing dials ``callee`` (the callee's address in its config)."""
    api = SyncthingApi(caller.api_url, st_home.api_key(caller.home), timeout=10)
    try:
        (device,) = [
            d for d in api.config()["devices"] if d["deviceID"] == callee.identity()["device_id"]
        ]
    finally:
        api.close()
    if device["addresses"] == ["dynamic"]:
        return False
    (address,) = device["addresses"]
    assert address.split("?")[0] == callee.identity()["address"], address
    return True


# -- the source's files reach the mirrors ---------------------------------------------------


def test_file_written_on_the_source_reaches_every_mirror(roles: Cluster) -> None:
    name = unique("scan")
    roles["a"].path(name).write_text("from a")
    roles["a"].backend.scan()
    for mirror in "bc":
        wait_content(roles[mirror].path(name), "from a")
    roles["a"].path(name).unlink()
    roles["a"].backend.scan()
    for mirror in "bc":
        wait_gone(roles[mirror].path(name))


def test_the_watcher_propagates_without_an_explicit_scan(roles: Cluster) -> None:
    name = unique("watched")
    roles["a"].path(name).write_text("noticed by the watcher")
    for mirror in "bc":
        wait_content(roles[mirror].path(name), "noticed by the watcher", timeout=90)


def test_the_source_announces_finished_files_without_syncthing_s_watcher(
    roles: Cluster, tmp_path: Path
) -> None:
    """With Syncthing's own watcher off and no rescan due for an hour, only the plugin's scan
    of what its writers finished (scan_on_change, on by default) can announce these files."""
    source = roles["a"].backend
    api = SyncthingApi(source.api_url, st_home.api_key(source.home), timeout=10)
    folder = next(iter(source.folders))
    try:
        api.patch_folder(folder, {"fsWatcherEnabled": False, "rescanIntervalS": 3600})
        wait_for(
            lambda: (
                not api.config()["folders"][0]["fsWatcherEnabled"]
                and api.folder_status(folder).get("state") == "idle"
            ),
            30,
            what="a's folder without its watcher",
        )
        written = unique("closed")
        roles["a"].path(written).write_text("written in place")
        staged = tmp_path / unique("renamed")
        staged.write_text("renamed into place")
        os.rename(staged, roles["a"].path(staged.name))
        (roles["a"].path(unique("dir"))).mkdir()
        for mirror in "bc":
            wait_content(roles[mirror].path(written), "written in place", timeout=30)
            wait_content(roles[mirror].path(staged.name), "renamed into place", timeout=30)
        roles["a"].path(written).unlink()
        for mirror in "bc":
            wait_gone(roles[mirror].path(written), timeout=30)
    finally:
        api.patch_folder(folder, {"fsWatcherEnabled": True, "rescanIntervalS": 300})
        api.close()


def test_a_write_on_a_mirror_does_not_leak_back_and_is_reverted(roles: Cluster) -> None:
    kept = unique("kept")
    roles["a"].path(kept).write_text("the source's version")
    roles["a"].backend.scan()
    wait_content(roles["b"].path(kept), "the source's version")
    stray = unique("stray")
    roles["b"].path(stray).write_text("written on a standby")
    roles["b"].path(kept).write_text("changed on a standby")
    wait_gone(roles["b"].path(stray))
    wait_content(roles["b"].path(kept), "the source's version")
    roles["b"].backend.wait_in_sync(30)
    roles["a"].backend.wait_in_sync(30)
    for other in "ac":
        assert not roles[other].path(stray).exists()
        assert roles[other].path(kept).read_text() == "the source's version"


# -- role changes ---------------------------------------------------------------------------


def test_after_a_flip_the_new_source_reaches_the_old_one(roles: Cluster) -> None:
    roles.make_source("b")
    name = unique("flipped")
    roles["b"].path(name).write_text("from the new source")
    roles["b"].backend.scan()
    for mirror in "ac":
        wait_content(roles[mirror].path(name), "from the new source")
    stray = unique("old-source-write")
    roles["a"].path(stray).write_text("the old source is a mirror now")
    wait_gone(roles["a"].path(stray))
    roles["b"].backend.wait_in_sync(30)
    assert not roles["b"].path(stray).exists()
    assert not roles["c"].path(stray).exists()


def test_failover_discards_what_the_dead_source_never_sent(roles: Cluster) -> None:
    shared = unique("shared")
    roles["a"].path(shared).write_text("v1")
    roles["a"].backend.wait_in_sync(30)
    a = roles["a"]
    a.backend.stop()
    try:
        assert not a.backend.process.running()
        # written by the old active after its last sync (it died before it could send them)
        lost = unique("lost")
        a.path(lost).write_text("never sent")
        a.path(shared).write_text("v2, never sent")
        roles["b"].backend.become_source()
        roles["c"].backend.become_mirror("b")
        roles.source = "b"
        after = unique("after-failover")
        roles["b"].path(after).write_text("written by the new active")
        roles["b"].backend.scan()
        wait_content(roles["c"].path(after), "written by the new active")
        assert roles["b"].path(shared).read_text() == "v1"
    finally:
        a.backend.start()
    # Back, but not told its role yet: it announces nothing it wrote while it was down.
    wait_for(lambda: a.backend.connected_peers() == ["b", "c"], 30, what="a to reconnect")
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert not roles["b"].path(lost).exists()
        assert not roles["c"].path(lost).exists()
        time.sleep(0.05)
    a.backend.become_mirror("b")
    wait_content(a.path(after), "written by the new active")
    wait_gone(a.path(lost))
    wait_content(a.path(shared), "v1")
    roles["b"].backend.wait_in_sync(30)
    for node in "bc":
        assert not roles[node].path(lost).exists()
        assert roles[node].path(shared).read_text() == "v1"


def test_a_lagging_mirror_that_takes_over_makes_its_copy_the_truth(roles: Cluster) -> None:
    a, c = roles["a"], roles["c"]
    big = unique("half-sent")
    a.path(big).write_bytes(os.urandom(BIG))
    a.backend.scan()
    try:
        # c (slow) has heard of the file and is fetching it when the source dies.
        wait_for(lambda: c.backend.state().need_bytes > 0, 30, what="c to start fetching")
        a.backend.stop()
        c.backend.become_source()
        roles["b"].backend.become_mirror("c")
        roles.source = "c"
        assert not c.path(big).exists()
        # What c never got is gone everywhere, so every copy is c's again.
        c.backend.wait_in_sync(60, peers=["b"])
        assert not roles["b"].path(big).exists()
    finally:
        a.backend.start()
    a.backend.become_mirror("c")
    wait_gone(a.path(big))
    c.backend.wait_in_sync(60)


def test_a_restarted_source_keeps_what_it_wrote_while_down(roles: Cluster) -> None:
    a = roles["a"]
    a.backend.stop()
    name = unique("while-down")
    try:
        a.path(name).write_text("written while Syncthing was down")
    finally:
        a.backend.start()
    assert not a.backend.state().in_sync  # no role yet
    a.backend.become_source()
    for mirror in "bc":
        wait_content(roles[mirror].path(name), "written while Syncthing was down")


# -- state and waiting ---------------------------------------------------------------------


def test_state_is_not_in_sync_while_a_large_file_transfers(roles: Cluster) -> None:
    big = roles["a"].path(unique("big"))
    big.write_bytes(os.urandom(BIG))
    try:
        roles["a"].backend.scan()
        # The source counts what c lacks from the moment the scan indexed the file.
        source_state = roles["a"].backend.state()
        assert not source_state.in_sync
        assert source_state.need_bytes >= BIG
        assert source_state.completion < 100
        assert "hacore-files" in source_state.detail
        # c receives slowly: its own view shows the transfer in progress.
        seen: list[SyncState] = []

        def c_needs() -> bool:
            seen.append(roles["c"].backend.state())
            return seen[-1].need_bytes > 0

        wait_for(c_needs, 20, what="c to report what it still needs")
        assert not seen[-1].in_sync
        assert seen[-1].completion < 100
        assert roles["a"].backend.wait_in_sync(120).in_sync
        assert roles["c"].backend.state().in_sync
        assert roles["c"].path(big.name).stat().st_size == BIG
        assert roles["b"].path(big.name).stat().st_size == BIG
    finally:
        big.unlink()
        roles["a"].backend.scan()


def test_wait_in_sync_says_which_folder_and_how_much_is_missing(roles: Cluster) -> None:
    big = roles["a"].path(unique("big"))
    big.write_bytes(os.urandom(BIG))
    try:
        started = time.monotonic()
        with pytest.raises(FilesyncError) as caught:
            roles["a"].backend.wait_in_sync(0.5)
        assert time.monotonic() - started < 30
        message = str(caught.value)
        assert "not in sync after 0.5s" in message
        assert "folder hacore-files" in message
        assert "c misses" in message
        missing = int(message.split("c misses ")[1].split(" bytes")[0])
        assert 0 < missing <= BIG
    finally:
        big.unlink()
        roles["a"].backend.scan()


def test_a_removed_peer_no_longer_receives_files(roles: Cluster) -> None:
    without_c = roles.identities("a", "b")
    roles["a"].backend.set_peers(without_c)
    roles["b"].backend.set_peers(without_c)
    name = unique("after-removal")
    roles["a"].path(name).write_text("not for c")
    roles["a"].backend.scan()
    wait_content(roles["b"].path(name), "not for c")
    # The source's view no longer counts c: in sync although c lacks the file.
    assert roles["a"].backend.wait_in_sync(30).in_sync
    assert roles["a"].backend.state().detail == "in sync with b"
    c_state = wait_for(lambda: not roles["c"].backend.state().in_sync, 30, what="c out of sync")
    assert c_state
    assert "not connected to a" in roles["c"].backend.state().detail
    # Dropped by a and b, c keeps no connection, so nothing can reach it; watched all along
    # for as long as a copy took b above (and more), not slept through. c still calls them
    # (it does not know it was removed), and a refused call is a connection for a moment:
    # only one seen twice, the same one 0.2 s later, counts as kept.
    api = roles["c"].backend._require_api()
    seen: dict[str, str] = {}

    def kept() -> set[str]:
        now = {d: str(c.get("startedAt")) for d, c in api.connections().items() if c["connected"]}
        lasting = {d for d, started in now.items() if seen.get(d) == started}
        seen.clear()
        seen.update(now)
        return lasting

    kept()
    wait_for(lambda: not kept(), 30, interval=0.2, what="c to keep no connection")

    def nothing_reaches_c() -> bool:
        assert not roles["c"].path(name).exists(), "the removed peer got the file"
        return not kept()

    holds_for(nothing_reaches_c, 2.0, interval=0.2, what="c cut off")
    roles.set_all_peers()
    wait_content(roles["c"].path(name), "not for c")


def test_a_new_mirror_is_not_in_sync_before_the_source_index_arrived(
    roles: Cluster, tmp_path: Path
) -> None:
    """A joining mirror that is connected but has no index from the source yet knows of no
    file, so it "needs" nothing: it must not say it is in sync (the join waits on it)."""
    a = roles["a"]
    name = unique("before-join")
    a.path(name).write_text("held back")
    a.backend.scan()
    d = make_node(tmp_path, "d")
    api = SyncthingApi(a.backend.api_url, st_home.api_key(a.backend.home), timeout=10)

    def pause(paused: bool) -> None:
        config = api.config()
        for folder in config["folders"]:
            if folder["id"] in a.backend.folders:
                folder["paused"] = paused
        api.put_config(config)

    d.backend.start()
    try:
        peers = {**roles.identities(), "d": d.backend.identity()}
        a.backend.set_peers(peers)
        # a shares no index of a paused folder; d accepts a only once it knows it (next
        # line), so no index can have slipped through before the pause
        pause(True)
        d.backend.set_peers(peers)
        d.backend.become_mirror("a")
        wait_for(
            lambda: "not connected" not in d.backend.state().detail, 60, what="d connected to a"
        )

        # Watched all along for time enough for an index, were one sent (not slept through).
        def waiting_for_the_index() -> bool:
            state = d.backend.state()
            assert not state.in_sync, state.detail
            assert "has not received a's index yet" in state.detail, state.detail
            return True

        holds_for(waiting_for_the_index, 2.0, interval=0.2, what="d without a's index")
        assert not d.path(name).exists()
        pause(False)
        assert d.backend.wait_in_sync(60).in_sync
        assert d.path(name).read_text() == "held back"
    finally:
        pause(False)
        d.backend.stop()


def _fsync_disabled(backend: SyncthingFilesync) -> bool:
    api = SyncthingApi(backend.api_url, st_home.api_key(backend.home), timeout=10)
    try:
        (folder,) = [f for f in api.config()["folders"] if f["id"] == "hacore-files"]
    finally:
        api.close()
    return bool(folder["disableFsync"])


def test_an_empty_mirror_says_in_sync_only_once_its_first_copy_is_on_disk(
    roles: Cluster, tmp_path: Path
) -> None:
    """An empty mirror receives its first copy without Syncthing's fsync per file, marked
    in its home, and says in sync only after the copy is flushed and the fsync back on."""
    a = roles["a"]
    name = unique("first-copy")
    a.path(name).write_text("first")
    a.backend.scan()
    d = make_node(tmp_path, "d")
    api = SyncthingApi(a.backend.api_url, st_home.api_key(a.backend.home), timeout=10)

    def pause(paused: bool) -> None:
        api.patch_folder("hacore-files", {"paused": paused})

    d.backend.start()
    try:
        roles.nodes["d"] = d
        peers = roles.identities()
        a.backend.set_peers(peers)
        # a's index is held back (set_peers unpauses: so after it): d's copy cannot complete
        pause(True)
        d.backend.set_peers(peers)
        d.backend.become_mirror("a")
        mark = first_copy.mark_path(d.backend.home, "hacore-files")
        assert mark.exists()
        assert _fsync_disabled(d.backend)
        assert "first copy still to flush" in d.backend.state().detail
        pause(False)
        assert d.backend.wait_in_sync(60).in_sync
        assert d.path(name).read_text() == "first"
        assert not mark.exists()
        assert not _fsync_disabled(d.backend)
    finally:
        pause(False)
        api.close()
        roles.nodes.pop("d", None)
        d.backend.stop()


def test_an_empty_node_copies_nothing_before_its_role(roles: Cluster, tmp_path: Path) -> None:
    """A new node's empty folder waits, paused, until become_mirror chooses how it is filled
    (without fsync per file, or a seed): connected before that, it receives nothing."""
    a = roles["a"]
    name = unique("held")
    a.path(name).write_text("waits for the role")
    a.backend.scan()
    d = make_node(tmp_path, "d")
    d.backend.start()
    try:
        roles.nodes["d"] = d
        roles.set_all_peers()
        wait_for(lambda: d.backend.connected_peers() == ["a", "b", "c"], 30, what="d connected")
        # a 19-byte file reaches a connected mirror in well under a second (the tests above)
        holds_for(lambda: not d.path(name).exists(), 3.0, what="nothing copied before the role")
        d.backend.become_mirror("a")
        assert first_copy.marked(d.backend.home, "hacore-files")
        assert d.backend.wait_in_sync(60).in_sync
        assert d.path(name).read_text() == "waits for the role"
    finally:
        roles.nodes.pop("d", None)
        d.backend.stop()


def test_a_first_copy_cut_short_is_checked_again_at_the_next_start(
    roles: Cluster, tmp_path: Path
) -> None:
    """After a crash during a first copy, Syncthing's database may list files whose data the
    disk lost: at the next start every file is hashed again and what differs is fetched."""
    a = roles["a"]
    name = unique("lost")
    a.path(name).write_text("the source's bytes")
    a.backend.scan()
    d = make_node(tmp_path, "d")
    d.backend.start()
    try:
        roles.nodes["d"] = d
        roles.set_all_peers()
        d.backend.become_mirror("a")
        wait_content(d.path(name), "the source's bytes")
        d.backend.wait_in_sync(60)
        d.backend.process.stop(signal.SIGKILL, timeout=10)
        d.backend.stop()
        # what a crash may leave: the same size and time, other bytes, the mark still there
        kept = d.path(name).stat()
        d.path(name).write_text("lost by a crash!!!")
        os.utime(d.path(name), ns=(kept.st_atime_ns, kept.st_mtime_ns))
        assert d.path(name).stat().st_size == kept.st_size
        first_copy.begin(d.backend.home, "hacore-files")
        d.backend.start()
        d.backend.become_mirror("a")
        wait_content(d.path(name), "the source's bytes", timeout=60)
        assert d.backend.wait_in_sync(60).in_sync
        assert not first_copy.mark_path(d.backend.home, "hacore-files").exists()
    finally:
        roles.nodes.pop("d", None)
        d.backend.stop()


#: Syncthing 1.19 takes connections one at a time and gives each Hello exchange 20 s: two
#: nodes dialing each other at once both wait that long
HELLO_DEADLINE = 20.0


def test_nodes_that_learn_of_each_other_at_once_connect_at_once(
    roles: Cluster, tmp_path: Path
) -> None:
    """A joining node and the source learn of each other at the same moment (as in a join):
    they connect well before two crossed dials would have timed out."""
    a = roles["a"]
    d = make_node(tmp_path, "d")
    d.backend.start()
    try:
        peers = {**roles.identities(), "d": d.backend.identity()}
        barrier = threading.Barrier(2)

        def learn(node: Node) -> None:
            barrier.wait()
            node.backend.set_peers(peers)

        threads = [threading.Thread(target=learn, args=(n,)) for n in (a, d)]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wait_for(lambda: d.backend.connected_peers() == ["a"], 60, what="d connected to a")
        took = time.monotonic() - began
        assert took < HELLO_DEADLINE / 2, f"d connected to a after {took:.1f} s"
    finally:
        d.backend.stop()


#: Syncthing's own next call after three refused ones comes 5-32 s later; hacore's within 1-2 s
CALLER_REDIAL_BOUND = 3.5


@pytest.mark.parametrize("ahead", [0.0, 0.3, 1.0])
def test_the_caller_calls_again_soon_when_it_learned_of_the_listener_first(
    roles: Cluster, tmp_path: Path, ahead: float
) -> None:
    """The node that dials (the smaller device ID) learns of a joiner ``ahead`` seconds
    before the joiner learns of it: its calls are refused until then. It calls again within
    a second or two, and the listener never calls: a call of its own could cross the
    caller's, and crossed calls stall both for Syncthing's 20 s Hello deadline."""
    a = roles["a"]
    d = make_node(tmp_path, "d")
    d.backend.start()
    try:
        peers = {**roles.identities(), "d": d.backend.identity()}
        a_id, d_id = (str(n.backend.identity()["device_id"]) for n in (a, d))
        caller, listener = (a, d) if a_id < d_id else (d, a)
        caller.backend.set_peers(peers)
        if ahead:
            caller_id = min(a_id, d_id)
            api = listener.backend._require_api()
            wait_for(lambda: caller_id in api.pending_devices(), 10, what="a refused call")
            time.sleep(ahead)
        began = time.monotonic()
        listener.backend.set_peers(peers)
        listening: list[bool] = []

        def connected() -> bool:
            listening.append(not _dials(listener.backend, caller.backend))
            return d.backend.connected_peers() == ["a"]

        wait_for(connected, 60, what="d connected to a")
        took = time.monotonic() - began
        assert took < CALLER_REDIAL_BOUND, f"d connected to a {took:.1f} s after both knew"
        assert all(listening), "the listener dialed the caller"
    finally:
        d.backend.stop()
        roles.set_all_peers()


# -- who reaches the REST API ------------------------------------------------------------------

#: run as another local user: reach the API at argv[1] the way a browser would (``/`` hands
#: out a CSRF token when no GUI user is set), then read the config with that token
OTHER_USER_PROBE = r"""
import re, socket, sys
url = sys.argv[1]

def ask(path, headers=""):
    if url.startswith("unix://"):
        conn = socket.socket(socket.AF_UNIX)
        conn.settimeout(10)
        conn.connect(url[len("unix://"):])
    else:
        host, port = url.split("//", 1)[1].rsplit(":", 1)
        conn = socket.create_connection((host, int(port)), timeout=10)
    conn.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n{headers}\r\n".encode())
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    return data.decode(errors="replace")

try:
    page = ask("/")
except OSError as err:
    print("refused:", type(err).__name__, err)
    sys.exit(3)
found = re.search(r"Set-Cookie: (CSRF-Token-\w+)=(\w+)", page)
if found:
    config = ask("/rest/system/config", f"X-{found[1]}: {found[2]}\r\n")
    print("config" if "apikey" in config.lower() else "no config", config[:200])
print("reached", page[:200])
"""


def test_another_local_user_cannot_reach_the_api(cluster: Cluster) -> None:
    if os.getuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("needs root and runuser to act as another user")
    try:
        other = pwd.getpwnam("postgres").pw_name
    except KeyError:
        pytest.skip("no postgres user to act as another local user")
    backend = cluster["a"].backend
    assert SyncthingApi(backend.api_url, st_home.api_key(backend.home), timeout=10).ping()
    done = subprocess.run(
        ["runuser", "-u", other, "--", "/usr/bin/python3", "-c", OTHER_USER_PROBE, backend.api_url],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert done.returncode == 3, done.stdout + done.stderr
    assert "refused: PermissionError" in done.stdout
    home = backend.home
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / st_home.CONFIG).stat().st_mode) == 0o600
    assert stat.S_IMODE((home / st_home.API_SOCKET).stat().st_mode) == 0o600
    # and nothing of it listens on TCP but the sync protocol
    pids = {str(backend.process.pid())} | {
        str(pid) for pid in descendants(backend.process.pid() or 0)
    }
    listening = subprocess.run(
        ["ss", "-Hltnp"], capture_output=True, text=True, timeout=10, check=True
    ).stdout.splitlines()
    ports = {
        line.split()[3].rsplit(":", 1)[1]
        for line in listening
        if any(f"pid={pid}," in line for pid in pids)
    }
    assert ports == {str(backend.config.listen_port)}


def test_the_config_file_is_never_readable_by_others(tmp_path: Path) -> None:
    """config.xml holds the API key: written 0600 from the start, whatever the umask."""
    node = make_node(tmp_path, "umask")
    home = node.backend.home
    st_home.generate(node.backend.config.binary, home)
    seen: list[int] = []
    real = st_home.write_atomic

    def spy(path: Path, data: bytes, mode: int, *args: object, **kwargs: object) -> Path:
        seen.append(mode)
        return real(path, data, mode)

    old = os.umask(0)
    try:
        (home / st_home.CONFIG).chmod(0o644)
        st_home.write_atomic = spy  # type: ignore[assignment]
        st_home.harden(
            home,
            node_name="umask",
            own_id=st_home.device_id(node.backend.config.binary, home),
            host="127.0.0.1",
            api_socket=st_home.socket_path(home),
            listen_port=free_port(),
        )
    finally:
        st_home.write_atomic = real  # type: ignore[assignment]
        os.umask(old)
    assert seen == [0o600]
    assert stat.S_IMODE((home / st_home.CONFIG).stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


def test_proxies_in_the_environment_do_not_divert_the_api(
    roles: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """httpx sends loopback requests to HTTP_PROXY too: the API key must not go there."""
    dead = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, dead)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    backend = roles["a"].backend
    api = SyncthingApi(backend.api_url, st_home.api_key(backend.home), timeout=10)
    try:
        assert api.ping()
        assert api.my_id() == backend.identity()["device_id"]
    finally:
        api.close()
    name = unique("proxied")
    roles["a"].path(name).write_text("not through a proxy")
    roles["a"].backend.scan()
    wait_content(roles["b"].path(name), "not through a proxy")
