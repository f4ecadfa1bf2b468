"""docs/install.md, walked as a new operator would, on four network-namespace hosts.

Three nodes get the ``node.yaml`` printed in the page (only the names, addresses and paths
changed), the agents run, then the page's commands in its order: ``config check
--no-connect``, ``cluster start`` with the password in the environment, ``cluster nodes add``
and a ``cluster join`` per node with the token in ``$HACORE_JOIN_TOKEN`` (never on the command
line), ``cluster haproxy-config --write-ca`` into a real HAProxy on the fourth host, the
application role created over the active's Unix socket, and an application writing through
HAProxy with ``sslmode=verify-ca`` and no client certificate; the page's node.yaml also runs
the sample manager (examples/sample-manager) as the active-only services, and its users send
API requests through HAProxy's second frontend (``--manager-port``). Every node names itself
in ``node.dns_names``, so the printed file checks each agent's certificate with
``verifyhost``. Then the active's host dies (SIGKILL of every process in it): the writes and
the API requests go on through HAProxy on a new active, no acknowledged write or workflow is
lost (the page sets ``failover.synchronous_mode: on``), and both outages are printed. A page
whose ``node.yaml`` or commands no longer work fails here.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import psycopg
import pytest
import yaml
from netns import Host, Network, cleanup_stale, unavailable_reason

from hacore.testing.procs import wait_for
from hacore_plugins.postgresql.settings import default_bin_dir

ROOT = Path(__file__).resolve().parents[2]
INSTALL_DOC = ROOT / "docs" / "install.md"
HACORE = str(ROOT / ".venv" / "bin" / "hacore")
#: generous: a busy two-core machine runs other engineers' servers too
WAIT = 300.0
#: what the page's example uses, replaced by each namespace's address
DOC_HOSTS = ("10.0.0.11", "10.0.0.12", "10.0.0.13")
DOC_HAPROXY = "10.0.0.20"
#: the sample manager's API port in the page, on the nodes and on HAProxy
MANAGER_PORT = 8100


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if default_bin_dir() is None:
        return "no PostgreSQL binaries installed"
    for binary in ("etcd", "syncthing", "haproxy", "psql", "curl"):
        if shutil.which(binary) is None:
            return f"no {binary} on PATH"
    return unavailable_reason()


def doc_node_yaml(doc: Path) -> dict[str, Any]:
    """The first ``yaml`` block of the page's node.yaml section."""
    text = doc.read_text()
    section = text[text.index("## 4. `node.yaml`") :]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None, "docs/install.md has no node.yaml example"
    loaded = yaml.safe_load(block.group(1))
    assert isinstance(loaded, dict)
    return loaded


def node_config(doc: dict[str, Any], index: int, host: Host, lb: Host, root: Path) -> str:
    """The page's file for node ``index`` (1-based): its name, address and paths on this run."""
    config = json.loads(json.dumps(doc))
    assert config["node"]["name"] == "node1" and config["node"]["host"] == DOC_HOSTS[0]
    assert config["node"]["dns_names"] == ["node1.manager.example"]
    data_dir = root / f"node{index}" / "data"
    config["node"]["name"] = f"node{index}"
    config["node"]["host"] = host.address
    config["node"]["dns_names"] = [f"node{index}.manager.example"]
    config["node"]["data_dir"] = str(data_dir)
    clients = config["replication"]["clients"]
    assert [c["network"] for c in clients] == [f"{DOC_HAPROXY}/32"]
    clients[0]["network"] = f"{lb.address}/32"
    files = root / f"node{index}" / "files"
    files.mkdir(parents=True)
    assert config["filesync"]["directories"] == ["/opt/manager/resources"]
    config["filesync"]["directories"] = [str(files)]
    # the manager's commands and health check repeat the node's name, address and paths
    manager = json.dumps({"services": config["services"], "plugins": config["plugins"]})
    for page, here in (
        ("/opt/hacore/bin/", f"{ROOT / '.venv' / 'bin'}/"),
        ("/var/lib/hacore", str(data_dir)),
        ("/opt/manager/resources", str(files)),
        (DOC_HOSTS[0], host.address),
        ("--node node1", f"--node node{index}"),
    ):
        assert page in manager, f"the page's services or plugins section has no {page}"
        manager = manager.replace(page, here)
    config.update(json.loads(manager))
    return yaml.safe_dump(config)


def _run(host: Host, argv: list[str], env: dict[str, str] | None = None) -> str:
    """A command on ``host`` as an operator types it; its output, or a failure with it."""
    extra = [f"{k}={v}" for k, v in (env or {}).items()]
    done = subprocess.run(
        host.argv(["env", *extra, *argv]), capture_output=True, text=True, timeout=WAIT
    )
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stdout}\n{done.stderr}"
    return done.stdout


class Writer(threading.Thread):
    """An application writing through HAProxy; keeps the ids whose commit returned, with the
    server that acknowledged each and when."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.acked: list[int] = []
        self.servers: dict[int, str] = {}
        self.times: dict[int, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        next_id = 1
        while not self.stop.is_set():
            try:
                with psycopg.connect(self.dsn, connect_timeout=2, autocommit=True) as conn:
                    while not self.stop.is_set():
                        row = conn.execute(
                            "INSERT INTO t VALUES (%s) RETURNING host(inet_server_addr())",
                            (next_id,),
                        ).fetchone()
                        assert row is not None
                        self.times[next_id] = time.monotonic()
                        self.servers[next_id] = str(row[0])
                        self.acked.append(next_id)
                        next_id += 1
                        time.sleep(0.05)
            except psycopg.Error:
                next_id += 1  # its fate is unknown: never counted as acknowledged
                time.sleep(0.2)


class ManagerUser(threading.Thread):
    """A user of the manager's API through HAProxy, a request every 0.1 s: every fifth
    creates a one-step workflow (a database write; the worker runs about four a second), the
    others read back the last one made. Keeps when each answered request was sent and
    answered, and each acknowledged workflow (201)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.answered: list[tuple[float, float]] = []
        self.created: list[tuple[float, int]] = []
        self.failed = 0
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                if n % 5 == 0 or not self.created:
                    answer = httpx.post(
                        f"{self.url}/workflows", json={"name": f"user-{n}", "steps": 1}, timeout=3
                    )
                    if answer.status_code == 201:
                        self.created.append((sent, int(answer.json()["id"])))
                else:
                    last = self.created[-1][1]
                    answer = httpx.get(f"{self.url}/workflows/{last}", timeout=3)
                ok = answer.status_code in (200, 201)
            except httpx.HTTPError:
                ok = False
            if ok:
                self.answered.append((sent, time.monotonic()))
            else:
                self.failed += 1
            n += 1
            time.sleep(0.1)

    def answered_after(self, moment: float) -> float | None:
        """When the first request sent after ``moment`` was answered."""
        return next((done for sent, done in list(self.answered) if sent > moment), None)

    def created_after(self, moment: float) -> int | None:
        """The first workflow acknowledged for a request sent after ``moment``."""
        return next((wid for sent, wid in list(self.created) if sent > moment), None)


@pytest.fixture
def network() -> Iterator[Network]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    cleanup_stale()
    with Network(4) as net:
        yield net


@pytest.mark.timeout(1200)
def test_the_install_page_walked_on_four_hosts(network: Network) -> None:
    nodes, lb = network.hosts[:3], network.hosts[3]
    root = Path(tempfile.mkdtemp(prefix="hacore-install-"))
    root.chmod(0o755)  # PostgreSQL runs as postgres: it must enter the data directories
    agents: list[subprocess.Popen[bytes]] = []
    writer: Writer | None = None
    user: ManagerUser | None = None
    try:
        doc = doc_node_yaml(INSTALL_DOC)
        assert doc["failover"]["synchronous_mode"] == "on"
        for i, host in enumerate(nodes, 1):
            config = root / f"node{i}" / "node.yaml"
            text = node_config(doc, i, host, lb, root)
            config.write_text(text)
            config.chmod(0o600)
            _run(host, [HACORE, "config", "check", "-c", str(config), "--no-connect"])
        for i, host in enumerate(nodes, 1):
            log = (root / f"node{i}" / "agent.log").open("wb")
            argv = [HACORE, "agent", "run", "-c", str(root / f"node{i}" / "node.yaml")]
            agents.append(network.popen(host, argv, stdout=log, stderr=subprocess.STDOUT))
        for host in nodes:
            url = f"http://{host.address}:8008/status"

            def empty(host: Host = host, url: str = url) -> bool:
                done = subprocess.run(host.argv(["curl", "-s", url]), capture_output=True)
                return b'"state": "empty"' in done.stdout

            wait_for(empty, WAIT, what=f"{host.address}'s agent waiting for start or join")

        profile = {"HACORE_PROFILE": str(root / "profile.json")}
        password = secrets.token_urlsafe(18)
        started = _run(
            nodes[0],
            [HACORE, "cluster", "start", "-c", str(root / "node1" / "node.yaml")],
            env={**profile, "HACORE_PASSWORD": password},
        )
        assert "node1 is the active node" in started
        assert password not in started

        for i, host in enumerate(nodes[1:], 2):
            add = [HACORE, "cluster", "nodes", "add", f"node{i}", "--host-ip", host.address]
            add += ["--dns-name", f"node{i}.manager.example"]  # its node.dns_names, per the page
            printed = _run(nodes[0], add, env=profile)
            token = re.search(r"--token (\S+)", printed)
            fingerprint = re.search(r"--ca-fingerprint (\S+)", printed)
            assert token and fingerprint, printed
            join = [
                HACORE,
                "cluster",
                "join",
                f"{nodes[0].address}:8008",
                "--node-name",
                f"node{i}",
                "-c",
                str(root / f"node{i}" / "node.yaml"),
                "--ca-fingerprint",
                fingerprint.group(1),
            ]
            joined = _run(
                host,
                join,
                env={
                    "HACORE_PROFILE": str(root / f"profile{i}.json"),
                    "HACORE_JOIN_TOKEN": token.group(1),
                },
            )
            assert f"node{i} joined cluster manager" in joined or "streaming" in joined, joined

        def listed() -> dict[str, Any] | None:
            argv = [HACORE, "cluster", "nodes", "list", "--json"]
            done = subprocess.run(
                nodes[0].argv(["env", f"HACORE_PROFILE={profile['HACORE_PROFILE']}", *argv]),
                capture_output=True,
                text=True,
                timeout=WAIT,
            )
            if done.returncode != 0:
                return None
            rows = {row["name"]: row for row in json.loads(done.stdout)["nodes"]}
            standbys = [rows.get(f"node{i}") or {} for i in (2, 3)]
            if all(s.get("replication") == "streaming" for s in standbys):
                return rows
            return None

        rows = wait_for(listed, WAIT, what="two streaming standbys in nodes list")
        assert rows["node1"]["state"] == "active"

        ca_file = root / "ca.crt"
        haproxy_cfg = _run(
            nodes[0],
            [
                HACORE,
                "cluster",
                "haproxy-config",
                "--write-ca",
                "--ca-file",
                str(ca_file),
                "--manager-port",
                str(MANAGER_PORT),
            ],
            env=profile,
        )
        for i, host in enumerate(nodes, 1):
            for port in (5432, MANAGER_PORT):
                line = (
                    f"server node{i} {host.address}:{port} check port 8008 "
                    f"verifyhost node{i}.manager.example"
                )
                assert line in haproxy_cfg, haproxy_cfg
        (root / "haproxy.cfg").write_text(haproxy_cfg)
        _run(lb, ["haproxy", "-c", "-f", str(root / "haproxy.cfg")])
        haproxy_log = (root / "haproxy.log").open("wb")
        network.popen(
            lb,
            ["haproxy", "-f", str(root / "haproxy.cfg")],
            stdout=haproxy_log,
            stderr=subprocess.STDOUT,
        )

        socket_dir = str(root / "node1" / "data" / "replication" / "run")
        psql = ["psql", "-h", socket_dir, "-p", "5432", "-U", "postgres"]
        create = ["-c", "CREATE ROLE app LOGIN", "-c", "CREATE DATABASE appdb OWNER app"]
        _run(nodes[0], [*psql, *create])
        app_password = secrets.token_urlsafe(12)
        _run(nodes[0], [*psql, "-c", f"ALTER ROLE app PASSWORD '{app_password}'"])
        dsn = (
            f"host={lb.address} port=5432 dbname=appdb user=app password={app_password} "
            f"sslmode=verify-ca sslrootcert={ca_file}"
        )

        def through_haproxy() -> bool:
            try:
                with psycopg.connect(dsn, connect_timeout=2, autocommit=True) as conn:
                    conn.execute("CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY)")
                return True
            except psycopg.Error:
                return False

        wait_for(through_haproxy, WAIT, what="the application reaching the active through HAProxy")
        manager_url = f"http://{lb.address}:{MANAGER_PORT}"

        def manager_through_haproxy() -> bool:
            try:
                return httpx.get(f"{manager_url}/health", timeout=3).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(manager_through_haproxy, WAIT, what="the manager's API through HAProxy")
        writer = Writer(dsn)
        writer.start()
        user = ManagerUser(manager_url)
        user.start()
        wait_for(lambda: len(writer.acked) >= 20, WAIT, what="20 writes through HAProxy")
        wait_for(lambda: len(user.answered) >= 20, WAIT, what="20 API requests through HAProxy")
        assert set(writer.servers.values()) == {nodes[0].address}
        _, first_workflow = user.created[0]
        wait_for(
            lambda: _workflow_ran(manager_url, first_workflow) is not None,
            WAIT,
            what="the old active's worker running a workflow made through HAProxy",
        )
        assert _workflow_ran(manager_url, first_workflow) == {"node1"}

        before = len(writer.acked)
        killed_at = time.monotonic()
        network.signal_host(nodes[0], signal.SIGKILL)

        def on_new_active() -> float | None:
            return next(
                (
                    writer.times[i]
                    for i in list(writer.acked)[before:]
                    if writer.servers[i] != nodes[0].address
                ),
                None,
            )

        db_back = cast(
            float, wait_for(on_new_active, WAIT, what="writes through HAProxy on a new active")
        )
        api_back = cast(
            float,
            wait_for(
                lambda: user.answered_after(killed_at),
                WAIT,
                what="API requests through HAProxy again",
            ),
        )
        db_outage, api_outage = db_back - killed_at, api_back - killed_at
        count, made = len(writer.acked), len(user.answered)
        wait_for(lambda: len(writer.acked) >= count + 20, WAIT, what="20 more writes")
        wait_for(lambda: len(user.answered) >= made + 20, WAIT, what="20 more API requests")
        after = cast(int, wait_for(lambda: user.created_after(killed_at), WAIT, what="a workflow"))
        wait_for(
            lambda: _workflow_ran(manager_url, after) is not None,
            WAIT,
            what="the new active's worker running a workflow made after the host death",
        )
        new_workers = _workflow_ran(manager_url, after)
        assert new_workers and "node1" not in new_workers, new_workers
        writer.stop.set()
        user.stop.set()
        writer.join(timeout=30)
        user.join(timeout=30)
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            present = {row[0] for row in conn.execute("SELECT id FROM t").fetchall()}
        lost = sorted(set(writer.acked) - present)
        assert not lost, f"acknowledged writes lost in the failover: {lost[:20]}"
        everyone = httpx.get(f"{manager_url}/workflows", timeout=30).json()
        missing = sorted({w for _, w in user.created} - {int(w["id"]) for w in everyone})
        assert not missing, f"acknowledged workflows lost in the failover: {missing[:20]}"
        print(
            f"install walk: writes through HAProxy resumed {db_outage:.1f} s and the manager's "
            f"API through HAProxy {api_outage:.1f} s after the host death "
            f"({len(writer.acked)} writes and {len(user.created)} workflows acknowledged, none "
            f"lost; {len(user.answered)} API requests answered, {user.failed} failed)"
        )
    finally:
        if writer is not None:
            writer.stop.set()
        if user is not None:
            user.stop.set()
        for agent in agents:
            agent.kill()
        network.close()
        shutil.rmtree(root, ignore_errors=True)


def _workflow_ran(url: str, workflow_id: int) -> set[str] | None:
    """The nodes whose worker ran the workflow's steps, once it succeeded; None before."""
    try:
        found = httpx.get(f"{url}/workflows/{workflow_id}", timeout=5).json()
    except (httpx.HTTPError, ValueError):
        return None
    if found.get("state") != "succeeded":
        return None
    return {str(step["node"]) for step in found["steps"]}
