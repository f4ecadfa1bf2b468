"""Patroni as the benchmark's peer: N nodes (3 unless asked) on a 3-member etcd, as postgres.

Patroni comes from ``benchmarks/.patroni-venv`` (``benchmarks/setup_patroni.sh``). Its
PostgreSQL gets the same parameters, initdb options and client authentication as hacore's.
Patroni starts the postmaster in a session of its own, so a host death has to stop two process
groups: Patroni's (with the ``runuser`` that started it) and the postmaster's.

Seeded (a template's data directory), the first node starts alone on a copy: Patroni takes a
non-empty data directory with no initialize key in the store over (the way a standalone server
is converted) and writes its cached dynamic configuration to the store, so that cache
(``patroni.dynamic.json``) is rewritten with this cluster's settings first; the other nodes
start once it is the primary, and clone it.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml
from _cluster import (
    CLIENT_PASSWORD,
    CLIENT_USER,
    HOST,
    PG_BIN,
    PG_PARAMETERS,
    TABLE,
    BenchCluster,
    Node,
    Timings,
    chown_postgres,
    copy_tree,
)
from psycopg import sql

from hacore.testing.procs import ServerProcess, free_port

VENV = Path(__file__).resolve().parent / ".patroni-venv"
PATRONI = VENV / "bin" / "patroni"
SUPERUSER_PASSWORD = "patroni-superuser"
REPLICATION_PASSWORD = "patroni-replication"
#: Patroni's own defaults (patroni/config.py), spelled out so the report shows them.
DEFAULTS = {"ttl": 30, "loop_wait": 10, "retry_timeout": 10}
#: The smallest values Patroni's validator accepts: it raises anything lower to these.
TIGHTEST = {"ttl": 20, "loop_wait": 1, "retry_timeout": 3}


def unavailable_reason() -> str | None:
    if not PATRONI.exists():
        return f"no Patroni at {PATRONI}: run benchmarks/setup_patroni.sh"
    return None


class PatroniCluster(BenchCluster):
    seedable = True

    def __init__(
        self,
        system: str,
        workdir: Path,
        etcd_endpoints: Sequence[str],
        *,
        dcs: dict[str, Any],
        synchronous: bool = False,
        nodes: int = 3,
    ) -> None:
        self.system = system
        self.workdir = workdir
        self.etcd_hosts = [e.removeprefix("http://") for e in etcd_endpoints]
        self.dcs = {**dcs, "synchronous_mode": synchronous}
        self.synchronous = synchronous
        self.scope = f"bench-{uuid.uuid4().hex[:8]}"
        self.nodes = [
            Node(name, pg, api, f"http://{HOST}:{api}/primary")
            for name, pg, api in ((f"p{i}", free_port(), free_port()) for i in range(1, nodes + 1))
        ]
        self.processes: dict[str, ServerProcess] = {}
        self.dead: set[str] = set()

    # -- files -------------------------------------------------------------------------------

    def _home(self, name: str) -> Path:
        return self.workdir / name

    def pgdata(self, name: str) -> Path:
        return self._home(name) / "data"

    def _dynamic(self) -> dict[str, Any]:
        """The cluster-wide settings: ``bootstrap.dcs`` for a new database, the cache a seeded
        one is taken over with."""
        return {
            **self.dcs,
            "postgresql": {
                "use_pg_rewind": True,
                "use_slots": True,
                "parameters": dict(PG_PARAMETERS),
            },
        }

    def _config(self, node: Node) -> dict[str, Any]:
        home = self._home(node.name)
        hba = [
            "local all all trust",
            f"host replication replicator {HOST}/32 scram-sha-256",
            f"host all all {HOST}/32 scram-sha-256",
        ]
        return {
            "scope": self.scope,
            "name": node.name,
            "log": {"level": "INFO"},
            "restapi": {
                "listen": f"{HOST}:{node.api_port}",
                "connect_address": f"{HOST}:{node.api_port}",
            },
            "etcd3": {"hosts": self.etcd_hosts},
            "bootstrap": {
                "dcs": self._dynamic(),
                "initdb": [
                    "data-checksums",
                    {"encoding": "UTF8"},
                    {"locale": "C.UTF-8"},
                    {"auth-host": "scram-sha-256"},
                ],
            },
            "postgresql": {
                "listen": f"{HOST}:{node.pg_port}",
                "connect_address": f"{HOST}:{node.pg_port}",
                "data_dir": str(self.pgdata(node.name)),
                "bin_dir": str(PG_BIN),
                "pgpass": str(home / "pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres", "password": SUPERUSER_PASSWORD},
                    "replication": {"username": "replicator", "password": REPLICATION_PASSWORD},
                },
                "parameters": {"unix_socket_directories": str(home)},
                "pg_hba": hba,
                # as hacore clones: no waiting for a spread checkpoint (Patroni passes -X stream
                # itself and refuses a wal-method option, with an error in its log)
                "basebackup": [{"checkpoint": "fast"}],
            },
            "watchdog": {"mode": "off"},
            "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False},
        }

    # -- lifecycle ---------------------------------------------------------------------------

    def _start_node(self, node: Node) -> None:
        home = self._home(node.name)
        home.mkdir(parents=True, exist_ok=True)
        config = home / "patroni.yml"
        config.write_text(yaml.safe_dump(self._config(node), sort_keys=False))
        chown_postgres(home)
        argv = ["runuser", "-u", "postgres", "--", str(PATRONI), str(config)]
        self.processes[node.name] = ServerProcess(
            node.name, argv, self.workdir / f"{node.name}.log", cwd=home
        ).start()

    def start(self) -> None:
        """All nodes at once: one wins the race to initialize, the others clone from it.
        Seeded, the first node alone, then the others once it is the primary."""
        if self.seed is None:
            for node in self.nodes:
                self._start_node(node)
            self._prepare_schema(self._wait_primary())
            return
        first = self.nodes[0]
        self._home(first.name).mkdir(parents=True, exist_ok=True)
        copy_tree(self.seed, self.pgdata(first.name))
        cache = self.pgdata(first.name) / "patroni.dynamic.json"
        cache.write_text(json.dumps(self._dynamic()))
        self._start_node(first)
        self._wait_primary()
        for node in self.nodes[1:]:
            self._start_node(node)

    def _wait_primary(self) -> Node:
        deadline = time.monotonic() + 120
        while (leader := self._primary()) is None:
            dead = [n for n, p in self.processes.items() if not p.alive()]
            if dead or time.monotonic() > deadline:
                first = self.processes[dead[0] if dead else self.nodes[0].name]
                raise RuntimeError(
                    f"{self.system}: no primary ({first.name}'s log):\n{first.log_tail()}"
                )
            time.sleep(0.2)
        return leader

    def _primary(self) -> Node | None:
        return next((n for n in self.nodes if self.status_code(n.name, timeout=0.5) == 200), None)

    def _prepare_schema(self, node: Node) -> None:
        with psycopg.connect(
            host=HOST,
            port=node.pg_port,
            user="postgres",
            password=SUPERUSER_PASSWORD,
            dbname="postgres",
            autocommit=True,
            connect_timeout=10,
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

    # -- state -------------------------------------------------------------------------------

    def _cluster_json(self) -> dict[str, Any]:
        last: Exception | None = None
        for node in self.nodes:
            if node.name in self.dead:
                continue
            try:
                response = httpx.get(f"http://{HOST}:{node.api_port}/cluster", timeout=2.0)
                response.raise_for_status()
                body: dict[str, Any] = response.json()
                return body
            except httpx.HTTPError as exc:
                last = exc
        raise RuntimeError(f"{self.system}: no Patroni REST API answers /cluster: {last}")

    def converged(self) -> str | None:
        members = [m for m in self._cluster_json().get("members", []) if m["name"] not in self.dead]
        leaders = [m for m in members if m["role"] == "leader" and m["state"] == "running"]
        if len(leaders) != 1:
            return None
        others = [m for m in members if m is not leaders[0]]
        if len(others) != len(self.nodes) - 1 - len(self.dead):
            return None
        if any(m["state"] != "streaming" for m in others):
            return None
        if self.synchronous and not any(m["role"] == "sync_standby" for m in others):
            return None
        return str(leaders[0]["name"])

    def sync_standby(self) -> str | None:
        for member in self._cluster_json().get("members", []):
            if member["role"] == "sync_standby" and member["name"] not in self.dead:
                return str(member["name"])
        return None

    def timings(self) -> Timings:
        live = next(n for n in self.nodes if n.name not in self.dead)
        config = httpx.get(f"http://{HOST}:{live.api_port}/config", timeout=5.0).json()
        return Timings(
            ttl=float(config["ttl"]),
            loop_wait=float(config["loop_wait"]),
            retry_timeout=float(config["retry_timeout"]),
            synchronous=bool(config.get("synchronous_mode", False)),
        )

    def version(self) -> str:
        out = subprocess.run(
            [str(PATRONI), "--version"], capture_output=True, text=True, check=False
        ).stdout
        return out.strip() or "patroni (unknown version)"

    # -- faults and operations ---------------------------------------------------------------

    def request_switchover(self, leader: str, candidate: str) -> None:
        """Patroni's endpoint answers once the switchover is done (or failed)."""
        node = self.node(leader)
        response = httpx.post(
            f"http://{HOST}:{node.api_port}/switchover",
            json={"leader": leader, "candidate": candidate},
            timeout=120.0,
        )
        if response.status_code != 200:
            raise RuntimeError(
                f"{self.system}: switchover {leader} -> {candidate} refused: "
                f"{response.status_code} {response.text.strip()}"
            )
