"""A real HAProxy in front of a benchmark cluster, configured as an operator would.

For hacore the configuration is what ``hacore cluster haproxy-config`` prints for the running
cluster (the real command, through a CLI profile written for the benchmark's API user): one
TCP server per node, checked on its agent's ``/status``. Patroni gets the same text with its
own check, ``GET /primary`` on its REST API (200 on the leader only), so both systems run
behind the same ``inter``, ``fall``, ``rise`` and ``on-marked-down shutdown-sessions``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from _cluster import CLIENT_PASSWORD, CLIENT_USER, BenchCluster

from hacore.client.profile import PROFILE_ENV, Profile, save_profile
from hacore.cluster.haproxy import HaproxyOptions, HaproxyServer, render
from hacore.testing.local_cluster import HOST
from hacore.testing.procs import ServerProcess, free_port

HAPROXY = shutil.which("haproxy")
#: the command's own defaults, spelled out for the report
CHECKS = "inter 2 s, fall 2, rise 2, timeout check 2 s"


def unavailable_reason() -> str | None:
    return None if HAPROXY is not None else "no haproxy on PATH (apt-get install haproxy)"


def version() -> str:
    if HAPROXY is None:
        return "not installed"
    done = subprocess.run([HAPROXY, "-v"], capture_output=True, text=True, check=False)
    return (done.stdout.splitlines() or ["unknown"])[0]


def hacore_config(cluster: BenchCluster, workdir: Path, bind: str) -> str:
    """``hacore cluster haproxy-config --bind BIND`` against the running cluster."""
    from _hacore_cluster import API_PASSWORD, API_USER

    profile = workdir / "profile.json"
    save_profile(
        profile,
        Profile(
            cluster="bench",
            username=API_USER,
            password=API_PASSWORD,
            nodes=tuple((n.name, f"http://{HOST}:{n.api_port}") for n in cluster.nodes),
        ),
    )
    hacore = Path(sys.executable).with_name("hacore")
    done = subprocess.run(
        [str(hacore), "cluster", "haproxy-config", "--bind", bind],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, PROFILE_ENV: str(profile)},
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"hacore cluster haproxy-config failed: {done.stderr.strip()}")
    return done.stdout


def patroni_config(cluster: BenchCluster, bind: str) -> str:
    """The same file for Patroni: its REST API's ``/primary`` in place of ``/status``."""
    servers = [HaproxyServer(n.name, HOST, HOST, n.pg_port, n.api_port) for n in cluster.nodes]
    text = render(HaproxyOptions(cluster=cluster.system, bind=bind), servers)
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    header = "# hacore cluster haproxy-config's file with Patroni's check (failover benchmark)"
    return f"{header}\n{body.replace('/status', '/primary')}\n"


class Haproxy:
    """HAProxy in the foreground (``-db``), stopped by pid."""

    def __init__(self, workdir: Path, config: str) -> None:
        self.config_path = workdir / "haproxy.cfg"
        self.config_path.write_text(config)
        self.process = ServerProcess(
            "haproxy", [str(HAPROXY), "-db", "-f", str(self.config_path)], workdir / "haproxy.log"
        )

    def start(self) -> Haproxy:
        checked = subprocess.run(
            [str(HAPROXY), "-c", "-f", str(self.config_path)],
            capture_output=True,
            text=True,
            check=False,
        )
        if checked.returncode != 0:
            raise RuntimeError(f"haproxy -c refused the file: {checked.stdout}{checked.stderr}")
        self.process.start()
        return self

    def stop(self) -> None:
        self.process.stop()


def front(cluster: BenchCluster) -> tuple[Haproxy, str]:
    """HAProxy started in front of ``cluster``, and the writer's connection string through it."""
    from _patroni import PatroniCluster

    port = free_port()
    bind = f"{HOST}:{port}"
    workdir = cluster.workdir
    if isinstance(cluster, PatroniCluster):
        text = patroni_config(cluster, bind)
    else:
        text = hacore_config(cluster, workdir, bind)
    proxy = Haproxy(workdir, text).start()
    dsn = (
        f"host={HOST} port={port} user={CLIENT_USER} password={CLIENT_PASSWORD} "
        "dbname=postgres connect_timeout=2"
    )
    return proxy, dsn
