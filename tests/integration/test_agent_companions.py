"""Files and services follow the active: real agents, PostgreSQL, Syncthing and services.

Three nodes with Syncthing and the ``process`` services backend, then two nodes with a real
supervisord each. The active-only services are a small program that records whether its own
node's database was writable when it started and when it was told to stop (see
``companion_fixtures.SERVICE``); the backends note every database, file and service step next
to the lifecycle hooks, so the tests read the order the agent used.

The tests of one class share its cluster and run in file order; each begins by waiting for
the cluster to converge, so none depends on which node another test left active.

The agents here run in this process on the in-memory store. The host-death failover with
Syncthing and active-only services, and the sample manager's workflow resume, are proven with
real ``hacore agent run`` processes on etcd and SIGKILL in test_agent_real_companions.py.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import uuid
from collections.abc import Iterator

import pytest
from agent_fixtures import WAIT, Node, make_root, until
from companion_fixtures import (
    SERVICES,
    SWITCHOVER_TIMEOUT,
    CompanionCluster,
    ordered,
    running_companion_cluster,
    signal_syncthing,
    wait_file,
    wait_gone,
)

from hacore.agent import keys
from hacore.testing.memory import drop_store
from hacore_plugins.postgresql.settings import default_bin_dir

pytestmark = [
    pytest.mark.slow,
    # One worker, in file order: the tests of a class share its cluster.
    pytest.mark.xdist_group("agent-companions"),
    pytest.mark.skipif(default_bin_dir() is None, reason="no PostgreSQL binaries installed"),
]

FOLDER = "hacore-manager-files"
PROMOTION = (
    "db_promoted",
    "files_source",
    ("service_start", "broker"),
    ("service_start", "worker"),
    "after_promote",
)


def standbys(cluster: CompanionCluster, leader: Node) -> list[Node]:
    return [n for n in cluster.nodes.values() if n is not leader]


def other_active(cluster: CompanionCluster, old: Node) -> Node:
    found = until(
        lambda: next((n for n in cluster.actives() if n is not old), None),
        f"a node other than {old.name} to become active",
    )
    assert isinstance(found, Node)
    return found


def last_events(cluster: CompanionCluster, node: Node, event: str) -> list[dict[str, object]]:
    """The services' own records of ``event`` since their last start on ``node``."""
    records = [r for r in cluster.service_events(node) if r["event"] == event]
    return records[-len(SERVICES) :]


def assert_started_writable(cluster: CompanionCluster, node: Node) -> None:
    starts = last_events(cluster, node, "start")
    assert {r["service"] for r in starts} == set(SERVICES), starts
    assert all(r["writable"] is True for r in starts), f"started before writes: {starts}"


def token() -> str:
    return secrets.token_hex(3)


def seed(cluster: CompanionCluster, leader: Node) -> None:
    """A file from the active on every node. Needed before freezing a mirror: Syncthing 1.19
    counts a mirror that has announced no file at all as complete (reported upstream of these
    tests to the plugin's owner), and these tests are about the agent's side."""
    name = f"seed-{token()}.txt"
    (cluster.files_dir(leader.name) / name).write_text("seed\n")
    for node in standbys(cluster, leader):
        wait_file(cluster.files_dir(node.name) / name)


@pytest.fixture(scope="class")
def files_cluster() -> Iterator[CompanionCluster]:
    store = f"companions-{uuid.uuid4().hex}"
    yield from running_companion_cluster(
        make_root(), {"store": store}, services="process", files=True, names=("n1", "n2", "n3")
    )
    drop_store(store)


@pytest.fixture(scope="class")
def supervisor_cluster() -> Iterator[CompanionCluster]:
    store = f"companions-{uuid.uuid4().hex}"
    yield from running_companion_cluster(
        make_root(), {"store": store}, services="supervisor", files=False, names=("s1", "s2")
    )
    drop_store(store)


# -------------------------------------------------------------------------------------------
# Syncthing and the process backend, three nodes.


@pytest.mark.skipif(shutil.which("syncthing") is None, reason="no syncthing binary on PATH")
class TestFilesAndProcessServices:
    def test_files_reach_every_standby_and_services_run_on_the_active_only(
        self, files_cluster: CompanionCluster
    ) -> None:
        cluster = files_cluster
        leader = cluster.wait_converged()
        cluster.wait_services_only_on(leader)
        assert_started_writable(cluster, leader)
        for node in standbys(cluster, leader):
            assert not last_events(cluster, node, "start"), f"{node.name} started a service"

        # Identities travel in the member records; every node shares the folder with the others.
        members = {m.name: m for m in leader.agent.consensus.members()}
        for node in cluster.nodes.values():
            assert members[node.name].extra["filesync"] == cluster.syncthing(node).identity()
        for node in cluster.nodes.values():
            peers = sorted(n for n in cluster.nodes if n != node.name)
            until(
                lambda node=node, peers=peers: cluster.syncthing(node).connected_peers() == peers,
                f"{node.name}'s Syncthing to connect to {peers}",
            )

        name, blob = f"blueprint-{token()}.yaml", os.urandom(200_000)
        (cluster.files_dir(leader.name) / name).write_text("tosca_definitions_version: 1\n")
        plugin = cluster.files_dir(leader.name) / "plugins" / "p1" / "plugin.wgn"
        plugin.parent.mkdir(parents=True, exist_ok=True)
        plugin.write_bytes(blob)
        for node in standbys(cluster, leader):
            wait_file(cluster.files_dir(node.name) / name)
            copy = cluster.files_dir(node.name) / "plugins" / "p1" / "plugin.wgn"
            until(lambda copy=copy: copy.is_file() and copy.read_bytes() == blob, f"{copy}")
        assert leader.recorder.names().count("files_source") == 1
        ordered(leader.recorder.since(0), "files_source", *[("service_start", s) for s in SERVICES])

    def test_switchover_waits_until_the_target_has_every_file(
        self, files_cluster: CompanionCluster, caplog: pytest.LogCaptureFixture
    ) -> None:
        cluster = files_cluster
        old = cluster.wait_converged()
        cluster.wait_services_only_on(old)
        target = standbys(cluster, old)[0]
        source, mirror = cluster.syncthing(old), cluster.syncthing(target)
        seed(cluster, old)
        until(lambda: source.state(peers=[target.name]).in_sync, f"{target.name} in sync")
        old_mark, target_mark = old.recorder.mark(), target.recorder.mark()
        records = len(cluster.service_events(old))
        signal_syncthing(mirror, signal.SIGSTOP)
        try:
            # The target has everything when asked, so the active steps down; its stopping
            # worker writes a last file, which the frozen target cannot get: called off.
            old.agent.request_switchover(target.name)
            until(
                lambda: "after_promote" in [e for e, _ in old.recorder.since(old_mark)],
                "the switchover to be called off",
            )
            assert "switchover called off, staying active: " + target.name in caplog.text
            ordered(
                old.recorder.since(old_mark),
                "before_demote",
                *[("service_stopped", s) for s in reversed(SERVICES)],
                *[("service_start", s) for s in SERVICES],
                "after_promote",
            )
            handed = {"files_mirror", "db_fence", "after_demote"}
            assert not handed & {e for e, _ in old.recorder.since(old_mark)}
            # Then it waits, serving, and says why.
            reason = until(
                lambda: "waits for its files" in old.snapshot().reason and old.snapshot().reason,
                "the active to say why the switchover waits",
            )
            assert f"switchover to {target.name} waits for its files: " in reason
            assert FOLDER in reason and target.name in reason, reason
            until(lambda: old.snapshot().is_active, f"{old.name} to be active")
            cluster.wait_services_only_on(old)
            assert old.recorder.names()[old_mark:].count("before_demote") == 1
        finally:
            signal_syncthing(mirror, signal.SIGCONT)

        assert other_active(cluster, old) is target
        assert cluster.wait_converged() is target
        cluster.wait_services_only_on(target)
        # The target had every last write of the old active's services when it became the
        # source (its override would have deleted anything it lacked).
        last_words = cluster.last_words(old, records)
        assert len(last_words) == 2 * len(SERVICES), last_words
        flips = [d for e, d in target.recorder.since(target_mark) if e == "files_source"]
        assert len(flips) == 1 and set(last_words) <= set(flips[0]), (last_words, flips)
        for node in cluster.nodes.values():
            for name in last_words:
                wait_file(cluster.files_dir(node.name) / name)

        second = old.recorder.since(old_mark)
        second = second[[e for e, _ in second].index("after_promote") :]
        ordered(
            second,
            "before_demote",
            *[("service_stopped", s) for s in reversed(SERVICES)],
            ("files_mirror", target.name),
            "db_fence",
            "after_demote",
        )
        ordered(target.recorder.since(target_mark), *PROMOTION)
        stops = last_events(cluster, old, "stop")
        assert {r["service"] for r in stops} == set(SERVICES)
        assert all(r["writable"] is True for r in stops), f"stopped after the fence: {stops}"
        assert_started_writable(cluster, target)

    def test_switchover_to_a_node_that_never_gets_the_files_expires(
        self, files_cluster: CompanionCluster
    ) -> None:
        cluster = files_cluster
        active = cluster.wait_converged()
        cluster.wait_services_only_on(active)
        stuck = standbys(cluster, active)[0]
        source = cluster.syncthing(active)
        seed(cluster, active)
        mark = active.recorder.mark()
        signal_syncthing(cluster.syncthing(stuck), signal.SIGSTOP)
        try:
            name = f"never-{token()}.bin"
            (cluster.files_dir(active.name) / name).write_bytes(os.urandom(100_000))
            until(
                lambda: not source.state(peers=[stuck.name]).in_sync,
                f"the active to see that {stuck.name} lacks the file",
            )
            active.agent.request_switchover(stuck.name)
            until(
                lambda: f"switchover to {stuck.name} waits" in active.snapshot().reason,
                "the active to say why the switchover waits",
            )
            until(
                lambda: active.agent.consensus.get(keys.SWITCHOVER_KEY) is None,
                "the switchover request to expire",
                timeout=SWITCHOVER_TIMEOUT + 30,
            )
            until(lambda: active.snapshot().is_active, f"{active.name} to be active")
            assert cluster.service_runners() == {active.name: list(SERVICES)}
            assert "before_demote" not in active.recorder.names()[mark:]
        finally:
            signal_syncthing(cluster.syncthing(stuck), signal.SIGCONT)
        wait_file(cluster.files_dir(stuck.name) / name)
        assert cluster.wait_converged() is active

    def test_after_a_failover_files_and_services_follow_the_new_active(
        self, files_cluster: CompanionCluster
    ) -> None:
        cluster = files_cluster
        old = cluster.wait_converged()
        sync = cluster.sync_standby()
        cluster.wait_services_only_on(old)
        old_dir = cluster.files_dir(old.name)
        old_syncthing = cluster.syncthing(old)
        old_pid = old_syncthing.process.pid()
        marks = {n.name: n.recorder.mark() for n in cluster.nodes.values()}

        # A file only the old active ever had: its Syncthing froze before it could send it.
        signal_syncthing(old_syncthing, signal.SIGSTOP)
        unsent = f"unsent-{token()}.txt"
        (old_dir / unsent).write_text("written by the old active, never sent")
        cluster.host_death(old)

        new = other_active(cluster, old)
        assert new.name == sync
        other = next(n for n in standbys(cluster, old) if n is not new)
        cluster.wait_services_only_on(new)
        ordered(new.recorder.since(marks[new.name]), *PROMOTION)
        assert_started_writable(cluster, new)

        after = f"after-failover-{token()}.txt"
        (cluster.files_dir(new.name) / after).write_text("written on the new active")
        wait_file(cluster.files_dir(other.name) / after)

        # Left running by a crash in the middle of a demotion: the next agent stops it.
        cluster.fresh_services(old).start("worker")
        cluster.revive(old)
        assert cluster.wait_converged() is new
        cluster.wait_services_only_on(new)
        pid = cluster.syncthing(old).process.pid()
        assert pid is not None and pid != old_pid, "the agent did not restart Syncthing"
        wait_file(old_dir / after)
        wait_gone(old_dir / unsent)
        for node in (new, other):
            assert not (cluster.files_dir(node.name) / unsent).exists()

        # A write on a standby is reverted there and reaches nobody.
        stray = f"stray-{token()}.txt"
        (old_dir / stray).write_text("written on a standby")
        wait_gone(old_dir / stray)
        marker = f"marker-{token()}.txt"
        (cluster.files_dir(new.name) / marker).write_text("later than the stray write")
        for node in (old, other):
            wait_file(cluster.files_dir(node.name) / marker)
        for node in (new, other):
            assert not (cluster.files_dir(node.name) / stray).exists(), f"leaked to {node.name}"

    def test_a_dead_active_only_service_fails_the_check_and_the_active_hands_over(
        self, files_cluster: CompanionCluster
    ) -> None:
        cluster = files_cluster
        old = cluster.wait_converged()
        cluster.wait_services_only_on(old)
        check = old.snapshot().checks["active_services"]
        assert check.ok and all(s in check.detail for s in SERVICES), check
        broken = cluster.broken_flag(old.name)
        broken.touch()
        try:
            cluster.kill_service(old, "worker")
            failed = until(
                lambda: (c := old.snapshot().checks.get("active_services")) and not c.ok and c,
                "the active_services check to fail",
            )
            assert "worker" in failed.detail and "broker" not in failed.detail, failed
            watcher = standbys(cluster, old)[0]

            def published_failure() -> bool:
                member = next(
                    (m for m in watcher.agent.consensus.members() if m.name == old.name), None
                )
                return member is not None and not member.checks["active_services"]["ok"]

            until(published_failure, "the failing check in the member record")
            # It cannot be restarted: once the check expires the active steps down.
            new = other_active(cluster, old)
        finally:
            broken.unlink(missing_ok=True)
        assert cluster.wait_converged() is new
        cluster.wait_services_only_on(new)
        name = f"after-handover-{token()}.txt"
        (cluster.files_dir(new.name) / name).write_text("the old active mirrors the new one")
        for node in standbys(cluster, new):
            wait_file(cluster.files_dir(node.name) / name)


# -------------------------------------------------------------------------------------------
# A real supervisord per node, two nodes.


@pytest.mark.skipif(shutil.which("supervisord") is None, reason="supervisord is not installed")
class TestSupervisorServices:
    def test_services_follow_a_failover_and_a_switchover(
        self, supervisor_cluster: CompanionCluster
    ) -> None:
        cluster = supervisor_cluster
        old = cluster.wait_converged()
        cluster.wait_services_only_on(old)
        assert_started_writable(cluster, old)
        standby = standbys(cluster, old)[0]
        assert cluster.sync_standby() == standby.name  # else nobody may take over
        mark = standby.recorder.mark()

        cluster.host_death(old)
        new = other_active(cluster, old)
        assert new is standby
        cluster.wait_services_only_on(new)
        promotion = ("db_promoted", ("service_start", "broker"), ("service_start", "worker"))
        ordered(new.recorder.since(mark), *promotion, "after_promote")
        assert_started_writable(cluster, new)

        cluster.revive(old)
        assert cluster.wait_converged(timeout=WAIT) is new
        cluster.wait_services_only_on(new)

        new_mark, old_mark = new.recorder.mark(), old.recorder.mark()
        new.agent.request_switchover(old.name)
        assert other_active(cluster, new) is old
        assert cluster.wait_converged() is old
        cluster.wait_services_only_on(old)
        ordered(
            new.recorder.since(new_mark),
            "before_demote",
            ("service_stopped", "worker"),
            ("service_stopped", "broker"),
            "db_fence",
            "after_demote",
        )
        ordered(old.recorder.since(old_mark), *promotion, "after_promote")
        stops = last_events(cluster, new, "stop")
        assert {r["service"] for r in stops} == set(SERVICES)
        assert all(r["writable"] is True for r in stops), f"stopped after the fence: {stops}"
        assert_started_writable(cluster, old)
