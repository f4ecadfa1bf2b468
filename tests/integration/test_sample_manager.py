"""The sample manager (examples/sample-manager) on a real PostgreSQL, and under real agents.

The example package is put on ``sys.path`` (and on the ``PYTHONPATH`` of the API and worker
processes); the project's virtualenv is never modified. One test builds and installs it into
a temporary directory to prove its entry point. Each test gets a database of its own on one
shared server, so workers of one test never see another's workflows; every process a test
starts is stopped by its pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import psycopg
import pytest
import yaml
from agent_fixtures import WAIT, AgentCluster, Node, Recorder, make_root, until
from psycopg.conninfo import conninfo_to_dict

import hacore_plugins.syncthing
from hacore.backends.records import ClusterView
from hacore.config.node import NodeConfig, load_config
from hacore.config.write_back import to_mapping
from hacore.errors import ConfigError, HacoreError
from hacore.plugins.factory import REPLICATION_DIR
from hacore.plugins.registry import load_plugins
from hacore.testing.memory import drop_store
from hacore.testing.procs import ServerProcess, free_port, wait_for
from hacore_plugins.postgresql.backend import PostgresReplication
from hacore_plugins.postgresql.settings import default_bin_dir
from hacore_plugins.services.process import ProcessServices

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sample-manager"
if str(EXAMPLE) not in sys.path:
    sys.path.insert(0, str(EXAMPLE))

from sample_manager import hacore_plugin, workflows  # noqa: E402
from sample_manager.db import connect, ensure_schema  # noqa: E402
from sample_manager.workflows import FAILOVER_REASON, Workflow  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(default_bin_dir() is None, reason="no PostgreSQL binaries installed"),
]

_EMPTY_VIEW = ClusterView(leader=None)
PG_PARAMETERS = {"shared_buffers": "16MB", "max_connections": 40, "fsync": "off"}
STEP = 0.3


# -------------------------------------------------------------------------------------------
# One PostgreSQL server for the module, laid out as hacore's postgresql backend lays out a
# node, so the plugin's default DSN (derived from a node.yaml) really has to find it.


@attrs.frozen
class Server:
    node_dir: Path
    port: int


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    # pytest's own temp dirs are 0700 root: the postgres user could not enter them.
    root = Path(tempfile.mkdtemp(prefix="hacore-sm-"))
    root.chmod(0o755)
    node_dir = root / "node"
    port = free_port()
    pg = PostgresReplication(
        {"port": port, "parameters": PG_PARAMETERS},
        node_name="sm",
        host="127.0.0.1",
        data_dir=node_dir / REPLICATION_DIR,
    )
    try:
        pg.bootstrap(replication_password=secrets.token_hex(8), allowed_hosts=[])
        yield Server(node_dir, port)
    finally:
        pg.stop()  # fast, then immediate, then SIGKILL, by the pid in postmaster.pid
        shutil.rmtree(root, ignore_errors=True)


def node_config(server: Server, database: str, **plugin: Any) -> NodeConfig:
    return load_config(
        {
            "node": {"name": "sm", "host": "127.0.0.1", "data_dir": str(server.node_dir)},
            "consensus": {"backend": "memory"},
            "replication": {"backend": "postgresql", "port": server.port, "database": database},
            "plugins": {"settings": {"sample_manager": plugin}},
        }
    )


@attrs.frozen
class Env:
    config: NodeConfig
    dsn: str
    tmp: Path


@pytest.fixture
def env(server: Server, tmp_path: Path) -> Iterator[Env]:
    """A fresh database; its DSN is the one the plugin derives from the node's config."""
    name = f"sm_{secrets.token_hex(4)}"
    admin = node_config(server, "postgres")
    with connect(hacore_plugin.default_dsn(admin)) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    config = node_config(server, name)
    yield Env(config, hacore_plugin.default_dsn(config), tmp_path)
    with connect(hacore_plugin.default_dsn(admin)) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


class Procs:
    """The API and worker processes of one test, stopped by pid at its end."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.started: list[ServerProcess] = []

    def _start(self, name: str, module: str, *args: str) -> ServerProcess:
        proc = ServerProcess(
            name,
            [sys.executable, "-m", module, *args],
            self.env.tmp / f"{name}.log",
            env={"PYTHONPATH": str(EXAMPLE), "SAMPLE_MANAGER_DSN": self.env.dsn},
        ).start()
        self.started.append(proc)
        return proc

    def worker(self, node: str, concurrency: int = 1) -> ServerProcess:
        return self._start(
            f"worker-{node}",
            "sample_manager.worker",
            f"--node={node}",
            f"--step-seconds={STEP}",
            "--poll-seconds=0.1",
            f"--concurrency={concurrency}",
        )

    def api(self) -> str:
        port = free_port()
        resources = self.env.tmp / "resources"
        self._start("api", "sample_manager.api", f"--port={port}", f"--resources={resources}")
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: httpx.get(f"{url}/health").status_code == 200, WAIT, what="the API")
        return url

    def stop_all(self) -> None:
        for proc in self.started:
            proc.stop(timeout=15)


@pytest.fixture
def procs(env: Env) -> Iterator[Procs]:
    made = Procs(env)
    yield made
    made.stop_all()


def db(env: Env) -> psycopg.Connection[Any]:
    return connect(env.dsn)


def create(env: Env, name: str, steps: int, resumable: bool = True) -> Workflow:
    with db(env) as conn:
        ensure_schema(conn)
        return workflows.create(conn, name, steps, resumable)


def get(env: Env, workflow_id: int) -> Workflow:
    with db(env) as conn:
        found = workflows.get(conn, workflow_id)
    assert found is not None
    return found


def step_nodes(env: Env, workflow_id: int) -> list[tuple[int, str]]:
    with db(env) as conn:
        return [(s.step, s.node) for s in workflows.steps(conn, workflow_id)]


def wait_workflow(
    env: Env, workflow_id: int, check: Callable[[Workflow], bool], what: str
) -> Workflow:
    def reached() -> Workflow | None:
        found = get(env, workflow_id)
        return found if check(found) else None

    result = wait_for(reached, WAIT, interval=0.1, what=f"workflow {workflow_id}: {what}")
    assert isinstance(result, Workflow)
    return result


def wait_sessions_gone(env: Env, application: str) -> None:
    """A killed client's server session (and its advisory locks) ends a moment after it."""

    def gone() -> bool:
        with db(env) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                (application,),
            ).fetchone()
        return row is not None and row[0] == 0

    wait_for(gone, WAIT, what=f"the sessions of {application} to end")


def after_promote(config: NodeConfig) -> None:
    """As the agent calls it: through the plugin manager, with keyword arguments."""
    plugins = load_plugins([hacore_plugin], entry_points=False)
    plugins.hook.hacore_after_promote(config=config, view=_EMPTY_VIEW)


# -------------------------------------------------------------------------------------------
# The application on its own


def test_api_serves_workflows_and_resources(env: Env, procs: Procs) -> None:
    url = procs.api()
    created = httpx.post(f"{url}/workflows", json={"name": "deploy", "steps": 3})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["state"] == "pending" and body["resumable"] is True
    assert (body["name"], body["total_steps"], body["current_step"]) == ("deploy", 3, 0)
    other = httpx.post(f"{url}/workflows", json={"name": "x", "steps": 1, "resumable": False})
    assert other.status_code == 201 and other.json()["resumable"] is False

    one = httpx.get(f"{url}/workflows/{body['id']}").json()
    assert one["id"] == body["id"] and one["steps"] == []
    listed = httpx.get(f"{url}/workflows").json()
    assert [w["id"] for w in listed] == [body["id"], other.json()["id"]]
    assert httpx.get(f"{url}/workflows", params={"state": "running"}).json() == []
    assert httpx.get(f"{url}/workflows/999999").status_code == 404
    for bad in ({"name": "", "steps": 1}, {"name": "a", "steps": 0}, {"name": "a", "steps": True}):
        answer = httpx.post(f"{url}/workflows", json=bad)
        assert answer.status_code == 400, bad
        assert "error" in answer.json()
    assert httpx.post(f"{url}/workflows", content=b"{nope").status_code == 400
    assert httpx.get(f"{url}/workflows", params={"state": "odd"}).status_code == 400

    assert httpx.get(f"{url}/resources").json() == []
    put = httpx.put(f"{url}/resources/blueprint.yaml", content=b"tosca: 1\n")
    assert put.status_code == 201 and put.json() == {"name": "blueprint.yaml", "size": 9}
    assert httpx.put(f"{url}/resources/blueprint.yaml", content=b"tosca: 2\n").status_code == 200
    assert (env.tmp / "resources" / "blueprint.yaml").read_bytes() == b"tosca: 2\n"
    assert httpx.get(f"{url}/resources").json() == [{"name": "blueprint.yaml", "size": 9}]
    assert httpx.get(f"{url}/resources/blueprint.yaml").content == b"tosca: 2\n"
    assert httpx.get(f"{url}/resources/missing").status_code == 404
    for bad_name in (".hidden", "a%2Fb", "..", "a b"):
        assert httpx.put(f"{url}/resources/{bad_name}", content=b"x").status_code in (400, 404)
    assert sorted(p.name for p in (env.tmp / "resources").iterdir()) == ["blueprint.yaml"]


def test_worker_runs_a_workflow_to_success(env: Env, procs: Procs) -> None:
    url = procs.api()
    created = httpx.post(f"{url}/workflows", json={"name": "install", "steps": 4}).json()
    procs.worker("w1")
    done = wait_workflow(env, created["id"], lambda w: w.state == "succeeded", "success")
    assert done.current_step == 4 and done.node == "w1" and done.error is None
    body = httpx.get(f"{url}/workflows/{created['id']}").json()
    assert [(s["step"], s["node"]) for s in body["steps"]] == [(i, "w1") for i in range(1, 5)]
    times = [s["done_at"] for s in body["steps"]]
    assert times == sorted(times)


def test_killed_worker_then_after_promote_resumes_or_fails(env: Env, procs: Procs) -> None:
    resumable = create(env, "resumable", 12, resumable=True)
    fragile = create(env, "fragile", 12, resumable=False)
    first = procs.worker("w1", concurrency=2)
    for wf in (resumable, fragile):
        wait_workflow(env, wf.id, lambda w: w.state == "running" and w.current_step >= 2, "step 2")
    first.kill()
    wait_sessions_gone(env, "sample-manager-worker w1")

    interrupted = get(env, resumable.id)
    k = interrupted.current_step
    assert interrupted.state == "running" and 2 <= k < 12
    assert step_nodes(env, resumable.id) == [(i, "w1") for i in range(1, k + 1)]
    failed_at = get(env, fragile.id).current_step
    assert get(env, fragile.id).state == "running"

    # A live worker's workflow must survive the recovery untouched.
    busy = create(env, "busy", 16, resumable=False)
    procs.worker("w2", concurrency=2)
    wait_workflow(env, busy.id, lambda w: w.state == "running" and w.node == "w2", "w2 busy")
    assert get(env, resumable.id).state == "running", "a worker must never take a running one"

    after_promote(env.config)

    assert get(env, busy.id).state == "running" and get(env, busy.id).node == "w2"
    lost = get(env, fragile.id)
    assert (lost.state, lost.error, lost.current_step) == ("failed", FAILOVER_REASON, failed_at)
    done = wait_workflow(env, resumable.id, lambda w: w.state == "succeeded", "the resume")
    assert done.current_step == 12 and done.node == "w2"
    expected = [(i, "w1") for i in range(1, k + 1)] + [(i, "w2") for i in range(k + 1, 13)]
    assert step_nodes(env, resumable.id) == expected, "every step once, resumed at k+1"
    assert step_nodes(env, fragile.id) == [(i, "w1") for i in range(1, failed_at + 1)]

    after_promote(env.config)  # idempotent: nothing left to settle
    assert get(env, fragile.id).state == "failed"
    wait_workflow(env, busy.id, lambda w: w.state == "succeeded", "the live one to finish")
    assert step_nodes(env, busy.id) == [(i, "w2") for i in range(1, 17)]


def test_sigterm_hands_back_resumable_and_finishes_the_rest(env: Env, procs: Procs) -> None:
    long = create(env, "long", 40, resumable=True)
    short = create(env, "short", 6, resumable=False)
    worker = procs.worker("w1", concurrency=2)
    for wf in (long, short):
        wait_workflow(env, wf.id, lambda w: w.current_step >= 1, "step 1")
    worker.send_signal(signal.SIGTERM)
    assert worker.proc is not None
    assert worker.proc.wait(timeout=WAIT) == 0, worker.log_tail()

    handed = get(env, long.id)
    assert handed.state == "pending" and handed.node is None and 1 <= handed.current_step < 40
    finished = get(env, short.id)
    assert finished.state == "succeeded" and finished.current_step == 6
    assert len(step_nodes(env, long.id)) == handed.current_step


def test_worker_carries_on_after_its_connection_is_cut(env: Env, procs: Procs) -> None:
    wf = create(env, "cut", 10)
    worker = procs.worker("w1")
    wait_workflow(env, wf.id, lambda w: w.current_step >= 2, "step 2")
    with db(env) as conn:
        cut = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'sample-manager-worker w1'"
        ).fetchone()
    assert cut is not None and cut[0] == 1
    done = wait_workflow(env, wf.id, lambda w: w.state == "succeeded", "success")
    assert done.current_step == 10
    assert step_nodes(env, wf.id) == [(i, "w1") for i in range(1, 11)]
    assert "carrying on after a lost connection" in worker.log_tail(200)


def test_recover_command_settles_orphans(env: Env, procs: Procs) -> None:
    wf = create(env, "orphan", 20, resumable=False)
    worker = procs.worker("w1")
    wait_workflow(env, wf.id, lambda w: w.current_step >= 1, "step 1")
    worker.kill()
    wait_sessions_gone(env, "sample-manager-worker w1")
    run = subprocess.run(
        [sys.executable, "-m", "sample_manager.recover", "--dsn", env.dsn],
        env={**os.environ, "PYTHONPATH": str(EXAMPLE)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"resumed": [], "failed": [wf.id], "live": []}
    assert get(env, wf.id).error == "interrupted (its worker stopped), not resumable"


# -------------------------------------------------------------------------------------------
# The plugin


def test_health_check_follows_the_api(server: Server, procs: Procs) -> None:
    port = free_port()
    config = node_config(server, "unused", api_url=f"http://127.0.0.1:{port}")
    plugins = load_plugins([hacore_plugin], entry_points=False)
    [check] = [c for found in plugins.hook.hacore_health_checks(config=config) for c in found]
    assert check.name == "sample-manager-api" and check.active_only

    quick = hacore_plugin.ApiAnswersCheck(f"http://127.0.0.1:{port}", 2.0, startup_grace=0.01)
    result = quick.probe()
    assert not result.ok and "/health" in result.detail
    graceful = check.run()
    assert graceful.ok and graceful.detail.startswith("starting (grace 10s)")

    url = procs.api()
    up = hacore_plugin.ApiAnswersCheck(url, 2.0, startup_grace=0.01).run()
    assert up.ok and up.detail == f"{url}/health: 200"


def test_settings_are_checked(server: Server, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) dns"):
        hacore_plugin.ManagerSettings.from_config(node_config(server, "x", dns="host=/tmp"))
    with pytest.raises(ConfigError, match="api_url must be an http"):
        hacore_plugin.ManagerSettings.from_config(node_config(server, "x", api_url="ftp://a"))
    with pytest.raises(ConfigError, match="check_timeout must be a number of seconds"):
        hacore_plugin.ManagerSettings.from_config(node_config(server, "x", check_timeout=0))
    bare = load_config(
        {"node": {"name": "a", "host": "127.0.0.1"}, "consensus": {"backend": "memory"}}
    )
    with pytest.raises(ConfigError, match=r"dsn is required unless replication\.backend"):
        hacore_plugin.ManagerSettings.from_config(bare)
    given = attrs.evolve(
        bare, plugins=attrs.evolve(bare.plugins, settings={"sample_manager": {"dsn": "dbname=m"}})
    )
    assert hacore_plugin.ManagerSettings.from_config(given).dsn == "dbname=m"


def test_after_promote_reports_an_unreachable_database(server: Server) -> None:
    config = node_config(server, "x", dsn=f"host=127.0.0.1 port={free_port()} dbname=x")
    with pytest.raises(HacoreError, match="could not settle interrupted workflows"):
        hacore_plugin.hacore_after_promote(config=config, view=_EMPTY_VIEW)


PROBE = """
import json
from hacore.plugins.registry import load_plugins
plugins = load_plugins()
module = plugins.pm.get_plugin("sample_manager")
hooks = sorted(n for n in ("hacore_after_promote", "hacore_health_checks") if hasattr(module, n))
print(json.dumps({"file": getattr(module, "__file__", None), "hooks": hooks}))
"""


def test_installs_as_a_package_with_its_entry_point(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "--no-deps", "--no-build-isolation", "--no-index", "--target", str(target),
            str(source),
        ],
        check=True,
        timeout=180,
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("HACORE_")}
    env["PYTHONPATH"] = str(target)
    run = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)
    assert found["file"] is not None and Path(found["file"]).is_relative_to(target)
    assert found["hooks"] == ["hacore_after_promote", "hacore_health_checks"]


# -------------------------------------------------------------------------------------------
# End to end: real agents, the API and worker as active-only services, a host death


class ManagerCluster(AgentCluster):
    """Agent nodes whose node.yaml runs the sample manager exactly as the README shows."""

    def __init__(self, root: Path, store: dict[str, Any]) -> None:
        self.api_ports: dict[str, int] = {}
        super().__init__(root, store, backend="memory")

    def config(self, name: str, port: int) -> NodeConfig:
        base = super().config(name, port)
        node_dir = base.node.data_dir
        api_port = self.api_ports.setdefault(name, free_port())
        env = {"PYTHONPATH": str(EXAMPLE), "SAMPLE_MANAGER_DSN": hacore_plugin.default_dsn(base)}
        raw = to_mapping(base)
        raw["services"] = {
            "backend": "process",
            "active_only": ["api", "worker"],
            "run_dir": str(node_dir / "services"),
            "stop_timeout": 5,
            "commands": {
                "api": {
                    "command": [
                        sys.executable, "-m", "sample_manager.api", f"--port={api_port}",
                        f"--resources={node_dir / 'resources'}",
                    ],
                    "env": env,
                },
                "worker": {
                    "command": [
                        sys.executable, "-m", "sample_manager.worker", f"--node={name}",
                        f"--step-seconds={STEP}", "--poll-seconds=0.2",
                    ],
                    "env": env,
                },
            },
        }  # fmt: skip
        raw["plugins"] = {
            "settings": {"sample_manager": {"api_url": f"http://127.0.0.1:{api_port}"}}
        }
        return load_config(raw)

    def add(self, name: str) -> Node:
        config = self.config(name, free_port())
        recorder = Recorder()
        plugins = load_plugins([recorder, hacore_plugin])
        node = Node(name, config, plugins, recorder, self._agent(config, plugins))
        self.nodes[name] = node
        return node

    def url(self, node: Node) -> str:
        return f"http://127.0.0.1:{self.api_ports[node.name]}"

    def services(self, node: Node) -> ProcessServices:
        assert node.config.services is not None
        return ProcessServices(node.config.services.settings)

    def crash_services(self, node: Node) -> None:
        """SIGKILL the node's API and worker, as a host death would."""
        services = self.services(node)
        for name in ("api", "worker"):
            data = json.loads(services.pid_path(name).read_text())
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(data["pid"]), signal.SIGKILL)
            wait_for(partial(_stopped, services, name), 30, what=f"{name} to die")

    def stop_services(self) -> None:
        for node in self.nodes.values():
            with contextlib.suppress(HacoreError):
                self.services(node).stop_all(["worker", "api"])


def _stopped(services: ProcessServices, name: str) -> bool:
    return not services.status(name).running


@pytest.fixture(scope="module")
def managers() -> Iterator[ManagerCluster]:
    store = f"sm-{secrets.token_hex(4)}"
    root = make_root()
    cluster = ManagerCluster(root, {"store": store})
    try:
        first, second = cluster.add("n1"), cluster.add("n2")
        cluster.bootstrap(first)
        for node in (first, second):
            node.agent.start()
        cluster.wait_converged()
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:  # after the agents: a live agent would start its active's services again
            cluster.stop_services()
            drop_store(store)
        shutil.rmtree(root, ignore_errors=True)


def api_workflow(url: str, workflow_id: int) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{url}/workflows/{workflow_id}", timeout=10).json()
    return body


def reached_step(url: str, workflow_id: int, step: int) -> bool:
    return int(api_workflow(url, workflow_id)["current_step"]) >= step


def test_failover_resumes_workflows_on_the_new_active(managers: ManagerCluster) -> None:
    old = managers.wait_converged()
    managers.sync_standby()  # every acknowledged step is on the standby too
    url = managers.url(old)
    wait_for(lambda: httpx.get(f"{url}/health").status_code == 200, WAIT, what="the API")
    total = 20
    ids: dict[str, int] = {}
    for name, resumable in (("resumable", True), ("fragile", False)):
        answer = httpx.post(
            f"{url}/workflows", json={"name": name, "steps": total, "resumable": resumable}
        )
        assert answer.status_code == 201, answer.text
        ids[name] = answer.json()["id"]
    for wid in ids.values():
        until(partial(reached_step, url, wid, 2), "step 2 on the active")

    managers.kill_agent(old)
    managers.crash_services(old)
    managers.kill_database(old)

    new = until(lambda: next((n for n in managers.actives() if n is not old), None), "failover")
    new_url = managers.url(new)
    assert "after_promote" in new.recorder.names()

    done = until(
        lambda: (w := api_workflow(new_url, ids["resumable"]))["state"] == "succeeded" and w,
        "the resumable workflow to finish on the new active",
    )
    steps = [(s["step"], s["node"]) for s in done["steps"]]
    k = sum(1 for _, node in steps if node == old.name)
    assert 2 <= k < total
    expected = [(i, old.name) for i in range(1, k + 1)]
    expected += [(i, new.name) for i in range(k + 1, total + 1)]
    assert steps == expected, "resumed at k+1 on the new active, no step run twice"

    fragile = api_workflow(new_url, ids["fragile"])
    assert fragile["state"] == "failed" and fragile["error"] == FAILOVER_REASON
    assert {node for _, node in [(s["step"], s["node"]) for s in fragile["steps"]]} == {old.name}
    assert len(fragile["steps"]) == fragile["current_step"] < total


def readme_node_yaml() -> dict[str, Any]:
    text = (EXAMPLE / "README.md").read_text()
    section = text.split("## Made HA through configuration", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    loaded: dict[str, Any] = yaml.safe_load(block)
    return loaded


def test_readme_node_yaml_is_valid_for_hacore() -> None:
    plugins = load_plugins([hacore_plugin], entry_points=True)
    if "syncthing" not in plugins.registry.names("filesync"):
        plugins = load_plugins([hacore_plugin, hacore_plugins.syncthing])
    config = load_config(readme_node_yaml(), registry=plugins.registry)
    assert config.services is not None and config.filesync is not None
    assert config.services.active_only == ("api", "worker")
    assert config.filesync.directories == (Path("/var/lib/manager/resources"),)
    settings = hacore_plugin.ManagerSettings.from_config(config)
    assert settings.api_url == "http://10.0.0.11:8100"
    commands = ProcessServices(config.services.settings).config.commands
    for name in ("api", "worker"):
        given = conninfo_to_dict(commands[name].env["SAMPLE_MANAGER_DSN"])
        assert given == conninfo_to_dict(settings.dsn), "the services and the hook share a DSN"
    assert "--resources /var/lib/manager/resources" in " ".join(commands["api"].argv)
