"""The fault tests' three network-namespace hosts, for benchmarks (``managed.py``, ``soak.py``).

Imports ``tests/fault/fault_cluster.py`` (with ``fault_store.py``, its etcd seen from outside)
and ``tests/tools`` (the checker's writer and poller, the namespaces) rather than copying
them: the benchmarks run the cluster the fault tests run. No test module is imported.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "fault"), str(ROOT / "tests" / "tools")]

import checker  # noqa: E402
import fault_cluster  # noqa: E402
import fault_store  # noqa: E402
import netns  # noqa: E402

__all__ = ["checker", "fault_cluster", "fault_store", "formed", "netns"]

#: tries at forming a cluster: at a short ttl on a loaded machine the founding node can fence
#: itself during a join; each failure is reported
FORM_ATTEMPTS = 3


def formed(
    net: netns.Network,
    profile: str,
    log: Callable[[str], None],
    prepare: Callable[[fault_cluster.FaultCluster], None] | None = None,
) -> tuple[fault_cluster.FaultCluster, list[str]]:
    """A formed cluster at ``profile`` on ``net``, and why the failed attempts failed;
    ``prepare`` changes each new cluster before it forms (another store)."""
    failures: list[str] = []
    for _ in range(FORM_ATTEMPTS):
        net.heal()
        cluster = fault_cluster.FaultCluster(net, timing={"profile": profile})
        if prepare is not None:
            prepare(cluster)
        try:
            return cluster.form(), failures
        except AssertionError as exc:
            failures.append(str(exc).splitlines()[-1][:200] or str(exc)[:200])
            log(f"{profile}: forming the cluster failed: {failures[-1]}")
            cluster.cleanup()
    raise RuntimeError(f"{profile}: no cluster formed in {FORM_ATTEMPTS} attempts: {failures}")
