"""The fault cluster's managed etcd, seen from the root namespace: which member leads the
store, and moving its leadership, for the fault tests (``test_store_leader.py``) and the
benchmarks that run the same cluster (``benchmarks/managed.py``)."""

from __future__ import annotations

import os
import shutil
import subprocess

import httpx
from fault_cluster import CLIENT_PORT, FaultCluster, FaultNode

from hacore.testing.procs import wait_for

ETCDCTL = shutil.which("etcdctl") or "etcdctl"


def etcd_call(node: FaultNode, path: str, body: dict[str, object]) -> dict[str, object]:
    url = f"http://{node.host.address}:{CLIENT_PORT}{path}"
    data = httpx.post(url, json=body, timeout=3.0, trust_env=False).json()
    assert isinstance(data, dict)
    assert "error" not in data, f"etcd on {node.name} refused {path}: {data}"
    return data


def member_ids(cluster: FaultCluster) -> dict[str, int]:
    ids = {}
    for name, node in cluster.nodes.items():
        header = etcd_call(node, "/v3/maintenance/status", {})["header"]
        assert isinstance(header, dict)
        ids[name] = int(header["member_id"])
    return ids


def store_leader(cluster: FaultCluster) -> str | None:
    """The node whose member leads, when every member agrees on one."""
    ids = member_ids(cluster)
    names = {member: name for name, member in ids.items()}
    seen = {
        int(str(etcd_call(node, "/v3/maintenance/status", {}).get("leader", 0)))
        for node in cluster.nodes.values()
    }
    return names.get(seen.pop()) if len(seen) == 1 else None


def move_store_leadership(cluster: FaultCluster, target: FaultNode) -> None:
    def moved() -> bool:
        leader = store_leader(cluster)
        if leader == target.name:
            return True
        if leader is not None:
            # etcd 3.4's JSON gateway has no transferleadership: etcdctl speaks gRPC
            endpoint = f"http://{cluster.nodes[leader].host.address}:{CLIENT_PORT}"
            target_id = f"{member_ids(cluster)[target.name]:x}"
            subprocess.run(
                [ETCDCTL, f"--endpoints={endpoint}", "move-leader", target_id],
                env={**os.environ, "ETCDCTL_API": "3"},
                capture_output=True,
                timeout=10,
                check=False,
            )
        return False

    wait_for(moved, 30.0, interval=0.5, what=f"etcd's leadership on {target.name}")
