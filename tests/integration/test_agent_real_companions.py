"""Files, services and workflows follow the active: real ``hacore agent run`` processes on etcd,
host deaths by SIGKILL.

The real-process versions of the in-process companion tests (test_agent_companions.py) and of
the sample manager's failover (test_sample_manager.py): one loopback cluster for the module,
formed through the real CLI (cluster_fixtures.py), three agent processes with their managed
etcd members and PostgreSQL servers, synchronous mode on. Each node also runs, exactly as an
operator's ``node.yaml`` would have it:

- Syncthing (``filesync``) on the node's resources directory;
- three active-only ``process`` services, in this order: a witness (:data:`WITNESS`), the
  sample manager's API and its worker (examples/sample-manager);
- the sample manager's plugin (its ``after_promote`` settles interrupted workflows; loaded
  through its entry point when the example is installed, else named in ``$HACORE_PLUGINS``)
  and agent_hook_plugin.py (every lifecycle hook logged with its ``time.monotonic()``).

The agent cannot be looked into from the test, so the order of a promotion is read from what
the companions saw themselves: the witness records, when it starts and when it is told to stop,
whether its node's database took writes, what type its node's Syncthing folder had in
config.xml (``sendonly`` once the node is the files' source) and when the kernel created its
process (/proc, converted to the monotonic clock that the hook log uses and to wall-clock time
for the database's timeline history file).

A host death SIGKILLs the node's agent, fence keeper, PostgreSQL, Syncthing (monitor and child)
and services; its etcd member stays, as the store outlives one host in these tests.

Each test can be shown to fail when the behaviour it proves is broken, without touching the
product (run the one test with the variable set; it must fail):

- ``HACORE_COMPANIONS_REAL_KEEP_SERVICES=1`` leaves the old active's services running at its
  host death (a fence that does not reach them): two nodes run the active-only services;
- ``HACORE_COMPANIONS_REAL_ALL_FRAGILE=1`` creates the "resumable" workflow not resumable:
  it fails on the new active instead of resuming at step k + 1.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from agent_hook_plugin import CALLS, control_dir
from cluster_fixtures import WAIT, CliCluster, Node, make_root
from companion_fixtures import session_pids

from hacore.testing.procs import free_port, kill_with_children, pid_alive, wait_for
from hacore_plugins.postgresql.settings import default_bin_dir
from hacore_plugins.services.process import ProcessServices

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(default_bin_dir() is None, reason="no PostgreSQL binaries installed"),
    pytest.mark.skipif(shutil.which("syncthing") is None, reason="no syncthing binary on PATH"),
]

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parents[1] / "examples" / "sample-manager"
SERVICES = ("witness", "api", "worker")
STEP = 0.3
TICK = 0.01
KEEP_SERVICES = os.environ.get("HACORE_COMPANIONS_REAL_KEEP_SERVICES") == "1"
ALL_FRAGILE = os.environ.get("HACORE_COMPANIONS_REAL_ALL_FRAGILE") == "1"

WITNESS = r"""
import json, os, re, signal, sys, time

out, name, conninfo, syncthing_config = sys.argv[1:5]
import psycopg


def writable():
    try:
        with psycopg.connect(conninfo, connect_timeout=5) as conn:
            return not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
    except Exception as err:
        return "no database: " + str(err).splitlines()[0]


def folder():
    try:
        text = open(syncthing_config).read()
    except OSError:
        return None
    found = re.search(r'<folder [^>]*type="([a-z]+)"', text)
    return found.group(1) if found else None


def spawned():
    # when this process was created: /proc's start time, in CLOCK_BOOTTIME seconds
    fields = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")


def record(event):
    boot = time.clock_gettime(time.CLOCK_BOOTTIME)
    line = {"event": event, "service": name, "pid": os.getpid(), "at": time.monotonic(),
            "spawned_mono": spawned() - (boot - time.monotonic()),
            "spawned_real": spawned() + (time.time() - boot),
            "writable": writable(), "folder": folder()}
    with open(out, "a") as f:
        f.write(json.dumps(line) + "\n")


def stop(signum, frame):
    record("stop")
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
record("start")
while True:
    time.sleep(1)
"""


# -- the cluster ----------------------------------------------------------------------------


def socket_dir(node: Node) -> str:
    return str(node.data_dir / "replication" / "run")


def conninfo(node: Node) -> str:
    return f"host={socket_dir(node)} port={node.pg_port} user=postgres dbname=postgres"


def files_dir(node: Node) -> Path:
    """The same name on every node: Syncthing's folder id is made of it."""
    return node.root / f"{node.name}-files" / "resources"


def witness_log(node: Node) -> Path:
    return node.root / f"{node.name}-witness.jsonl"


def api_port(node: Node) -> int:
    return int(node.extra["plugins"]["settings"]["sample_manager"]["api_url"].rsplit(":", 1)[1])


def api_url(node: Node) -> str:
    return f"http://127.0.0.1:{api_port(node)}"


def syncthing_home(node: Node) -> Path:
    return node.data_dir / "filesync" / "syncthing"


def services_settings(node: Node) -> dict[str, Any]:
    section = node.extra["services"]
    return {k: v for k, v in section.items() if k not in ("backend", "active_only")}


def node_extra(node: Node, witness: Path) -> dict[str, Any]:
    """The node.yaml sections beyond cluster_fixtures' own, as an operator would write them."""
    dsn = conninfo(node)
    env = {"PYTHONPATH": str(EXAMPLE), "SAMPLE_MANAGER_DSN": dsn}
    port = free_port()
    resources = files_dir(node)
    resources.mkdir(parents=True, exist_ok=True)
    witness_argv = [
        sys.executable,
        str(witness),
        str(witness_log(node)),
        "witness",
        dsn,
        str(syncthing_home(node) / "config.xml"),
    ]
    api = [sys.executable, "-m", "sample_manager.api", f"--port={port}"]
    api.append(f"--resources={resources}")
    worker = [sys.executable, "-m", "sample_manager.worker", f"--node={node.name}"]
    worker += [f"--step-seconds={STEP}", "--poll-seconds=0.2"]
    return {
        "failover": {"synchronous_mode": "on"},
        "filesync": {
            "backend": "syncthing",
            "directories": [str(resources)],
            "api_port": free_port(),
            "listen_port": free_port(),
            "enforce_interval": 1,
        },
        "services": {
            "backend": "process",
            "active_only": list(SERVICES),
            "run_dir": str(node.root / f"{node.name}-services"),
            "stop_timeout": 3,
            "commands": {
                "witness": witness_argv,
                "api": {"command": api, "env": env},
                "worker": {"command": worker, "env": env},
            },
        },
        "plugins": {"settings": {"sample_manager": {"api_url": f"http://127.0.0.1:{port}"}}},
    }


def add(cluster: CliCluster, name: str, env: dict[str, str], witness: Path) -> Node:
    node = Node(name, cluster.root, cluster.backend, cluster.namespace, env=env)
    node.extra = node_extra(node, witness)
    cluster.nodes[name] = node
    return node.start()


def syncthing_pids(node: Node) -> list[int]:
    """The node's Syncthing monitor and the Syncthing it runs (its own process group)."""
    try:
        first = (syncthing_home(node) / "syncthing.pid").read_text().split("\n", 1)[0].strip()
    except OSError:
        return []
    if not first.isdigit() or not pid_alive(int(first)):
        return []
    return session_pids(int(first))


def services(node: Node) -> ProcessServices:
    return ProcessServices(services_settings(node))


def kill_services(node: Node) -> None:
    backend = services(node)
    for name in SERVICES:
        try:
            pid = json.loads(backend.pid_path(name).read_text())["pid"]
        except (OSError, ValueError):
            continue
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(pid), signal.SIGKILL)


def host_death(node: Node) -> None:
    """Agent, keeper, PostgreSQL, Syncthing and services SIGKILLed (the etcd member stays)."""
    node.crash()
    for pid in syncthing_pids(node):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if not KEEP_SERVICES:
        kill_services(node)


@pytest.fixture(scope="module")
def managers() -> Iterator[CliCluster]:
    cluster = CliCluster(make_root(), "etcd")
    witness = cluster.root / "witness.py"
    witness.write_text(WITNESS)
    plugins = [p for p in os.environ.get("HACORE_PLUGINS", "").split(",") if p]
    plugins.append("agent_hook_plugin")
    installed = {e.name for e in importlib.metadata.entry_points(group="hacore")}
    if "sample_manager" not in installed:  # else loaded through its entry point, once
        plugins.append("sample_manager.hacore_plugin")
    path = [str(HERE), str(EXAMPLE)]
    path += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {
        "HACORE_PLUGINS": ",".join(plugins),
        "PYTHONPATH": os.pathsep.join(path),
    }
    try:
        first = add(cluster, "n1", env, witness)
        start = ["cluster", "start", "-c", str(first.config_path), "--timeout", str(WAIT)]
        fingerprint = json.loads(cluster.cli(*start, "--json").stdout)["ca_fingerprint"]
        for name in ("n2", "n3"):
            node = add(cluster, name, env, witness)
            join = ["cluster", "join", first.address, "-c", str(node.config_path)]
            join += ["--node-name", name, "--ca-fingerprint", fingerprint, "--timeout", str(WAIT)]
            cluster.cli(*join)
        yield cluster
    finally:
        cluster.cleanup()
        for node in cluster.nodes.values():
            kill_services(node)
            for pid in syncthing_pids(node):
                kill_with_children(pid)
        if os.environ.get("HACORE_KEEP_TEST_DIRS"):
            print(f"kept {cluster.root}")
        else:
            shutil.rmtree(cluster.root, ignore_errors=True)


# -- looking at it --------------------------------------------------------------------------


def status_codes(cluster: CliCluster) -> dict[str, int | None]:
    codes: dict[str, int | None] = {}
    for name, node in cluster.nodes.items():
        answer = node.probe()
        codes[name] = None if answer is None else answer["http_status"]
    return codes


def healthy(cluster: CliCluster) -> tuple[str, str] | None:
    """(active, synchronous standby) when exactly one node answers /status 200 and its
    database streams to both others, one of them synchronously."""
    active = [name for name, code in status_codes(cluster).items() if code == 200]
    if len(active) != 1:
        return None
    try:
        with psycopg.connect(conninfo(cluster.nodes[active[0]]), connect_timeout=5) as conn:
            rows = conn.execute(
                "SELECT application_name, state, sync_state FROM pg_stat_replication"
            ).fetchall()
    except psycopg.Error:
        return None
    streams = {str(name): (str(state), str(sync)) for name, state, sync in rows}
    others = [name for name in cluster.nodes if name != active[0]]
    if any(streams.get(name, ("", ""))[0] != "streaming" for name in others):
        return None
    sync = [name for name, (_, state) in streams.items() if state in ("sync", "quorum")]
    return (active[0], sync[0]) if len(sync) == 1 else None


def wait_healthy(cluster: CliCluster, steady: float = 2.0) -> tuple[Node, Node]:
    """Wait until :func:`healthy` gives the same answer for ``steady`` seconds."""
    first: list[Any] = [None, 0.0]

    def stable() -> tuple[str, str] | None:
        now = healthy(cluster)
        if now is None or now != first[0]:
            first[:] = [now, time.monotonic()]
            return None
        return now if time.monotonic() - first[1] >= steady else None

    found = wait_for(stable, WAIT, interval=0.5, what="one active, two streaming standbys")
    assert isinstance(found, tuple)
    return cluster.nodes[found[0]], cluster.nodes[found[1]]


def runners(cluster: CliCluster) -> dict[str, list[str]]:
    """Every node that runs any active-only service, with the ones it runs."""
    found = {
        name: [s for s in SERVICES if services(node).status(s).running]
        for name, node in cluster.nodes.items()
    }
    return {name: running for name, running in found.items() if running}


def wait_services_only_on(cluster: CliCluster, node: Node) -> None:
    def only() -> bool:
        return runners(cluster) == {node.name: list(SERVICES)}

    wait_for(only, WAIT, interval=0.3, what=f"the active-only services on {node.name} only")


def witness_records(node: Node) -> list[dict[str, Any]]:
    try:
        lines = witness_log(node).read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def hook_calls(node: Node) -> list[dict[str, Any]]:
    path = control_dir(node.data_dir) / CALLS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_file(path: Path) -> None:
    wait_for(path.is_file, WAIT, interval=0.2, what=f"{path} to appear")


def wait_gone(path: Path) -> None:
    wait_for(lambda: not path.exists(), WAIT, interval=0.2, what=f"{path} to be removed")


def new_active(cluster: CliCluster, old: Node) -> Node:
    def found() -> str | None:
        active = [n for n, code in status_codes(cluster).items() if code == 200 and n != old.name]
        return active[0] if len(active) == 1 else None

    return cluster.nodes[str(wait_for(found, WAIT, interval=0.2, what="a new active"))]


def restart(node: Node) -> None:
    assert node.proc is not None and not node.proc.alive(), f"{node.name} still runs"
    node.proc = None
    node.start()


def token() -> str:
    return secrets.token_hex(3)


# -- the tests ------------------------------------------------------------------------------


def test_host_death_files_and_services_follow_the_new_active(managers: CliCluster) -> None:
    cluster = managers
    old, sync = wait_healthy(cluster)
    wait_services_only_on(cluster, old)
    others = [n for n in cluster.nodes.values() if n is not old]
    seed = f"seed-{token()}.txt"
    (files_dir(old) / seed).write_text("seed\n")
    for node in others:
        wait_file(files_dir(node) / seed)
    marks = {n.name: (len(hook_calls(n)), len(witness_records(n))) for n in others}

    # A file only the old active ever had: its Syncthing froze before it could send it.
    for pid in syncthing_pids(old):
        os.kill(pid, signal.SIGSTOP)
    unsent = f"unsent-{token()}.txt"
    (files_dir(old) / unsent).write_text("written by the old active, never sent")
    host_death(old)

    new = new_active(cluster, old)
    assert new is sync, "in synchronous mode only the synchronous standby may take over"
    other = next(n for n in others if n is not new)
    wait_services_only_on(cluster, new)

    # The order of the promotion, as the companions saw it: the database was promoted (its
    # new timeline's history file written) before the first service was spawned, between
    # before_promote and after_promote; when the witness first looked, its database took
    # writes and its node was the files' source.
    hooks_seen, witnessed = marks[new.name]
    starts = [r for r in witness_records(new)[witnessed:] if r["event"] == "start"]
    assert len(starts) == 1, starts
    start = starts[0]
    assert start["writable"] is True, f"the witness started before writes: {start}"
    assert start["folder"] == "sendonly", f"the witness started before the files flip: {start}"
    hooks = hook_calls(new)[hooks_seen:]
    before = [c for c in hooks if c["hook"] == "before_promote"]
    after = [c for c in hooks if c["hook"] == "after_promote"]
    assert before and after, hooks
    # /proc counts in ticks of 10 ms: the spawn may read up to one tick early
    spawned = start["spawned_mono"]
    assert before[-1]["at"] < spawned + TICK < after[0]["at"], (before[-1], start, after[0])
    promoted = max((new.pgdata / "pg_wal").glob("*.history"), key=lambda p: p.name)
    assert promoted.stat().st_mtime < start["spawned_real"] + TICK, (promoted, start)
    api = api_url(new)
    wait_for(lambda: httpx.get(f"{api}/health").status_code == 200, WAIT, what="the new API")

    later = f"after-failover-{token()}.txt"
    (files_dir(new) / later).write_text("written on the new active")
    wait_file(files_dir(other) / later)

    # The dead host boots again, with a worker a crash left running: the new agent stops it,
    # restarts Syncthing, mirrors the new active and drops the file it never sent.
    assert not syncthing_pids(old)
    services(old).start("worker")
    restart(old)
    active, _ = wait_healthy(cluster)
    assert active is new
    wait_services_only_on(cluster, new)
    assert syncthing_pids(old), f"{old.name}'s agent did not start Syncthing again"
    wait_file(files_dir(old) / later)
    wait_gone(files_dir(old) / unsent)
    for node in (new, other):
        assert not (files_dir(node) / unsent).exists(), f"{unsent} reached {node.name}"

    # A write on a standby is reverted there and reaches nobody.
    stray = f"stray-{token()}.txt"
    (files_dir(old) / stray).write_text("written on a standby")
    wait_gone(files_dir(old) / stray)
    marker = f"marker-{token()}.txt"
    (files_dir(new) / marker).write_text("later than the stray write")
    for node in (old, other):
        wait_file(files_dir(node) / marker)
    for node in (new, other):
        assert not (files_dir(node) / stray).exists(), f"{stray} leaked to {node.name}"


def api_workflow(url: str, workflow_id: int) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{url}/workflows/{workflow_id}", timeout=10).json()
    return body


def reached_step(url: str, workflow_id: int, step: int) -> bool:
    return int(api_workflow(url, workflow_id)["current_step"]) >= step


def test_host_death_resumes_workflows_on_the_new_active(managers: CliCluster) -> None:
    cluster = managers
    old, sync = wait_healthy(cluster)
    wait_services_only_on(cluster, old)
    url = api_url(old)
    wait_for(lambda: httpx.get(f"{url}/health").status_code == 200, WAIT, what="the API")
    total = 30
    ids: dict[str, int] = {}
    for name, resumable in (("resumable", not ALL_FRAGILE), ("fragile", False)):
        answer = httpx.post(
            f"{url}/workflows",
            json={"name": name, "steps": total, "resumable": resumable},
            timeout=10,
        )
        assert answer.status_code == 201, answer.text
        ids[name] = answer.json()["id"]
    for wid in ids.values():
        wait_for(partial(reached_step, url, wid, 2), WAIT, interval=0.1, what="step 2")

    host_death(old)
    new = new_active(cluster, old)
    assert new is sync
    new_url = api_url(new)

    def finished() -> dict[str, Any] | None:
        try:
            found = api_workflow(new_url, ids["resumable"])
        except httpx.HTTPError:
            return None
        return found if found["state"] in ("succeeded", "failed") else None

    done = wait_for(finished, WAIT, interval=0.3, what="the resumable workflow to finish")
    assert isinstance(done, dict)
    assert done["state"] == "succeeded", done
    steps = [(s["step"], s["node"]) for s in done["steps"]]
    k = sum(1 for _, node in steps if node == old.name)
    assert 2 <= k < total, steps
    expected = [(i, old.name) for i in range(1, k + 1)]
    expected += [(i, new.name) for i in range(k + 1, total + 1)]
    assert steps == expected, "resumed at k+1 on the new active, no step run twice"

    fragile = api_workflow(new_url, ids["fragile"])
    assert fragile["state"] == "failed" and "not resumable" in fragile["error"], fragile
    assert {s["node"] for s in fragile["steps"]} == {old.name}
    assert len(fragile["steps"]) == fragile["current_step"] < total

    restart(old)
    active, _ = wait_healthy(cluster)
    assert active is new
    wait_services_only_on(cluster, new)
