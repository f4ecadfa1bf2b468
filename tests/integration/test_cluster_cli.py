"""The cluster CLI against real nodes: start, joins, refusals, removal, switchover, failover.

Each node is a real ``hacore agent run`` process with its own managed store server (etcd or
ZooKeeper) and its own PostgreSQL, on loopback ports (see ``cluster_fixtures``). The CLI
runs in this process against those services, with one profile, as an operator on one
machine would.

The tests of one backend share a cluster and run in file order: start + two joins (the
fixture), refusals, removal, switchover, and last the failover, which kills the active.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import socket
import stat
import subprocess
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import pytest
import yaml
from cluster_fixtures import (
    HACORE,
    TIMING,
    WAIT,
    CliCluster,
    Node,
    etcdctl,
    formed_cluster,
    kill_tree,
    store_leader,
    tree,
)

from hacore import pki
from hacore.cluster.record import VERSION_OVERRIDE_ENV, reported_version
from hacore.testing.procs import free_port, holds_for, wait_for
from hacore_plugins.postgresql.backend import PostgresReplication
from hacore_plugins.postgresql.config_files import slot_name
from hacore_plugins.postgresql.settings import default_bin_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(default_bin_dir() is None, reason="no PostgreSQL binaries installed"),
]


@pytest.fixture(scope="module", params=["etcd", "zookeeper"])
def formed(request: pytest.FixtureRequest) -> Iterator[CliCluster]:
    yield from formed_cluster(request.param)


def store_members(cluster: CliCluster, node: Node) -> dict[str, bool]:
    """The store's servers, name -> voting, as the node's agent reads them from the store."""
    members = node.cluster(cluster.credentials())["store_members"]
    return {m["name"]: m["voting"] for m in members}


def mode(path: Any) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_start_and_two_joins_make_one_active_and_two_streaming_standbys(
    formed: CliCluster,
) -> None:
    start = formed.outputs["start"]
    for step in ("consensus store", "cluster record", "database", "agent started"):
        assert f"[ok] {step}" in start
    assert "n1 is the active node of cluster clitest" in start
    # rule B1: the founder kept its new database writable while it took the lease
    founder_log = formed.formed_logs["n1"]
    assert "campaigning for the lease while it stays writable" in founder_log
    assert "fence -> fenced" not in founder_log and "promoted, timeline" not in founder_log
    password = formed.credentials()[1]
    assert f"password {password}" in start, "a generated password is shown once"
    for name in ("n2", "n3"):
        out = formed.outputs[f"join {name}"]
        assert "[ok] join ticket: granted by n1" in out
        assert "[ok] store membership" in out
        # the clone's progress, bytes done of total, ends with the full size
        assert re.search(r"\[ok\] database copied: [\d.]+ MiB from n1", out), out
        assert f"{name} is a standby of n1 in cluster clitest, streaming" in out

    def settled() -> dict[str, Any] | None:
        view = formed.view()
        standbys = [view[n] for n in ("n2", "n3")]
        if all(
            row["replication"] == "streaming"
            and row["lag_bytes"] is not None
            and row["checks"]
            and all(row["checks"].values())
            for row in standbys
        ):
            return view
        return None

    view = wait_for(settled, WAIT, interval=0.5, what="both standbys streaming and healthy")
    assert isinstance(view, dict)
    assert sorted(view) == ["n1", "n2", "n3"]
    assert [n for n, row in view.items() if row["state"] == "active"] == ["n1"]
    for name in ("n2", "n3"):
        assert view[name]["state"] == "standby"
    detail = formed.cli("cluster", "nodes", "get", "n2").output
    assert re.search(r"state: +standby", detail) and "replication: streaming" in detail
    assert re.search(r"check replication: OK", detail), detail
    assert 'no node named "n9"' in formed.cli("cluster", "nodes", "get", "n9", code=4).stderr

    assert set(store_members(formed, formed.nodes["n1"]).items()) == {
        ("n1", True),
        ("n2", True),
        ("n3", True),
    }
    n1, n2 = formed.nodes["n1"], formed.nodes["n2"]
    assert n1.probe()["http_status"] == 200 and n2.probe()["http_status"] == 503
    assert n2.probe("/standby")["http_status"] == 200
    # secrets: 0600 files, the bootstrap token gone, the API closed without credentials
    assert mode(formed.profile) == 0o600
    for node in formed.nodes.values():
        assert mode(node.data_dir / "cluster.json") == 0o600
        assert not (node.data_dir / "bootstrap.token").exists()
        assert password not in (node.data_dir / "cluster.json").read_text()
    profile = json.loads(formed.profile.read_text())
    assert profile["nodes"][0]["name"] == "n1"
    assert {n["name"] for n in profile["nodes"]} == {"n1", "n2", "n3"}
    tls = n1.ca_context()
    assert httpx.get(n1.url + "/cluster", timeout=5, verify=tls).status_code == 401
    wrong = ("admin", "wrong")
    assert httpx.get(n1.url + "/cluster", auth=wrong, timeout=5, verify=tls).status_code == 401


def test_the_cli_of_a_start_or_a_join_makes_no_failed_login(formed: CliCluster) -> None:
    """The CLI's last poll of a start or join still carries the bootstrap token the node has
    just stopped taking for anything but reading (hacore/cluster/node_credentials.py)."""
    for name, log in formed.formed_logs.items():
        failed = [line for line in log.splitlines() if "failed API login" in line]
        assert not failed, (name, failed)


def test_role_and_liveness_probes_on_the_formed_cluster(formed: CliCluster) -> None:
    """What a load balancer or an orchestrator asks without credentials, on real agents."""
    active = formed.active()
    for name, node in formed.nodes.items():
        answers = {path: node.probe(path) for path in ("/health", "/liveness", "/readiness")}
        for path, answer in answers.items():
            assert answer is not None and answer["http_status"] == 200, (name, path, answer)
            assert answer["node"] == name and answer["leader"] == active.name, answer
            assert answer["healthy"] is True and answer["loop_age"] is not None, answer
        standby = node.probe("/standby")
        status = node.probe("/status")
        assert standby is not None and status is not None
        if node is active:
            assert (status["http_status"], standby["http_status"]) == (200, 503)
        else:
            assert (status["http_status"], standby["http_status"]) == (503, 200)


def test_output_formats_and_a_profile_made_on_a_machine_that_is_not_a_member(
    formed: CliCluster,
) -> None:
    """-o yaml/tsv carry what --json does; ``cluster profile create`` checks the CA before it
    sends the password, and each refusal has its own exit status and writes nothing."""
    listed = formed.cli_json("cluster", "nodes", "list")
    as_yaml = yaml.safe_load(formed.cli("cluster", "nodes", "list", "-o", "yaml").stdout)
    assert [(r["name"], r["state"]) for r in as_yaml["nodes"]] == [
        (r["name"], r["state"]) for r in listed["nodes"]
    ]
    lines = formed.cli("cluster", "nodes", "list", "-o", "tsv").stdout.splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]
    assert {r["name"]: r["state"] for r in rows} == {
        "n1": "active",
        "n2": "standby",
        "n3": "standby",
    }
    status = yaml.safe_load(formed.cli("cluster", "status", "-o", "yaml").stdout)
    assert status["active"] == "n1"

    user, password = formed.credentials()
    n2 = formed.nodes["n2"]
    made = formed.root / "workstation" / "profile.json"
    env = {"HACORE_PROFILE": str(made), "HACORE_PASSWORD": password}
    create = ("cluster", "profile", "create", n2.address, "--username", user)
    other_ca = pki.create_ca("clitest", formed.root / "not-the-cluster-ca")
    wrong = formed.cli(
        *create, "--ca-fingerprint", pki.fingerprint(other_ca.certificate), code=4, env=env
    )
    assert "not the expected" in wrong.stderr and "no credential was sent" in wrong.stderr
    fp = ("--ca-fingerprint", formed.ca_fingerprint)
    denied = formed.cli(*create, *fp, code=4, env={**env, "HACORE_PASSWORD": "wrong"})
    assert denied.stderr.startswith("error: "), denied.output
    unreachable = formed.cli(
        "cluster", "profile", "create", f"127.0.0.1:{free_port()}", *fp, code=3, env=env
    )
    assert "cannot reach" in unreachable.stderr
    assert not made.exists()

    answer = json.loads(formed.cli(*create, *fp, "--json", env=env).stdout)
    assert answer["cluster"] == "clitest" and answer["active"] == "n1"
    assert answer["ca_fingerprint"] == formed.ca_fingerprint
    assert "password" not in answer
    assert mode(made) == 0o600
    profile = json.loads(made.read_text())
    assert profile["nodes"][0]["name"] == "n1"
    assert {n["name"] for n in profile["nodes"]} == {"n1", "n2", "n3"}
    assert profile["password"] == password
    assert profile["ca_certificate"] == json.loads(formed.profile.read_text())["ca_certificate"]
    # the new profile works on its own, with no password in the environment
    view = formed.cli("cluster", "nodes", "list", "--json", env={"HACORE_PROFILE": str(made)})
    assert {r["name"] for r in json.loads(view.stdout)["nodes"]} == {"n1", "n2", "n3"}


def test_join_refusals_change_nothing(formed: CliCluster) -> None:
    active = formed.nodes["n1"]
    auth = formed.credentials()

    def cluster_state() -> tuple[Any, ...]:
        data = active.cluster(auth)
        return (
            sorted(m["name"] for m in data["members"]),
            sorted((m["name"], m["voting"]) for m in data["store_members"]),
            data["joining"],
            data["removed"],
        )

    before = cluster_state()
    assert before[2] == []
    fresh = formed.add("fresh")
    older = formed.add("older", env={VERSION_OVERRIDE_ENV: "0.0.1"})
    used = formed.add("used")
    db = PostgresReplication(
        {"port": used.pg_port, "parameters": {"shared_buffers": "16MB"}},
        node_name="used",
        host="127.0.0.1",
        data_dir=used.data_dir / "replication",
    )
    db.bootstrap(replication_password="x", allowed_hosts=[])
    db.stop()

    def refused(
        node: Node, address: str, name: str, *extra: str, password: str = "", code: int = 4
    ) -> str:
        files = tree(node.data_dir)
        result = formed.cli(
            "cluster",
            "join",
            address,
            "-c",
            str(node.config_path),
            "--node-name",
            name,
            *extra,
            code=code,  # 4: refused by the cluster; 3: nothing answers at the address
            # from the environment: --password would add a warning line (it shows in ps)
            env={"HACORE_PASSWORD": password} if password else None,
        )
        message = result.stderr.strip()
        assert message.startswith("error: ") and "\n" not in message, message
        assert tree(node.data_dir) == files, f"{node.name}'s data directory changed"
        assert not (node.data_dir / "cluster.json").exists()
        assert node.probe()["state"] == "empty"
        assert cluster_state() == before
        return message

    unused = f"127.0.0.1:{free_port()}"
    assert "refused the API credentials" in refused(
        fresh, active.address, "fresh", "--username", "admin", password="wrong"
    )
    assert "already a member" in refused(fresh, active.address, "n2")
    assert "cannot reach the hacore agent" in refused(fresh, unused, "fresh", code=3)
    message = refused(older, active.address, "older")
    mine = reported_version()
    assert f"older runs hacore 0.0.1 but cluster clitest runs hacore {mine}" in message
    assert f"install hacore {mine} on older first" in message, message
    assert "upgrade procedure" in message and "docs/snapshots.md" in message, message
    message = refused(used, active.address, "used")
    assert "not empty" in message and "already holds a database" in message

    # a standby's address leads to the active: the same refusal, from the active
    assert "already a member" in refused(fresh, formed.nodes["n2"].address, "n3")
    for node in (fresh, older, used):
        node.cleanup()
        del formed.nodes[node.name]


def test_a_join_that_fails_in_the_store_is_rolled_back_then_retried(formed: CliCluster) -> None:
    active = formed.active()
    auth = formed.credentials()

    def cluster_state() -> tuple[Any, ...]:
        data = active.cluster(auth)
        return (
            sorted(m["name"] for m in data["members"]),
            sorted((m["name"], m["voting"]) for m in data["store_members"]),
            data["joining"],
        )

    before = cluster_state()
    late = formed.add("late")
    files = tree(late.data_dir)
    # another program holds the port of this node's store server: its store join fails
    with socket.create_server(("127.0.0.1", late.store["client_port"])):
        result = formed.cli(
            "cluster",
            "join",
            active.address,
            "-c",
            str(late.config_path),
            "--node-name",
            "late",
            "--timeout",
            str(WAIT),
            code=1,  # the operation failed (and was rolled back)
        )
    assert "[ok] join ticket: granted by" in result.stdout
    assert (
        "the join was rolled back: this node is empty again and the active forgot the join"
        in result.stderr
    )
    assert tree(late.data_dir) == files
    assert late.probe()["state"] == "empty"
    assert cluster_state() == before

    # nothing is left behind on either side: the same node joins under the same name
    out = formed.cli(
        "cluster",
        "join",
        active.address,
        "-c",
        str(late.config_path),
        "--node-name",
        "late",
        "--timeout",
        str(WAIT),
    ).output
    assert f"late is a standby of {active.name}" in out
    assert "late" in store_members(formed, active)


def test_join_progress_gives_bytes_rate_and_time_left(formed: CliCluster) -> None:
    """A real join, its copy held to 5 MB/s (``clone_max_rate``, a node-local option) so
    that pg_basebackup reports several times while it runs: every report has a rate near
    the limit and a time left that agrees with it; the result says when each step ran."""
    if formed.backend != "etcd":
        pytest.skip("the progress does not depend on the store: measured once")
    active = formed.active()
    node = formed.add("prog")
    result = formed.cli(
        *node.join_arguments(active),
        "--ca-fingerprint",
        formed.ca_fingerprint,
        "--options",
        "replication.clone_max_rate=5M",
        "--timeout",
        str(WAIT),
        "--json",
    )
    try:
        done = json.loads(result.stdout)
        events = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
        reports = [e for e in events if e["event"] == "clone"]
        running = [e for e in reports if 0 < e["done"] < e["total"]]
        assert len(running) >= 2, events
        limit = 5 * 1024 * 1024
        for report in running:
            assert 0.1 * limit < report["rate"] < 2 * limit, report
            expected = (report["total"] - report["done"]) / report["rate"]
            assert report["eta"] == pytest.approx(expected, abs=0.2), report
        clone = done["clone"]
        assert clone["done"] == clone["total"] > 10 * 1024 * 1024
        assert clone["eta"] == 0 and clone["elapsed"] > 1.0
        assert clone["rate"] == pytest.approx(clone["total"] / clone["elapsed"], rel=0.05)
        steps = {s["name"]: s for s in done["steps"]}
        assert [e["name"] for e in events if e["event"] == "step" and e["state"] == "done"] == [
            "ticket", "ca", "store", "agent", "clone", "streaming", "files"
        ]  # fmt: skip
        order = [steps[n] for n in ("ca", "store", "agent", "clone", "streaming")]
        for earlier, later in itertools.pairwise(order):
            assert earlier["began"] <= earlier["ended"] <= later["ended"], steps
        assert steps["clone"]["began"] <= clone["began"] <= steps["clone"]["ended"]
    finally:
        formed.cli("cluster", "nodes", "remove", "prog", "--yes")
        node.cleanup()
        del formed.nodes["prog"]


def test_an_interrupted_join_resumes_or_rolls_back(formed: CliCluster) -> None:
    """Where the kill lands in the join is up to the scheduler; each outcome is checked for
    what it must leave behind, and the active is watched the whole time: it never stops
    answering ``/status`` 200 (its store kept its quorum, it never fenced)."""
    active = formed.active()
    node = formed.add("cut")
    answers: list[int | None] = []
    done = threading.Event()

    def watch_active() -> None:
        while not done.is_set():
            probe = active.probe()
            answers.append(None if probe is None else probe["http_status"])
            done.wait(0.2)

    watcher = threading.Thread(target=watch_active, daemon=True)
    watcher.start()
    join = ("cluster", "join", active.address, "-c", str(node.config_path), "--node-name", "cut")
    try:
        result = formed.cli(*join, "--timeout", "0.1", code=1)
        assert "still not done" in result.stderr, result.output
        assert node.proc is not None
        node.proc.kill()  # the agent service dies in the middle of the join
        node.start()
        state_file = node.data_dir / "cluster.json"

        def outcome() -> str | None:
            probe = node.probe()
            if probe is None:
                return None
            if probe["standby_streaming"]:
                return "resumed"
            if probe["state"] == "empty" and not state_file.exists():
                return "rolled back"
            return None

        found = wait_for(outcome, WAIT, interval=0.5, what="the join to resume or roll back")
        if found == "rolled back":
            assert not (node.data_dir / "store").exists()
            # not a voter: the learner the grant added stays until the active cancels the
            # pending join (hacore/cluster/pending.py) or this node retries, as it does next
            assert store_members(formed, active).get("cut") is not True
            formed.cli(*join, "--timeout", str(WAIT))
        else:
            # streaming first; the service then records the join as done
            wait_for(
                lambda: json.loads(state_file.read_text())["phase"] == "member",
                WAIT,
                interval=0.5,
                what="the resumed join to be recorded as done",
            )
        assert store_members(formed, active)["cut"] is True
        wait_for(
            lambda: formed.view()["cut"]["replication"] == "streaming", WAIT, what="cut streaming"
        )
    finally:
        done.set()
        watcher.join(10)
    assert formed.active() is active
    assert 503 not in answers, f"the active stopped answering 200 during the join: {answers}"
    assert answers.count(200) >= 10, answers


@pytest.mark.skipif(shutil.which("etcdctl") is None, reason="etcdctl is not installed")
def test_the_active_hands_the_store_leadership_to_a_standby(formed: CliCluster) -> None:
    """A host death must not take the store's leader along with the active (issue 15.0).

    The leadership is put on the active with ``etcdctl move-leader``; the agent must move it
    away again and say so. An election of the store's own (a loaded machine, a member joining)
    can also take it off the active: then it is put back, so only the agent's move counts."""
    if formed.backend != "etcd":
        pytest.skip("ZooKeeper has no operation that hands over its leadership")
    active = formed.active()
    members = json.loads(etcdctl(active, "member", "list", "-w", "json"))["members"]
    active_id = next(m["ID"] for m in members if m["name"] == active.name)
    urls = ",".join(url for m in members for url in m.get("clientURLs", []))
    said = "moved the store's leadership to"
    before = active.log_path.read_text().count(said)

    def handed_over() -> bool:
        moved = active.log_path.read_text().count(said) > before
        on_active = store_leader(active) == active.name
        if moved:
            return not on_active
        if not on_active:
            etcdctl(active, f"--endpoints={urls}", "move-leader", format(active_id, "x"))
        return False

    wait_for(
        handed_over,
        60.0,
        interval=0.5,
        what=f"the agent of {active.name} to move the store's leadership off the active",
    )


def test_remove_refuses_the_active_and_removes_a_standby(formed: CliCluster) -> None:
    active = formed.active()
    result = formed.cli("cluster", "nodes", "remove", active.name, "--yes", code=4)
    assert "is the active node: switch over first" in result.stderr
    victim = formed.nodes["late"]
    assert slot_name(victim.name) in active.slots()

    out = formed.cli("cluster", "nodes", "remove", victim.name, "--yes").output
    assert f"node {victim.name} removed from cluster clitest" in out
    assert victim.name not in store_members(formed, active)
    assert slot_name(victim.name) not in active.slots()
    assert victim.name not in formed.view()
    # its agent stepped down: removed, its database and store server stopped
    wait_for(
        lambda: victim.probe()["state"] == "removed" and victim.postmaster() is None,
        WAIT,
        what=f"{victim.name} to step down",
    )
    wait_for(lambda: victim.store_server() is None, WAIT, what=f"{victim.name}'s store to stop")

    # A removed node must not come back and make its slot again: watched for a few of the
    # agents' loops (loop_wait 1 s), long enough for either agent to act on a stale view.
    def stays_out() -> bool:
        assert slot_name(victim.name) not in active.slots(), "the removed node's slot is back"
        answer = victim.probe()
        assert answer is None or answer["state"] == "removed", answer
        return True

    holds_for(stays_out, 3 * TIMING["loop_wait"] + 2, interval=0.25, what="the node stays out")
    assert (
        'no node named "nobody"'
        in formed.cli("cluster", "nodes", "remove", "nobody", "--yes", code=4).stderr
    )
    victim.cleanup()
    del formed.nodes[victim.name]
    # a fresh node may join under the removed name (issue 13.3): tests/integration/
    # test_repair.py::test_a_removed_name_can_be_joined_again


def test_switchover_with_the_cli(formed: CliCluster) -> None:
    old = formed.active()
    target = next(n for n in formed.nodes.values() if n is not old)
    wait_for(
        lambda: formed.view()[target.name]["replication"] == "streaming",
        WAIT,
        what=f"{target.name} streaming before the switchover",
    )
    result = formed.cli("cluster", "switchover", "--to", target.name, "--timeout", str(WAIT))
    match = re.search(
        rf"{target.name} is the active node \(was {old.name}\); took ([\d.]+) s", result.output
    )
    assert match, result.output
    assert target.probe()["http_status"] == 200
    assert old.probe()["http_status"] == 503
    profile = json.loads(formed.profile.read_text())
    assert profile["nodes"][0]["name"] == target.name
    # the old active comes back as a streaming standby of the new one
    wait_for(
        lambda: formed.view()[old.name]["replication"] == "streaming",
        WAIT,
        what=f"{old.name} to follow {target.name}",
    )


def http_codes(cluster: CliCluster, path: str) -> dict[str, int | None]:
    """Every node's answer to ``path``: its HTTP status, None when it does not answer."""
    codes: dict[str, int | None] = {}
    for name, node in cluster.nodes.items():
        answer = node.probe(path)
        codes[name] = None if answer is None else answer["http_status"]
    return codes


def wait_for_codes(
    cluster: CliCluster, path: str, expected: Mapping[str, int | None], what: str
) -> None:
    """Wait until the nodes answer ``path`` as expected; never two 200s on ``/status``."""
    seen: list[dict[str, int | None]] = []

    def matches() -> bool:
        seen.append(http_codes(cluster, path))
        return seen[-1] == expected

    try:
        wait_for(matches, WAIT, interval=0.5, what=what)
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}; last answers: {seen[-1:]}")
    if path == "/status":
        doubled = [codes for codes in seen if sum(c == 200 for c in codes.values()) > 1]
        assert not doubled, f"two nodes answered /status 200 at once: {doubled[0]}"


def test_the_profile_finds_the_new_active_after_the_active_dies(formed: CliCluster) -> None:
    old = formed.active()
    survivors = [n for n in formed.nodes.values() if n is not old]
    # Before: the active alone answers /status 200; the standbys say 503 there, 200 on /standby.
    before = {name: 200 if name == old.name else 503 for name in formed.nodes}
    wait_for_codes(formed, "/status", before, f"only {old.name} to answer /status 200")
    streaming = {n.name: 200 for n in survivors} | {old.name: 503}
    wait_for_codes(formed, "/standby", streaming, "the standbys to answer /standby 200")
    assert http_codes(formed, "/status") == before
    # rows every standby has replayed: a failover must keep them, whichever standby wins
    with old.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS before_crash (id integer PRIMARY KEY)")
        conn.execute("INSERT INTO before_crash SELECT generate_series(1, 100)")
        row = conn.execute("SELECT pg_current_wal_lsn()").fetchone()
    assert row is not None
    written = row[0]

    def replayed() -> bool:
        for node in survivors:
            with node.connect() as conn:
                done = conn.execute(
                    "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (written,)
                ).fetchone()
            if not (done and done[0]):
                return False
        return True

    wait_for(replayed, WAIT, interval=0.2, what="both standbys to replay the rows")
    store = old.store_server()
    assert store is not None, f"{old.name}'s store member is not running"
    old.crash()
    kill_tree(store)  # the whole host dies: its store member too
    # the real command, as a separate process: it must skip the dead node by itself
    env = {"HACORE_PROFILE": str(formed.profile), "PATH": "/usr/bin:/bin"}

    def new_active() -> dict[str, Any] | None:
        proc = subprocess.run(
            [HACORE, "cluster", "status", "--json"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        if proc.returncode != 0:
            assert proc.returncode == 1, proc.stderr  # 1: no active (yet); any other is an error
            return None
        data: dict[str, Any] = json.loads(proc.stdout)
        return data if data["active"] != old.name else None

    status = wait_for(new_active, WAIT, interval=1.0, what="a new active after the crash")
    assert isinstance(status, dict)
    assert status["active"] in {n.name for n in survivors}
    probes = {p["name"]: p for p in status["nodes"]}
    assert probes[old.name]["http_status"] is None, "the dead node does not answer"
    assert probes[status["active"]]["http_status"] == 200
    view = formed.view()
    assert view[old.name]["state"] == "offline"
    assert view[status["active"]]["state"] == "active"
    new = formed.nodes[status["active"]]
    with new.connect() as conn:
        kept = conn.execute("SELECT count(*) FROM before_crash").fetchone()
        conn.execute("INSERT INTO before_crash VALUES (101)")
    assert kept == (100,)
    # After: the new active 200, the other survivor 503, the dead node no answer at all.
    after = {n.name: 200 if n.name == status["active"] else 503 for n in survivors}
    wait_for_codes(formed, "/status", after | {old.name: None}, "the /status answers after")
