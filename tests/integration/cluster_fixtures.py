"""Real nodes for the cluster CLI tests: one ``hacore agent run`` process per node.

Each node has its own data directory (under a root the ``postgres`` user may enter), API
port, PostgreSQL port and managed store ports, all free loopback ports. The CLI runs in this
process (click's runner) against those services, with its profile in the root. Nodes run with
TLS (the default): the tests probe them in plain HTTP as a load balancer does, and read the
cluster view over HTTPS, trusting the cluster CA alone.

Every process is stopped by pid: the service by its ServerProcess; what it may leave behind
(after a SIGKILL) by the pid files in its data directory: the postmaster and its children,
the detached store server, and the fence keeper. The node's layout, configuration and
processes are the local-cluster scaffold's (:mod:`hacore.testing.local_cluster`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import psycopg
from click.testing import CliRunner, Result

from hacore import pki
from hacore.cli import cli
from hacore.client.profile import require_profile
from hacore.testing.local_cluster import LocalNode, managed_store_ports
from hacore.testing.local_cluster import kill_tree as kill_tree
from hacore.testing.procs import wait_for

PG_PARAMETERS = {"shared_buffers": "16MB", "max_connections": 30, "fsync": "off"}
TIMING = {"ttl": 6.0, "loop_wait": 1.0, "retry_timeout": 1.0, "safety_margin": 1.5}
#: generous: a busy two-core machine runs other engineers' servers too
WAIT = 150.0
HACORE = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "hacore")


def make_root() -> Path:
    # pytest's temp dirs are 0700 root: the postgres user could not enter them.
    root = Path(tempfile.mkdtemp(prefix="hacore-cli-"))
    root.chmod(0o755)
    return root


def tree(directory: Path) -> dict[str, tuple[int, int, int]]:
    """Every file under ``directory``: (size, mode, mtime_ns), to prove nothing changed."""
    found = {}
    for path in sorted(directory.rglob("*")):
        stat = path.lstat()
        found[str(path.relative_to(directory))] = (stat.st_size, stat.st_mode, stat.st_mtime_ns)
    return found


@attrs.define
class Node(LocalNode):
    namespace: str = ""
    env: dict[str, str] = attrs.field(factory=dict)
    #: more top-level sections of node.yaml (``tls: {enabled: false}``...)
    extra: dict[str, Any] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        self.store = managed_store_ports(self.backend)

    @property
    def url(self) -> str:
        """The API over HTTPS (a member with TLS); :meth:`ca_context` verifies it."""
        return f"https://127.0.0.1:{self.api_port}"

    @property
    def plain_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "pki" / "node" / "ca.crt"

    def ca_context(self) -> ssl.SSLContext:
        """A client context that trusts only the CA this node holds, hostname checked."""
        return pki.ssl_client_context(pki.load_ca_certificate(self.ca_file))

    def write_config(self, **sections: Any) -> dict[str, Any]:
        return super().write_config(
            cluster="clitest",
            namespace=self.namespace,
            timing=TIMING,
            checks={"check_fail_fast": False},
            replication={"parameters": PG_PARAMETERS},
            extra=self.extra,
            **sections,
        )

    def start(self) -> Node:
        self.write_config()
        self.spawn_agent([HACORE], env=self.env)
        wait_for(self.answers, WAIT, interval=0.1, what=f"the agent service of {self.name}")
        return self

    def answers(self) -> bool:
        return self.probe() is not None

    def probe(self, path: str = "/status") -> dict[str, Any] | None:
        """The probe's JSON (200 or 503) in plain HTTP, as a load balancer asks; None when the
        service does not answer."""
        try:
            resp = httpx.get(self.plain_url + path, timeout=3.0)
        except httpx.HTTPError:
            return None
        data = resp.json()
        data["http_status"] = resp.status_code
        return data

    def cluster(self, auth: tuple[str, str]) -> dict[str, Any]:
        resp = httpx.get(self.url + "/cluster", auth=auth, timeout=10.0, verify=self.ca_context())
        resp.raise_for_status()
        data: dict[str, Any] = resp.json()
        return data

    def connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=str(self.socket_dir),
            port=self.pg_port,
            user="postgres",
            dbname="postgres",
            autocommit=True,
            connect_timeout=10,
        )

    def slots(self) -> set[str]:
        with self.connect() as conn:
            return {row[0] for row in conn.execute("SELECT slot_name FROM pg_replication_slots")}

    def crash(self, *, store: bool = False) -> dict[str, int]:
        """SIGKILL the agent service, its fence keeper and the whole PostgreSQL server, as
        a host death would (the detached store server is left running)."""
        assert self.proc is not None
        assert self.postmaster() is not None, f"{self.name}'s database is not running"
        return super().crash(store=store)

    def cleanup(self, timeout: float = 90.0) -> None:
        super().cleanup(timeout)


def etcdctl(node: Node, *args: str) -> str:
    """``etcdctl`` against the node's managed etcd member, with its client certificate
    (``--endpoints`` among ``args`` names others)."""
    pki = node.data_dir / "pki" / "node"
    endpoints = f"https://127.0.0.1:{node.store['client_port']}"
    result = subprocess.run(
        [
            "etcdctl",
            f"--endpoints={endpoints}",
            f"--cacert={pki / 'ca.crt'}",
            f"--cert={pki / 'node.crt'}",
            f"--key={pki / 'node.key'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def store_leader(node: Node) -> str:
    """The name of the managed etcd member that leads the store, as ``node``'s member sees it."""
    members = json.loads(etcdctl(node, "member", "list", "-w", "json"))["members"]
    status = json.loads(etcdctl(node, "endpoint", "status", "-w", "json"))
    leader = status[0]["Status"]["leader"]
    return str(next(m["name"] for m in members if m["ID"] == leader))


#: clusters not yet cleaned up: a failing test's report carries their agents' log tails
#: (tests/integration/conftest.py)
LIVE: set[CliCluster] = set()


class CliCluster:
    """The nodes of one test cluster, and the CLI run against them with one profile."""

    def __init__(self, root: Path, backend: str) -> None:
        LIVE.add(self)
        self.root = root
        self.backend = backend
        self.namespace = f"cli-{secrets.token_hex(4)}"
        self.profile = root / "profile.json"
        self.nodes: dict[str, Node] = {}
        self.outputs: dict[str, str] = {}
        #: what cluster start printed for joiners
        self.ca_fingerprint = ""
        #: each node's agent log as it was once the cluster was formed (before any test)
        self.formed_logs: dict[str, str] = {}

    def add(
        self, name: str, env: dict[str, str] | None = None, extra: dict[str, Any] | None = None
    ) -> Node:
        node = Node(name, self.root, self.backend, self.namespace, env=env or {}, extra=extra or {})
        self.nodes[name] = node
        return node.start()

    def cli(self, *args: str, code: int | None = 0, env: dict[str, str] | None = None) -> Result:
        env = {"HACORE_PROFILE": str(self.profile), **(env or {})}
        result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
        if code is not None:
            assert result.exit_code == code, (
                f"hacore {' '.join(args)} exited {result.exit_code}, not {code}:\n{result.output}"
            )
        return result

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def credentials(self) -> tuple[str, str]:
        """The profile's, wherever it keeps the password (the file, or a keyring)."""
        return require_profile(self.profile).auth

    def view(self) -> dict[str, Any]:
        """``nodes list --json``, by node name."""
        listed = self.cli_json("cluster", "nodes", "list")
        return {row["name"]: row for row in listed["nodes"]}

    def active(self) -> Node:
        status = self.cli_json("cluster", "status")
        assert status["active"], status
        return self.nodes[status["active"]]

    def cleanup(self) -> None:
        LIVE.discard(self)
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                node.cleanup()

    def log_tails(self, lines: int = 40) -> str:
        """The last lines of every node's agent log, for a failing test's report."""
        parts = []
        for node in self.nodes.values():
            try:
                text = node.log_path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                text = ["(no log)"]
            parts.append(f"--- {node.name} ({node.log_path})\n" + "\n".join(text))
        return "\n".join(parts)


def formed_cluster(
    backend: str,
    *,
    start_json: bool = False,
    env: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Iterator[CliCluster]:
    """Body of a fixture: n1 starts the cluster, n2 and n3 join it, all through the CLI.

    ``start_json``: ``cluster start --json``, whose answer is kept in ``outputs["start"]``
    too; else the human output, from which the CA fingerprint is read as an operator would.
    ``env`` and ``extra`` are given to every node (:meth:`CliCluster.add`).
    """
    import shutil

    cluster = CliCluster(make_root(), backend)
    try:
        first = cluster.add("n1", env=env, extra=extra)
        start = ["cluster", "start", "-c", str(first.config_path), "--timeout", str(WAIT)]
        out = cluster.cli(*start, *(["--json"] if start_json else []))
        cluster.outputs["start"] = out.output
        if start_json:
            cluster.ca_fingerprint = json.loads(out.stdout)["ca_fingerprint"]
        else:
            found = re.search(r"cluster CA fingerprint \(SHA-256\): ([0-9A-F:]+)", out.output)
            assert found, out.output
            cluster.ca_fingerprint = found.group(1)
        for name in ("n2", "n3"):
            node = cluster.add(name, env=env, extra=extra)
            cluster.outputs[f"join {name}"] = cluster.cli(
                *node.join_arguments(first),
                "--ca-fingerprint",
                cluster.ca_fingerprint,
                "--timeout",
                str(WAIT),
            ).output
        # A join ends when the joiner streams; the node that answers the CLI lists it from
        # its next loop on (up to loop_wait later): formed means listed there too.
        wait_for(lambda: set(cluster.view()) == set(cluster.nodes), WAIT, what="every node listed")
        cluster.formed_logs = {
            name: node.log_path.read_text(errors="replace") for name, node in cluster.nodes.items()
        }
        yield cluster
    finally:
        cluster.cleanup()
        if os.environ.get("HACORE_KEEP_TEST_DIRS"):
            print(f"kept {cluster.root}")
        else:
            shutil.rmtree(cluster.root, ignore_errors=True)
