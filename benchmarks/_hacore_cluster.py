"""hacore's side of the failover benchmark: N agents (3 unless asked), each in a process of its own.

Imported, :class:`HacoreCluster` writes each node's ``node.yaml`` (laid out and written by the
local-cluster scaffold, :mod:`hacore.testing.local_cluster`, as for the demo and the tests)
and starts this file as a script per node. Run as a script, it is one node: the real
:class:`~hacore.agent.runtime.Agent` with the postgresql plugin and the store's backend (etcd,
or ZooKeeper: :mod:`_stores`), and the
real REST API (:class:`~hacore.api.server.ApiServer`) in front of it, until SIGTERM. With
``--bootstrap`` it first does what ``cluster start`` does for the first node (a new primary,
the status key naming it) and creates the benchmark's role and table; with ``--seed`` as well,
the new primary's data directory is then swapped for a copy of the seed (a database an earlier
bootstrap made and filled, its role and table in it) before the status key is written.

The node process runs as root (the plugin runs PostgreSQL as the ``postgres`` user itself);
the plugin starts the postmaster in a session of its own, so a host death stops the node
process's group and the postmaster with its children.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import _timeline
import httpx
import yaml
from _cluster import (
    CLIENT_PASSWORD,
    CLIENT_USER,
    HOST,
    PG_PARAMETERS,
    TABLE,
    BenchCluster,
    Node,
    Timings,
    copy_tree,
)
from _stores import ETCD, Store

from hacore.api.errors import UnavailableError
from hacore.api.facade import AgentFacade
from hacore.testing.local_cluster import LocalNode
from hacore.testing.procs import ServerProcess, free_port

API_USER = "bench"
API_PASSWORD = "bench-api-password"
REPLICATION_PASSWORD = "bench-replication"


def unavailable_reason() -> str | None:
    """Why the hacore side cannot run from this tree, or None."""
    try:
        from hacore.agent.runtime import Agent  # noqa: F401
        from hacore.api.server import ApiServer  # noqa: F401
        from hacore_plugins.postgresql.settings import default_bin_dir
    except ImportError as exc:
        return f"the hacore agent cannot be imported yet: {exc}"
    if default_bin_dir() is None:
        return "no PostgreSQL binaries installed"
    return None


#: the agent's log lines that mark the steps of a promotion: the decision to campaign (the
#: dead active's lease gone), the election won, the decision to promote (one observation
#: later), the database writable (hacore/agent/execute.py, the PostgreSQL plugin)
PROMOTION_MARKS = {
    "campaign_s": "campaign -> promoting",
    "won_s": "won the election",
    "promote_s": "promote -> active",
    "writable_s": ": promoted, timeline",
}


class HacoreCluster(BenchCluster):
    seedable = True

    def __init__(
        self,
        system: str,
        workdir: Path,
        consensus: Mapping[str, Any],
        *,
        timing: Mapping[str, Any] | None = None,
        synchronous: str = "on",
        nodes: int = 3,
        store: Store = ETCD,
    ) -> None:
        """``consensus``: the section reaching the store (its ``backend`` and settings);
        ``store`` says which it is in :meth:`timings`."""
        from hacore.api.auth import hash_password
        from hacore.config.node import load_config

        self.system = system
        self.workdir = workdir
        self.synchronous = synchronous
        self.store = store
        namespace = f"bench-{uuid.uuid4().hex[:8]}"
        self.nodes = [
            Node(name, pg, api, f"http://{HOST}:{api}/status")
            for name, pg, api in ((f"h{i}", free_port(), free_port()) for i in range(1, nodes + 1))
        ]
        password_hash = hash_password(API_PASSWORD)
        #: each node's layout (data directory, node.yaml, log) and configuration
        self.layouts = {
            node.name: LocalNode(
                node.name,
                workdir,
                consensus["backend"],
                api_port=node.api_port,
                pg_port=node.pg_port,
            )
            for node in self.nodes
        }
        self.raw: dict[str, dict[str, Any]] = {
            name: layout.node_config(
                cluster="bench",
                namespace=namespace,
                failover={"synchronous_mode": synchronous},
                consensus=consensus,
                replication={"parameters": dict(PG_PARAMETERS), "synchronous": synchronous},
                extra={
                    "api": {"auth": {"username": API_USER, "password_hash": password_hash}},
                    **({"timing": dict(timing)} if timing else {}),
                },
            )
            for name, layout in self.layouts.items()
        }
        # Validated here, as the agent will: a rejected timing fails before anything starts.
        self.config = load_config(self.raw[self.nodes[0].name])
        self.processes: dict[str, ServerProcess] = {}
        self.dead: set[str] = set()

    def pgdata(self, name: str) -> Path:
        return self.layouts[name].pgdata

    def promotion_phases(self, name: str, since: float) -> dict[str, float]:
        """The steps of :data:`PROMOTION_MARKS`, from the agent's log."""
        found: dict[str, float] = {}
        text = self.layouts[name].log_path.read_text(errors="replace")
        for line in text.splitlines():
            try:
                at = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            except ValueError:
                continue
            if at < since:
                continue
            for key, mark in PROMOTION_MARKS.items():
                if key not in found and mark in line:
                    found[key] = round(at - since, 3)
        return found

    def timeline(self, name: str) -> Path | None:
        return self.layouts[name].config_path.with_suffix(".timeline.jsonl")

    def _api(self, name: str) -> str:
        return f"http://{HOST}:{self.node(name).api_port}"

    def _start_node(self, node: Node, *, bootstrap: bool) -> None:
        layout = self.layouts[node.name]
        config = layout.config_path
        config.write_text(yaml.safe_dump(self.raw[node.name], sort_keys=False))
        argv = [sys.executable, str(Path(__file__).resolve()), "--config", str(config)]
        if bootstrap:
            argv.append("--bootstrap")
            if self.seed is not None:
                argv += ["--seed", str(self.seed)]
        self.processes[node.name] = ServerProcess(
            node.name, argv, layout.log_path, cwd=self.workdir
        ).start()

    def start(self) -> None:
        first, *others = self.nodes
        self._start_node(first, bootstrap=True)
        deadline = time.monotonic() + 120
        while self.status_code(first.name) != 200:
            if not self.processes[first.name].alive() or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{self.system}: {first.name} did not become active:\n"
                    f"{self.processes[first.name].log_tail()}"
                )
            time.sleep(0.2)
        for node in others:
            self._start_node(node, bootstrap=False)

    # -- state -------------------------------------------------------------------------------

    def _probe(self, name: str, path: str) -> dict[str, Any] | None:
        try:
            response = httpx.get(self._api(name) + path, timeout=1.0)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        body: dict[str, Any] = response.json()
        return body

    def _cluster_json(self, name: str) -> dict[str, Any]:
        response = httpx.get(
            self._api(name) + "/cluster", auth=(API_USER, API_PASSWORD), timeout=2.0
        )
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def converged(self) -> str | None:
        live = [n.name for n in self.nodes if n.name not in self.dead]
        actives = [name for name in live if self._probe(name, "/status") is not None]
        if len(actives) != 1:
            return None
        active = actives[0]
        for name in live:
            if name == active:
                continue
            standby = self._probe(name, "/standby")
            if standby is None or standby.get("leader") != active:
                return None
        if self.synchronous != "off" and self.sync_standby() is None:
            return None
        return active

    def sync_standby(self) -> str | None:
        if self.synchronous == "off":
            return None
        for node in self.nodes:
            if node.name in self.dead or self._probe(node.name, "/status") is None:
                continue
            status = self._cluster_json(node.name).get("status") or {}
            names = [n for n in status.get("sync_standbys", []) if n not in self.dead]
            if status.get("name") == node.name and names:
                return str(names[0])
        return None

    def timings(self) -> Timings:
        """hacore refuses a timing it cannot honour instead of changing it, so the validated
        configuration is what runs."""
        timing = self.config.timing
        return Timings(
            ttl=timing.ttl,
            loop_wait=timing.loop_wait,
            retry_timeout=timing.retry_timeout,
            synchronous=self.synchronous != "off",
            extra={
                "safety_margin": f"{timing.safety_margin:g} s",
                **({"profile": timing.profile} if timing.profile != "default" else {}),
                "store": self.store.describe(),
            },
        )

    def version(self) -> str:
        import hacore

        return f"hacore {hacore.__version__}"

    # -- faults and operations ---------------------------------------------------------------

    def request_switchover(self, leader: str, candidate: str) -> None:
        """``POST /switchover`` answers once the request is stored; the active acts on it."""
        response = httpx.post(
            self._api(leader) + "/switchover",
            json={"to": candidate},
            auth=(API_USER, API_PASSWORD),
            timeout=30.0,
        )
        if response.status_code != 200:
            raise RuntimeError(
                f"{self.system}: switchover {leader} -> {candidate} refused: "
                f"{response.status_code} {response.text.strip()}"
            )


# -- one node, as a process -----------------------------------------------------------------


class _Facade(AgentFacade):
    """The agent as the API server sees it. Only what the benchmark calls is served: the
    probes, ``/cluster`` and ``/switchover`` (the agent's own switchover request)."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent

    def snapshot(self) -> Any:
        return self.agent.snapshot()

    def cluster(self) -> dict[str, Any]:
        result: dict[str, Any] = self.agent.cluster()
        return result

    def switchover(self, to: str | None) -> dict[str, Any]:
        request = self.agent.request_switchover(to)
        return {"from": request.from_node, "to": request.to_node}

    def start_cluster(self, options: dict[str, Any]) -> dict[str, Any]:
        return self._not_here("cluster start")

    def join_ticket(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._not_here("cluster join")

    def remove_node(self, name: str) -> dict[str, Any]:
        return self._not_here("nodes remove")

    @staticmethod
    def _not_here(what: str) -> dict[str, Any]:
        raise UnavailableError(f"{what} is not served by the benchmark's node process")


def _bootstrap(agent: Any, seed: Path | None) -> None:
    pg = agent.replication
    pg.bootstrap(replication_password=REPLICATION_PASSWORD, allowed_hosts=[])
    if seed is None:
        _create_schema(pg)
    else:
        _swap_in(pg, seed)
    agent.record_bootstrap()


def _swap_in(pg: Any, seed: Path) -> None:
    """The bootstrapped node's files (its ``node/`` directory: port, access rules, state) with
    the seed's data directory: the seed came out of the same bootstrap (same roles and
    passwords), and its ``postgresql.conf`` includes ``../node/postgresql.conf`` relatively."""
    from hacore_plugins.postgresql import server

    server.stop(pg.layout, timeout=pg.config.stop_timeout)
    shutil.rmtree(pg.layout.pgdata)
    copy_tree(seed, pg.layout.pgdata)
    server.start(pg.tools, pg.layout, timeout=pg.config.start_timeout, what="the seeded primary")


def _create_schema(pg: Any) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(
        host=str(pg.layout.run_dir),
        port=pg.config.port,
        user="postgres",
        dbname="postgres",
        autocommit=True,
        options="-c synchronous_commit=local",
    ) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(CLIENT_USER), sql.Literal(CLIENT_PASSWORD)
            )
        )
        conn.execute(f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY)")
        conn.execute(f"GRANT SELECT, INSERT ON {TABLE} TO {CLIENT_USER}")
        conn.execute(f"GRANT CREATE ON SCHEMA public TO {CLIENT_USER}")  # pgbench -i
        conn.execute(f"GRANT pg_monitor TO {CLIENT_USER}")  # pg_stat_replication's positions


def run_node(config_path: Path, bootstrap: bool, seed: Path | None = None) -> None:
    from hacore.agent.credentials import ReplicationCredentials
    from hacore.agent.runtime import Agent
    from hacore.api.limits import raise_open_file_limit
    from hacore.api.server import ApiServer
    from hacore.config.logging_setup import QUIET_LIBRARIES
    from hacore.config.node import load_config
    from hacore.plugins.registry import load_plugins

    raise_open_file_limit()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # as the agent's own logging does: a line per store or Syncthing request is CPU the
    # measured agent would not spend
    for library in QUIET_LIBRARIES:
        logging.getLogger(library).setLevel(logging.WARNING)
    config = load_config(yaml.safe_load(config_path.read_text()))
    agent = Agent(
        config,
        load_plugins(),
        credentials=ReplicationCredentials("replicator", REPLICATION_PASSWORD),
    )
    if bootstrap:
        _bootstrap(agent, seed)
    _timeline.record(agent, config_path.with_suffix(".timeline.jsonl"))
    server = ApiServer(_Facade(agent), config.api, host=HOST, port=config.node.api_port).start()
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
    agent.start()
    try:
        while not stopping.wait(1.0):
            if agent.died is not None:
                raise SystemExit(f"the agent loop died: {agent.died!r}")
    finally:
        agent.stop(resign=False, timeout=30)
        server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description="one hacore node for the failover benchmark")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--bootstrap", action="store_true")
    parser.add_argument("--seed", type=Path, help="with --bootstrap: the data directory to copy")
    args = parser.parse_args()
    run_node(args.config, args.bootstrap, args.seed)


if __name__ == "__main__":
    main()
