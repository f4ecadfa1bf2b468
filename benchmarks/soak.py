"""Soak: a 3-node cluster under a writer and CPU and I/O stress on every node; false alarms counted.

    sudo .venv/bin/python benchmarks/soak.py [--minutes 10] [--profiles default,fast]
                                             [--cpu 1] [--io 1] [--hdd 1] [--json]
                                             [--store etcd|zookeeper]

Per timing profile (``timing.profile``) a fresh cluster of three network-namespace hosts, as
in ``tests/fault`` (its ``FaultCluster``: managed etcd, or with ``--store zookeeper`` a managed
ZooKeeper server per host at the profile's tick; synchronous mode on, the real CLI), runs
for ``--minutes`` while the fault tests' writer inserts a row every 20 ms through every node's
Unix socket and ``stress-ng`` runs inside every host: ``--cpu`` CPU workers, ``--io`` workers
calling sync() (every fsync of etcd's WAL and PostgreSQL's commits waits behind them) and
``--hdd`` workers writing files in the node's directory. Nothing breaks on purpose: every change
of the active is a false failover.

Counted over the soak: **false failovers** (new entries of ``hacore cluster history -o json``
whose node is another than the active before), **promotions**, **fencings** and **store
errors** (each agent's ``hacore_promotions_total``, ``hacore_fencings_total`` and
``hacore_store_errors_total`` on ``/metrics``, end minus start), the changes of the node that
acknowledged the writer's rows (a promotion that fenced itself before writing its history entry
leaves none in the history),
**writer errors** (failed INSERTs: each one a reconnect), acknowledged writes and the longest
interval between two of them. A benchmark: it asserts nothing.

``--priority raised`` gives every node's HA processes (agent, fence keeper, etcd member,
PostgreSQL: whatever runs from the node's directory) ``nice -10`` and the best-effort I/O class
at level 0 once the cluster is formed, what ``hacore agent unit --priority raised`` asks systemd
for, while ``stress-ng`` runs at the ordinary priority. ``--keep-logs DIR`` keeps every node's
agent, keeper, etcd and PostgreSQL log of each profile under ``DIR/<profile>``.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from _fault_hosts import checker, fault_cluster, formed, netns
from _report import bench_console, machine
from rich.console import Console
from rich.table import Table

import hacore
from hacore.client.profile import load_profile
from hacore.config.timing import TIMING_PROFILES

#: the counters read from every agent's /metrics, at the start and the end
COUNTERS = (
    "hacore_fencings_total",
    "hacore_store_errors_total",
    "hacore_failovers_total",
    "hacore_promotions_total",
)
PROGRESS_EVERY = 60.0
#: a managed store member's ports on each host, per backend other than the fault cluster's etcd
STORE_PORTS = {"zookeeper": {"client_port": 2181, "peer_port": 2888, "election_port": 3888}}


def formed_on(
    net: netns.Network, profile: str, store: str, log: Callable[[str], None]
) -> tuple[fault_cluster.FaultCluster, list[str]]:
    """:func:`_fault_hosts.formed`, each host's managed member of ``store`` instead of etcd."""
    if store == "etcd":
        return formed(net, profile, log)

    def use_store(cluster: fault_cluster.FaultCluster) -> None:
        for node in cluster.nodes.values():
            node.backend, node.store = store, dict(STORE_PORTS[store])

    return formed(net, profile, log, use_store)


def stress_argv(args: argparse.Namespace, workdir: Path, seconds: float) -> list[str]:
    argv = ["stress-ng", "--timeout", f"{int(seconds) + 30}s", "--quiet"]
    argv += ["--temp-path", str(workdir)]
    if args.cpu:
        argv += ["--cpu", str(args.cpu)]
    if args.io:
        argv += ["--io", str(args.io)]
    if args.hdd:
        argv += ["--hdd", str(args.hdd), "--hdd-bytes", args.hdd_bytes]
    return argv


@contextlib.contextmanager
def stressed(cluster: fault_cluster.FaultCluster, args: argparse.Namespace, seconds: float) -> Any:
    """One ``stress-ng`` inside every host for the block; stopped by pid (its process group)."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for node in cluster.nodes.values():
            workdir = node.data_dir / "stress"
            workdir.mkdir(parents=True, exist_ok=True)
            procs.append(
                cluster.net.popen(
                    node.host,
                    stress_argv(args, workdir, seconds),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        yield procs
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)


#: ``--priority raised``: what ``hacore agent unit --priority raised`` writes (Nice=, IOScheduling*)
RAISED_NICE = -10


def node_tasks(cluster: fault_cluster.FaultCluster) -> list[int]:
    """Every thread of every process started from a node's directory or its node.yaml."""
    marks = [str(n.data_dir) for n in cluster.nodes.values()]
    marks += [str(n.config_path) for n in cluster.nodes.values()]
    tasks: list[int] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if any(mark in argv for mark in marks):
                tasks += [int(t.name) for t in (proc / "task").iterdir()]
        except OSError:
            continue
    return tasks


def raise_priority(cluster: fault_cluster.FaultCluster, log: Callable[[str], None]) -> None:
    """Nice and I/O priority of every HA thread running now; what they start inherits it."""
    tasks = node_tasks(cluster)
    for tid in tasks:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, tid, RAISED_NICE)
    subprocess.run(
        ["ionice", "-c", "2", "-n", "0", "-p", *map(str, tasks)],
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    log(f"raised the priority of {len(tasks)} threads (nice {RAISED_NICE}, best-effort I/O 0)")


def counters(cluster: fault_cluster.FaultCluster) -> dict[str, dict[str, float | None]]:
    """Every node's counters (None: the node did not answer)."""
    profile = load_profile(cluster.profile)
    auth = None if profile is None else profile.auth
    found: dict[str, dict[str, float | None]] = {}
    for name, node in cluster.nodes.items():
        values: dict[str, float | None] = dict.fromkeys(COUNTERS)
        try:
            text = httpx.get(f"http://{node.address}/metrics", auth=auth, timeout=5).text
        except httpx.HTTPError:
            found[name] = values
            continue
        for line in text.splitlines():
            parts = line.split()
            # ``hacore_fencings_total{node="n1"} 0.0``: the one series of each, per node
            if len(parts) == 2 and parts[0].split("{", 1)[0] in COUNTERS:
                values[parts[0].split("{", 1)[0]] = float(parts[1])
        found[name] = values
    return found


def history(cluster: fault_cluster.FaultCluster) -> list[dict[str, Any]]:
    out = cluster.cli("cluster", "history", "-o", "json").output
    entries = json.loads(out).get("history", [])
    assert isinstance(entries, list)
    return entries


def delta(before: dict[str, Any], after: dict[str, Any], key: str) -> int | None:
    total = 0
    for name in before:
        a, b = before[name].get(key), after.get(name, {}).get(key)
        if a is None or b is None:
            return None
        total += int(b - a)
    return total


def soak(profile: str, args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    seconds = args.minutes * 60
    netns.cleanup_stale()
    with netns.Network(3) as net:
        cluster, failures = formed_on(net, profile, args.store, log)
        try:
            active, _ = cluster.wait_healthy()
            if args.priority == "raised":
                raise_priority(cluster, log)
            node = cluster.nodes[active]
            checker.prepare(node.conninfo)
            before_history = history(cluster)
            before = counters(cluster)
            hosts = {str(n.socket_dir): name for name, n in cluster.nodes.items()}
            writer = checker.Writer(cluster.writer_conninfo(), hosts, run=f"soak-{profile}")
            log(f"{profile}: formed, {active} active; soaking {args.minutes:g} min under stress")
            started = time.monotonic()
            load_start = os.getloadavg()
            with stressed(cluster, args, seconds):
                writer.start()
                try:
                    while (left := started + seconds - time.monotonic()) > 0:
                        time.sleep(min(PROGRESS_EVERY, left))
                        log(
                            f"{profile}: {time.monotonic() - started:.0f} s, "
                            f"{len(writer.acks())} acked, {len(writer.errors)} writer errors, "
                            f"load {os.getloadavg()[0]:.1f}"
                        )
                finally:
                    writer.stop()
            load_end = os.getloadavg()
            after = counters(cluster)
            entries = history(cluster)[len(before_history) :]
        finally:
            keep = Path(args.keep_logs) / profile if args.keep_logs else None
            cluster.cleanup(keep_logs=keep)
    acks = writer.acks()
    gaps = [b.at - a.at for a, b in itertools.pairwise(acks)]
    changes = [e for e in entries if e.get("node") != e.get("previous")]
    # a promotion that fenced before it could write its history entry leaves none: the
    # writer's view (which node acknowledged) is counted beside the history's
    seen = [a.node for a in acks]
    writer_changes = sum(1 for a, b in itertools.pairwise(seen) if a != b)
    return {
        "profile": profile,
        "store": args.store,
        "seconds": seconds,
        "active_before": active,
        "false_failovers": len(changes),
        "formation_failures": failures,
        "history": entries,
        "fencings": delta(before, after, "hacore_fencings_total"),
        "store_errors": delta(before, after, "hacore_store_errors_total"),
        "failovers_counted": delta(before, after, "hacore_failovers_total"),
        "promotions": delta(before, after, "hacore_promotions_total"),
        "writer_active_changes": writer_changes,
        "writer_errors": len(writer.errors),
        "writer_error_samples": [str(e) for e in writer.errors[:5]],
        "acked": len(acks),
        "longest_gap_s": round(max(gaps), 3) if gaps else None,
        "load_average": [round(x, 2) for x in (*load_start[:1], *load_end[:1])],
        "counters": {"before": before, "after": after},
    }


def print_report(report: dict[str, Any], console: Console) -> None:
    host = report["machine"]
    console.print(
        f"{host['cores']} cores, {host['memory_gib']} GiB, {host['platform']}, Python "
        f"{host['python']}, load {host['load_average']}; hacore {report['hacore']}; "
        f"{report['minutes']:g} min per profile; stress-ng per node: {report['stress']}; "
        f"HA processes' priority: {report['priority']}; store: managed {report['store']}",
        highlight=False,
    )
    table = Table(title="soak: a writer and stress-ng on every node, nothing broken on purpose")
    for column in (
        "profile", "ttl / loop / retry / margin", "false failovers", "promotions",
        "writer saw active change", "fencings", "store errors", "writer errors", "acked",
        "longest gap s", "load 1-min start / end",
    ):  # fmt: skip
        table.add_column(column, justify="left" if column == "profile" else "right")
    for row in report["results"]:
        if "error" in row:
            table.add_row(row["profile"], "-", f"FAILED: {row['error'].splitlines()[0][:150]}")
            continue
        t = TIMING_PROFILES[row["profile"]]
        table.add_row(
            row["profile"],
            f"{t.ttl:g} / {t.loop_wait:g} / {t.retry_timeout:g} / {t.safety_margin:g}",
            str(row["false_failovers"]),
            str(row["promotions"]),
            str(row["writer_active_changes"]),
            str(row["fencings"]),
            str(row["store_errors"]),
            str(row["writer_errors"]),
            str(row["acked"]),
            str(row["longest_gap_s"]),
            " / ".join(str(x) for x in row["load_average"]),
        )
    console.print(table)
    for row in report["results"]:
        for failure in row.get("formation_failures", []):
            console.print(f"  {row['profile']}: forming failed first: {failure}", highlight=False)
        for entry in row.get("history", []):
            console.print(f"  {row['profile']}: history {entry}", highlight=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="soak length per profile")
    parser.add_argument("--profiles", default="default,fast", help="timing profiles to soak")
    parser.add_argument("--cpu", type=int, default=1, help="stress-ng CPU workers per node")
    parser.add_argument("--io", type=int, default=1, help="stress-ng sync() workers per node")
    parser.add_argument("--hdd", type=int, default=1, help="stress-ng file writers per node")
    parser.add_argument("--hdd-bytes", default="64M", help="bytes each file writer writes")
    parser.add_argument(
        "--priority",
        choices=("normal", "raised"),
        default="normal",
        help="raised: the HA processes at nice -10 and best-effort I/O 0, as the systemd unit's"
        " --priority raised",
    )
    parser.add_argument(
        "--store",
        choices=("etcd", *STORE_PORTS),
        default="etcd",
        help="each host's managed store member (its timing from the profile)",
    )
    parser.add_argument("--keep-logs", metavar="DIR", help="keep every node's logs under DIR")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    if unknown := [p for p in profiles if p not in TIMING_PROFILES]:
        parser.error(f"unknown profile(s) {unknown}: one of {', '.join(TIMING_PROFILES)}")
    if os.geteuid() != 0:
        parser.error("the soak needs root (network namespaces)")
    if shutil.which("stress-ng") is None:
        parser.error("no stress-ng on PATH (apt-get install stress-ng; scripts/setup has it)")
    if reason := netns.unavailable_reason():
        parser.error(reason)

    console, log = bench_console(args.json, width=170)

    results = []
    for profile in profiles:
        try:
            results.append(soak(profile, args, log))
        except Exception as exc:
            log(f"{profile}: failed: {type(exc).__name__}: {exc}")
            results.append({"profile": profile, "error": f"{type(exc).__name__}: {exc}"})
    report = {
        "machine": machine(),
        "hacore": hacore.__version__,
        "minutes": args.minutes,
        "stress": f"--cpu {args.cpu} --io {args.io} --hdd {args.hdd} --hdd-bytes {args.hdd_bytes}",
        "priority": args.priority,
        "store": args.store,
        "results": results,
    }
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print_report(report, console)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
