"""A real 3-server Consul cluster on loopback ports, for the contract suite and benchmarks.

Needs a ``consul`` binary on PATH; nothing on this project's machines ships one, so the suite
skips with :meth:`ConsulHarness.unavailable_reason` there. The servers are configured with
``session_ttl_min = "1s"`` so the suite's short TTLs are accepted, and the backend settings say
so (``min_session_ttl: 1``).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

from hacore.testing.harness import ConsensusHarness
from hacore.testing.procs import ServerProcess, free_port, wait_for

SERVERS = 3
START_TIMEOUT = 60.0


def consul_version(binary: str) -> tuple[int, ...]:
    out = subprocess.run([binary, "version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"v(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(part) for part in match.groups()) if match else (0, 0, 0)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as response:
        return json.load(response)


class ConsulHarness(ConsensusHarness):
    backend_name = "consul"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.servers: list[ServerProcess] = []
        self.http_ports: list[int] = []
        self.serf_ports: list[int] = []

    @classmethod
    def unavailable_reason(cls) -> str | None:
        if shutil.which("consul") is None:
            return "consul binary not on PATH; the Consul contract tests need a real Consul server"
        return None

    def _config(self, index: int, binary: str) -> dict[str, Any]:
        ports: dict[str, int] = {
            "http": self.http_ports[index],
            "serf_lan": self.serf_ports[index],
            "serf_wan": free_port(),
            "server": free_port(),
            "https": -1,
            "dns": -1,
            "grpc": -1,
        }
        if consul_version(binary) >= (1, 14, 0):
            ports["grpc_tls"] = -1
        return {
            "node_name": f"hacore-consul-{index}",
            "datacenter": "dc1",
            "data_dir": str(self.workdir / f"consul-{index}" / "data"),
            "server": True,
            "bootstrap_expect": SERVERS,
            "bind_addr": "127.0.0.1",
            "advertise_addr": "127.0.0.1",
            "client_addr": "127.0.0.1",
            "ports": ports,
            "retry_join": [f"127.0.0.1:{port}" for port in self.serf_ports],
            "retry_interval": "1s",
            "session_ttl_min": "1s",
            "disable_update_check": True,
            "disable_host_node_id": True,
            "leave_on_terminate": False,
            "performance": {"raft_multiplier": 1},
            "log_level": "INFO",
        }

    def start(self) -> None:
        binary = shutil.which("consul")
        if binary is None:
            raise RuntimeError(self.unavailable_reason())
        self.http_ports = [free_port() for _ in range(SERVERS)]
        self.serf_ports = [free_port() for _ in range(SERVERS)]
        for index in range(SERVERS):
            home = self.workdir / f"consul-{index}"
            (home / "data").mkdir(parents=True, exist_ok=True)
            config = home / "config.json"
            config.write_text(json.dumps(self._config(index, binary), indent=2))
            server = ServerProcess(
                f"consul-{index}",
                [binary, "agent", f"-config-file={config}"],
                home / "consul.log",
                cwd=home,
            )
            self.servers.append(server.start())
        for index in range(SERVERS):
            self._wait_serving(index, peers=SERVERS)

    def _wait_serving(self, index: int, peers: int) -> None:
        base = f"http://127.0.0.1:{self.http_ports[index]}/v1"

        def ready() -> bool:
            if not self.servers[index].alive():
                raise RuntimeError(f"consul-{index} exited:\n{self.servers[index].log_tail()}")
            return bool(_get_json(f"{base}/status/leader")) and (
                len(_get_json(f"{base}/status/peers")) >= peers
            )

        try:
            wait_for(ready, START_TIMEOUT, interval=0.2, what=f"consul-{index} to see a leader")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.servers[index].log_tail()}") from exc

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self.servers = []

    def settings(self) -> dict[str, Any]:
        return {
            "endpoints": [f"http://127.0.0.1:{port}" for port in self.http_ports],
            "min_session_ttl": 1,
        }

    def unreachable_settings(self) -> dict[str, Any]:
        return {"endpoints": [f"http://127.0.0.1:{free_port()}"], "min_session_ttl": 1}

    def kill_member(self, index: int = 0) -> None:
        self.servers[index].kill()

    def restart_member(self, index: int = 0) -> None:
        self.servers[index].start()
        self._wait_serving(index, peers=SERVERS)

    def freeze(self) -> None:
        for server in self.servers:
            server.freeze()

    def thaw(self) -> None:
        for server in self.servers:
            server.thaw()
