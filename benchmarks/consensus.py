"""Consensus backends side by side: how long each operation takes, how fast a dead leader is seen.

    python benchmarks/consensus.py [--backends etcd,zookeeper,consul] [--runs N] [--ops N]
                                   [--ttls 2,5,10] [--json]

For every backend whose test harness can run here, a 3-member store is started in a temporary
directory on free loopback ports, then:

* latency: ``campaign`` (the leader key free, the session already open), ``renew``, ``resign``,
  ``leader()``, ``get`` and an unconditional ``put``, each ``--ops`` times from one client;
  p50 and p99 in milliseconds;
* leader-loss detection: a holder process (``python -m hacore.testing.holder``) campaigns and
  renews every ttl/3; it is killed with SIGKILL, and the time from the kill until a watcher in
  this process sees the leader key deleted is measured, ``--runs`` times per TTL.

A benchmark, not a test: it prints numbers and asserts nothing about them.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import re
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

import hacore
from hacore.backends.consensus import LEADER_KEY, ConsensusBackend
from hacore.backends.records import EventKind
from hacore.plugins.registry import load_plugins
from hacore.testing.harness import ConsensusHarness

#: Python package of each backend's client, for the versions line.
CLIENT_PACKAGES = {"etcd": "httpx", "zookeeper": "kazoo", "consul": "py-consul"}
LATENCY_TTL = 20.0
RETRY_TIMEOUT = 5.0


# -- machine and versions ------------------------------------------------------------------


def _first_line(argv: list[str], pattern: str) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(pattern, out)
    return match.group(1) if match else None


def server_version(name: str) -> str:
    found = None
    if name == "etcd":
        found = _first_line(["etcd", "--version"], r"etcd Version: (\S+)")
    elif name == "consul":
        found = _first_line(["consul", "version"], r"Consul (v\S+)")
    elif name == "zookeeper":
        found = _first_line(["dpkg-query", "-W", "-f", "${Version}", "zookeeper"], r"(\S+)")
    return found or "unknown"


def package_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    memory = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = round(int(line.split()[1]) / 1024 / 1024, 1)
    return {
        "cores": os.cpu_count(),
        "memory_gib": memory,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "hacore": hacore.__version__,
    }


# -- statistics ----------------------------------------------------------------------------


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile: a value that was really measured."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def latency_summary(samples: list[float]) -> dict[str, Any]:
    return {
        "n": len(samples),
        "p50_ms": round(percentile(samples, 50) * 1000, 2),
        "p99_ms": round(percentile(samples, 99) * 1000, 2),
    }


def spread(samples: list[float]) -> dict[str, Any]:
    if not samples:
        return {"n": 0, "min_s": None, "median_s": None, "max_s": None}
    return {
        "n": len(samples),
        "min_s": round(min(samples), 2),
        "median_s": round(statistics.median(samples), 2),
        "max_s": round(max(samples), 2),
    }


# -- measurements --------------------------------------------------------------------------


def timed(samples: list[float], call: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = call()
    samples.append(time.perf_counter() - started)
    return result


def measure_latency(harness: ConsensusHarness, ops: int) -> dict[str, dict[str, Any]]:
    node = harness.make_backend(
        "bench-latency",
        ttl=LATENCY_TTL,
        retry_timeout=RETRY_TIMEOUT,
        namespace=f"bench{uuid.uuid4().hex[:8]}",
    )
    samples: dict[str, list[float]] = {
        op: [] for op in ("campaign", "renew", "resign", "leader()", "get", "put")
    }
    try:
        # Warm-up: opens the session and the connections, which are not what is measured.
        lease = node.campaign()
        assert lease is not None, "nobody else campaigns in this namespace"
        node.resign(lease)
        node.put("bench/key", b"x" * 128)
        for _ in range(ops):
            lease = timed(samples["campaign"], node.campaign)
            if lease is None:
                raise RuntimeError("campaign lost in a namespace with a single node")
            timed(samples["resign"], lambda lease=lease: node.resign(lease))
        lease = node.campaign()
        assert lease is not None
        for _ in range(ops):
            if not timed(samples["renew"], lambda: node.renew(lease)):
                raise RuntimeError("renew lost the leadership nobody else wanted")
        for _ in range(ops):
            timed(samples["leader()"], node.leader)
        for _ in range(ops):
            timed(samples["get"], lambda: node.get("bench/key"))
        for _ in range(ops):
            timed(samples["put"], lambda: node.put("bench/key", b"y" * 128))
        node.resign(lease)
    finally:
        node.close()
    return {op: latency_summary(values) for op, values in samples.items()}


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise TimeoutError(f"the holder printed nothing within {timeout:g}s")
    return proc.stdout.readline()


@contextlib.contextmanager
def holder_process(
    name: str, harness: ConsensusHarness, namespace: str, ttl: float, log: Path
) -> Iterator[subprocess.Popen[str]]:
    argv = [
        sys.executable,
        "-m",
        "hacore.testing.holder",
        "--backend",
        name,
        "--settings",
        json.dumps(harness.settings()),
        "--node",
        "holder",
        "--ttl",
        f"{ttl:g}",
        "--retry-timeout",
        f"{min(1.0, ttl / 4):g}",
        "--namespace",
        namespace,
    ]
    with open(log, "a") as errors:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def detect_once(
    name: str, harness: ConsensusHarness, watcher_node: ConsensusBackend, ttl: float, log: Path
) -> float:
    with holder_process(name, harness, watcher_node.namespace, ttl, log) as proc:
        line = _read_line(proc, 60)
        if not line:
            raise RuntimeError(f"the holder exited ({proc.wait()}); see {log}")
        json.loads(line)
        with watcher_node.watch(LEADER_KEY) as watcher:
            if watcher_node.leader() is None:
                raise RuntimeError("the holder reported leadership the store does not show")
            proc.send_signal(signal.SIGKILL)
            killed = time.perf_counter()
            deadline = killed + 3 * ttl + 30
            while (left := deadline - time.perf_counter()) > 0:
                event = watcher.get(timeout=left)
                if event is not None and (event.kind, event.key) == (EventKind.DELETE, LEADER_KEY):
                    return time.perf_counter() - killed
        raise TimeoutError(f"the leader key was still there {3 * ttl + 30:g}s after the kill")


def measure_loss(
    name: str, harness: ConsensusHarness, ttls: list[float], runs: int, log: Path
) -> dict[str, dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    for ttl in ttls:
        samples: list[float] = []
        errors: list[str] = []
        for _ in range(runs):
            watcher_node = harness.make_backend(
                "bench-watcher",
                ttl=LATENCY_TTL,
                retry_timeout=RETRY_TIMEOUT,
                namespace=f"loss{uuid.uuid4().hex[:8]}",
            )
            try:
                samples.append(detect_once(name, harness, watcher_node, ttl, log))
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            finally:
                with contextlib.suppress(Exception):
                    watcher_node.close()
        results[f"{ttl:g}"] = {**spread(samples), "errors": errors}
    return results


def run_backend(name: str, ops: int, runs: int, ttls: list[float]) -> dict[str, Any]:
    registry = load_plugins().registry
    package = CLIENT_PACKAGES.get(name)
    result: dict[str, Any] = {
        "backend": name,
        "server": server_version(name),
        "client": f"{package} {package_version(package)}" if package else "unknown",
    }
    try:
        harness_cls = registry.get("test_harness", name)
    except Exception as exc:
        return {**result, "skipped": str(exc)}
    reason = harness_cls.unavailable_reason()
    if reason:
        return {**result, "skipped": reason}
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as workdir:
        harness = harness_cls(Path(workdir))
        started = time.perf_counter()
        try:
            harness.start()
            result["start_s"] = round(time.perf_counter() - started, 2)
            result["latency"] = measure_latency(harness, ops)
            if harness.out_of_process:
                result["loss_detection"] = measure_loss(
                    name, harness, ttls, runs, Path(workdir) / "holders.log"
                )
            else:
                result["loss_skipped"] = "the store lives in this process: no holder to kill"
        finally:
            harness.stop()
    return result


# -- output --------------------------------------------------------------------------------


def print_tables(report: dict[str, Any], console: Console) -> None:
    info = report["machine"]
    console.print(
        f"[bold]machine[/]: {info['cores']} cores, {info['memory_gib']} GiB, {info['platform']}, "
        f"Python {info['python']}, hacore {info['hacore']}"
    )
    console.print(
        f"latency: {report['ops']} ops per operation, one client; loss detection: "
        f"{report['runs']} runs per TTL, SIGKILL of the holder -> watcher sees the key deleted"
    )
    for result in report["backends"]:
        name = result["backend"]
        versions = f"server {result['server']}, client {result['client']}"
        if "skipped" in result:
            console.print(f"\n[bold]{name}[/] ({versions}): skipped: {result['skipped']}")
            continue
        if "error" in result:
            console.print(f"\n[bold]{name}[/] ({versions}): failed: {result['error']}")
            continue
        console.print(f"\n[bold]{name}[/] ({versions}): store started in {result['start_s']} s")
        table = Table(title=f"{name}: latency, one client")
        table.add_column("operation")
        table.add_column("n", justify="right")
        table.add_column("p50 ms", justify="right")
        table.add_column("p99 ms", justify="right")
        for op, row in result["latency"].items():
            table.add_row(op, str(row["n"]), f"{row['p50_ms']:.2f}", f"{row['p99_ms']:.2f}")
        console.print(table)
        if "loss_detection" not in result:
            console.print(f"{name}: leader-loss detection skipped: {result['loss_skipped']}")
            continue
        loss = Table(title=f"{name}: leader loss seen by a watcher, from the holder's SIGKILL")
        loss.add_column("ttl s", justify="right")
        loss.add_column("runs", justify="right")
        loss.add_column("min s", justify="right")
        loss.add_column("median s", justify="right")
        loss.add_column("max s", justify="right")
        loss.add_column("errors")
        for ttl, row in result["loss_detection"].items():
            cells = [row[k] for k in ("min_s", "median_s", "max_s")]
            loss.add_row(
                ttl,
                str(row["n"]),
                *("-" if cell is None else f"{cell:.2f}" for cell in cells),
                "; ".join(row["errors"]) or "",
            )
        console.print(loss)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="etcd,zookeeper,consul")
    parser.add_argument("--runs", type=int, default=3, help="kills per TTL (default 3)")
    parser.add_argument("--ops", type=int, default=200, help="calls per operation (default 200)")
    parser.add_argument("--ttls", default="2,5,10", help="TTLs for leader-loss detection")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.backends.split(",") if n.strip()]
    ttls = [float(t) for t in args.ttls.split(",") if t.strip()]
    if args.runs < 1 or args.ops < 1 or not ttls:
        parser.error("--runs and --ops must be at least 1, --ttls must name a TTL")

    console = Console(stderr=args.json)
    if not console.is_terminal:
        console.width = 120
    report: dict[str, Any] = {
        "machine": machine(),
        "ops": args.ops,
        "runs": args.runs,
        "backends": [],
    }
    started = time.perf_counter()
    for name in names:
        console.print(f"[dim]{name}: running...[/]")
        try:
            report["backends"].append(run_backend(name, args.ops, args.runs, ttls))
        except Exception as exc:
            report["backends"].append(
                {
                    "backend": name,
                    "server": server_version(name),
                    "client": "unknown",
                    "error": f"{type(exc).__name__}: {exc}",
                }
            )
    report["wall_s"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_tables(report, console)
        console.print(f"[dim]wall time {report['wall_s']} s[/]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
