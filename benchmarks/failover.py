"""Failover, switchover and status endpoint: hacore and Patroni side by side, in the same run.

    python benchmarks/failover.py [--runs N] [--scenarios crash,switchover,status]
                                  [--systems hacore,patroni-defaults,...] [--json]
                                  [--profile fast] [--store etcd|zookeeper [--zk-tick-ms MS]]

Every system runs 3 nodes of the same PostgreSQL 15 on a 3-member etcd started for it
(``hacore_plugins.etcd.testing.EtcdHarness``), on loopback ports in a temporary directory;
with ``--store zookeeper`` the hacore systems run on a 3-server ZooKeeper ensemble instead
(``_stores.py``; Patroni stays on etcd). ``--profile`` sets the ``hacore`` system's
``timing.profile``.
A writer process inserts one row at a time through a multi-host connection string
(``target_session_attrs=read-write``) and logs every acknowledged insert.

* crash: the active's host dies (SIGSTOP, then SIGKILL, of its agent and its whole PostgreSQL
  process group); time from the fault to the first acknowledged write on the new active, time
  until the new active's status endpoint answers 200, acknowledged writes missing afterwards.
  A fresh cluster per run.
* switchover: a planned switchover to a standby (the synchronous one in synchronous mode);
  the largest interval between consecutive acknowledged writes around it, and the time from
  the request to the new active's first write and status 200.
* status: the active's status endpoint (hacore ``/status``, Patroni ``/primary``) under
  keep-alive connections for a few seconds: requests per second, p50 and p99.
* haproxy (not in the default set): the crash again, with a second writer that connects
  through a real HAProxy configured by ``hacore cluster haproxy-config`` (for Patroni, the
  same file checking ``/primary``): the outage that client of the load balancer sees, beside
  the direct writer's takeover time of the same run. A fresh cluster per run.

A benchmark, not a test: it prints numbers and asserts nothing about them. Patroni comes from
``benchmarks/setup_patroni.sh``; ``wrk`` (if installed) generates the status load.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import _haproxy
import _load
import _patroni
import _pgbench
import _timeline
import attrs
from _cluster import (
    TABLE,
    BenchCluster,
    fault_phase,
    lost_writes,
    name_of_port,
    prepare_workdir,
    wait_status,
)
from _report import (
    bench_console,
    machine,
    print_report,
    ratios,
    size_ratios,
    spread,
    stack_versions,
    tool_version,
)
from _stores import BACKENDS, ETCD, Store
from _systems import START_TIMEOUT, System, running, shape_args, shapes_asked, systems
from _writer import Ack, Writer

from hacore.config.timing import TIMING_PROFILES

SCENARIOS = ("crash", "switchover", "status", "haproxy")
#: what runs without --scenarios: the HAProxy crash is asked for by name (a fresh cluster per
#: run again, and haproxy installed)
DEFAULT_SCENARIOS = ("crash", "switchover", "status")
#: the writer through HAProxy numbers its rows from here, so both writers share the table
HAPROXY_FIRST_ID = 1_000_000_000
#: Writes acknowledged before a fault, so the writer is known to be steady.
WARM_ACKS = 100
#: Seconds of writes on either side of a switchover, and after a crash's first new write.
STEADY = 1.0


def lag_at(cluster: BenchCluster, active: str) -> dict[str, dict[str, int | None]] | None:
    """Each standby's lag behind ``active`` (``pg_stat_replication``), or None if unreadable:
    read right before a fault, it never delays the fault by more than one query."""
    try:
        return _pgbench.replication_lag(cluster, active)
    except Exception:
        return None


def worst_replay(lag: dict[str, dict[str, int | None]] | None) -> int | None:
    values = [v["replay"] for v in (lag or {}).values() if v.get("replay") is not None]
    return max(values) if values else None  # type: ignore[type-var]


def fault_timeout(cluster: BenchCluster) -> float:
    timings = cluster.timings()
    return 3 * timings.ttl + 60


# -- scenarios ------------------------------------------------------------------------------


def crash_run(cluster: BenchCluster, log: Callable[[str], None]) -> dict[str, Any]:
    old = cluster.wait_converged(START_TIMEOUT)
    sync = cluster.sync_standby()
    timeout = fault_timeout(cluster)
    writer = Writer(cluster.dsn(), TABLE).start()
    try:
        writer.wait_acks(WARM_ACKS, 60)
        old_port = cluster.node(old).pg_port
        survivors = [n.name for n in cluster.nodes if n.name != old]
        lag = lag_at(cluster, old)
        phase = fault_phase(cluster)
        fault = cluster.host_death(old)
        fault_wall = time.time() - (time.monotonic() - fault)
        status_at, status_node = wait_status(cluster, survivors, timeout)
        first = writer.first_ack(after=fault, not_port=old_port, timeout=timeout)
        writer.wait_acks(len(writer.acks) + int(STEADY * 50), 60)
    finally:
        acks = writer.stop()
    new = name_of_port(cluster, first.port)
    lost = lost_writes(cluster, new, acks)
    result = {
        "old_active": old,
        "new_active": new,
        "sync_standby_before": sync,
        "first_write_s": round(first.at - fault, 3),
        "status_s": round(status_at - fault, 3),
        "status_node": status_node,
        "acked": len(acks),
        "acked_before_fault": sum(1 for a in acks if a.at <= fault),
        "lost": len(lost),
        "lost_ids": lost[:20],
        "lag_bytes": lag,
        "worst_replay_lag_bytes": worst_replay(lag),
        "fault_phase_s": phase,
        "database": cluster.database,
        "phases": cluster.promotion_phases(new, fault_wall),
    }
    steps = ", ".join(f"{k.removesuffix('_s')} {v} s" for k, v in result["phases"].items())
    log(
        f"crash {cluster.system}: {old} died, {new} active"
        + (f" ({steps})" if steps else "")
        + f"; first write {result['first_write_s']} s, status 200 {result['status_s']} s, "
        f"lost {len(lost)} of {len(acks)} acknowledged, "
        f"replay lag at the fault {result['worst_replay_lag_bytes']} bytes (worst standby)"
    )
    return result


def haproxy_run(cluster: BenchCluster, log: Callable[[str], None]) -> dict[str, Any]:
    """The crash with two writers: one direct (as in ``crash``), one through HAProxy."""
    old = cluster.wait_converged(START_TIMEOUT)
    sync = cluster.sync_standby()
    timeout = fault_timeout(cluster)
    proxy, dsn = _haproxy.front(cluster)
    direct: Writer | None = None
    through: Writer | None = None
    direct_acks: list[Ack] = []
    through_acks: list[Ack] = []
    try:
        direct = Writer(cluster.dsn(), TABLE).start()
        through = Writer(dsn, TABLE, first_id=HAPROXY_FIRST_ID, server_port=True).start()
        direct.wait_acks(WARM_ACKS, 60)
        through.wait_acks(WARM_ACKS, 120)  # HAProxy puts the active in after `rise` checks
        old_port = cluster.node(old).pg_port
        survivors = [n.name for n in cluster.nodes if n.name != old]
        fault_phase(cluster)
        fault = cluster.host_death(old)
        status_at, status_node = wait_status(cluster, survivors, timeout)
        first = direct.first_ack(after=fault, not_port=old_port, timeout=timeout)
        first_lb = through.first_ack(after=fault, not_port=old_port, timeout=timeout)
        steady = int(STEADY * 50)
        direct.wait_acks(len(direct.acks) + steady, 60)
        through.wait_acks(len(through.acks) + steady, 60)
    finally:
        if direct is not None:
            direct_acks = direct.stop()
        if through is not None:
            through_acks = through.stop()
        proxy.stop()
    new = name_of_port(cluster, first.port)
    lost = lost_writes(cluster, new, direct_acks)
    lost_lb = lost_writes(cluster, new, through_acks)
    result = {
        "old_active": old,
        "new_active": new,
        "sync_standby_before": sync,
        "first_write_s": round(first.at - fault, 3),
        "haproxy_first_write_s": round(first_lb.at - fault, 3),
        "haproxy_extra_s": round(first_lb.at - first.at, 3),
        "status_s": round(status_at - fault, 3),
        "status_node": status_node,
        "acked": len(direct_acks),
        "haproxy_acked": len(through_acks),
        "lost": len(lost),
        "haproxy_lost": len(lost_lb),
        "lost_ids": (lost + lost_lb)[:20],
    }
    log(
        f"haproxy {cluster.system}: {old} died, {new} active; first write direct "
        f"{result['first_write_s']} s, through HAProxy {result['haproxy_first_write_s']} s, "
        f"status 200 {result['status_s']} s, lost {len(lost)} + {len(lost_lb)} of "
        f"{len(direct_acks)} + {len(through_acks)} acknowledged"
    )
    return result


def switchover_runs(cluster: BenchCluster, runs: int, log: Callable[[str], None]) -> dict[str, Any]:
    results: list[dict[str, Any]] = []
    errors: list[str] = []
    writer = Writer(cluster.dsn(), TABLE).start()
    final = None
    try:
        writer.wait_acks(WARM_ACKS, 60)
        for _ in range(runs):
            try:
                results.append(switchover_once(cluster, writer, log))
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                log(f"switchover {cluster.system}: failed: {errors[-1]}")
        final = cluster.wait_converged(START_TIMEOUT)
    finally:
        acks = writer.stop()
    keys = ("gap_s", "first_write_s", "status_s", "worst_replay_lag_bytes")
    summary = {key: spread(r[key] for r in results) for key in keys}
    lost = len(lost_writes(cluster, final, acks)) if final else None
    return {
        "runs": results,
        "summary": summary,
        "lost": lost,
        "acked": len(acks),
        "errors": errors,
        "database": cluster.database,
    }


def switchover_once(
    cluster: BenchCluster, writer: Writer, log: Callable[[str], None]
) -> dict[str, Any]:
    old = cluster.wait_converged(START_TIMEOUT)
    candidate = cluster.sync_standby() or next(n.name for n in cluster.nodes if n.name != old)
    old_port = cluster.node(old).pg_port
    writer.wait_acks(len(writer.acks) + int(STEADY * 50), 60)
    failure: list[BaseException] = []
    answered: list[float] = []

    def ask() -> None:
        try:
            cluster.request_switchover(old, candidate)
            answered.append(time.monotonic())
        except Exception as exc:
            failure.append(exc)

    lag = lag_at(cluster, old)
    asked = time.monotonic()
    request = threading.Thread(target=ask, daemon=True)
    request.start()
    status_at, _ = wait_status(
        cluster, [candidate], 120, failed=lambda: failure[0] if failure else None
    )
    first = writer.first_ack(after=asked, not_port=old_port, timeout=120)
    request.join(120)
    if failure:
        raise failure[0]
    writer.wait_acks(len(writer.acks) + int(STEADY * 50), 60)
    window = [a.at for a in list(writer.acks) if asked - STEADY <= a.at <= first.at + STEADY]
    gap = max(b - a for a, b in itertools.pairwise(window))
    result = {
        "from": old,
        "to": name_of_port(cluster, first.port),
        "gap_s": round(gap, 3),
        "first_write_s": round(first.at - asked, 3),
        "status_s": round(status_at - asked, 3),
        "api_answered_s": round(answered[0] - asked, 3) if answered else None,
        "lag_bytes": lag,
        "worst_replay_lag_bytes": worst_replay(lag),
    }
    log(
        f"switchover {cluster.system}: {old} -> {result['to']}; write gap {result['gap_s']} s, "
        f"first write {result['first_write_s']} s, status 200 {result['status_s']} s"
    )
    return result


def status_load(
    cluster: BenchCluster,
    seconds: float,
    connections: int,
    *,
    threads: int = 1,
    timed: bool = False,
) -> dict[str, Any]:
    """The load on the active's status endpoint; for hacore, what its agent's loop and
    collector did meanwhile, and with ``timed`` which slow probes they overlapped
    (benchmarks/_timeline.py)."""
    active = cluster.wait_converged(START_TIMEOUT)
    url = cluster.node(active).status_url
    path = cluster.timeline(active)
    samples: list[tuple[float, float]] = []
    client = threading.Thread(
        target=lambda: samples.extend(_timeline.timed_probes(url, seconds)), daemon=True
    )
    start = time.monotonic()
    if timed and path is not None:
        client.start()
    result = _load.load(url, connections=connections, seconds=seconds, threads=threads)
    end = time.monotonic()
    if path is None:
        return {"endpoint": urlsplit(url).path, **result}
    if client.is_alive():
        client.join(seconds + 10)
    time.sleep(1.5)  # the node writes its timeline once a second
    spans = _timeline.read(path, start, end)
    agent = _timeline.summary(spans, start, end)
    if samples:
        agent.update(_timeline.attribute(samples, spans))
    return {"endpoint": urlsplit(url).path, **result, "agent": agent}


# -- per system -------------------------------------------------------------------------------


def run_system(
    system: System,
    root: Path,
    args: argparse.Namespace,
    log: Callable[[str], None],
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "description": system.description,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    reason = system.unavailable()
    if reason:
        result["skipped"] = reason
        log(f"{system.name}: skipped: {reason}")
        return result
    if "crash" in args.scenarios:
        runs, errors = fresh_cluster_runs("crash", crash_run, system, root, args, log, result)
        keys = ("first_write_s", "status_s", "worst_replay_lag_bytes")
        result["crash"] = {
            "runs": runs,
            "errors": errors,
            "summary": {k: spread(r[k] for r in runs) for k in keys},
        }
    if "haproxy" in args.scenarios:
        result["haproxy"] = haproxy_runs(system, root, args, log, result)
    if "switchover" in args.scenarios or "status" in args.scenarios:
        try:
            with running(
                system, root, f"{system.name}-planned", args.keep, args.template_dir
            ) as cluster:
                result.setdefault("timings", cluster.timings().describe())
                result.setdefault("version", cluster.version())
                if "switchover" in args.scenarios:
                    result["switchover"] = switchover_runs(cluster, args.runs, log)
                if "status" in args.scenarios:
                    try:
                        result["status"] = status_load(
                            cluster,
                            args.status_seconds,
                            8,
                            threads=args.status_threads,
                            timed=args.status_timeline,
                        )
                        log(f"status {system.name}: {result['status']}")
                    except Exception as exc:
                        result["status"] = {"errors": [f"{type(exc).__name__}: {exc}"]}
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            log(f"{system.name}: cluster failed: {message}")
            for scenario in ("switchover", "status"):
                if scenario in args.scenarios and scenario not in result:
                    result[scenario] = {"errors": [message], "summary": {}}
    return result


def fresh_cluster_runs(
    kind: str,
    run_one: Callable[[BenchCluster, Callable[[str], None]], dict[str, Any]],
    system: System,
    root: Path,
    args: argparse.Namespace,
    log: Callable[[str], None],
    result: dict[str, Any],
) -> tuple[list[dict[str, Any]], list[str]]:
    """``--runs`` runs of ``run_one``, each on a fresh cluster (a crash leaves none behind);
    ``result`` (the system's) gets the timings in force and the version. The runs' results,
    and the errors of those that failed."""
    runs: list[dict[str, Any]] = []
    errors: list[str] = []
    for index in range(args.runs):
        try:
            label = f"{system.name}-{kind}{index}"
            # benchmarks/managed.py passes only runs and keep: its clusters are empty
            templates = getattr(args, "template_dir", None)
            with running(system, root, label, args.keep, templates) as cluster:
                result.setdefault("timings", cluster.timings().describe())
                result.setdefault("version", cluster.version())
                runs.append(run_one(cluster, log))
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            log(f"{kind} {system.name}: failed: {errors[-1]}")
    return runs, errors


def haproxy_runs(
    system: System,
    root: Path,
    args: argparse.Namespace,
    log: Callable[[str], None],
    result: dict[str, Any],
) -> dict[str, Any]:
    """``--runs`` HAProxy crashes, a fresh cluster each; ``result`` (the system's) gets the
    timings in force and the version, as the crash scenario gives them."""
    keys = ("first_write_s", "haproxy_first_write_s", "haproxy_extra_s", "status_s")
    reason = _haproxy.unavailable_reason()
    if reason:
        log(f"haproxy {system.name}: skipped: {reason}")
        return {"runs": [], "errors": [f"skipped: {reason}"], "summary": {}}
    runs, errors = fresh_cluster_runs("haproxy", haproxy_run, system, root, args, log, result)
    return {
        "runs": runs,
        "errors": errors,
        "checks": _haproxy.CHECKS,
        "summary": {k: spread(r[k] for r in runs) for k in keys},
    }


def main(argv: list[str] | None = None) -> int:
    known = systems()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="crashes and switchovers per system")
    parser.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"any of {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--systems",
        default="hacore,hacore-tight,patroni-defaults,patroni-tight,patroni-sync",
        help=f"any of {', '.join(known)}",
    )
    parser.add_argument("--status-seconds", type=float, default=10.0)
    parser.add_argument(
        "--status-threads",
        type=int,
        default=1,
        help="wrk threads for the status load (default 1: on 2 cores a second one takes the "
        "server's core, and p99 then measures the scheduler; benchmarks/status_tail.py)",
    )
    parser.add_argument(
        "--status-timeline",
        action="store_true",
        help="a timed 9th connection during the status load: which slow probes overlapped "
        "the agent's loop or a garbage collection",
    )
    parser.add_argument(
        "--nodes", default="3", help="node counts, e.g. 3,5,7 (crash and switchover rows each)"
    )
    parser.add_argument(
        "--scale",
        type=int,
        default=0,
        help="also run every node count with a database of pgbench -i -s SCALE (70: ~1 GiB)",
    )
    parser.add_argument(
        "--load",
        choices=("none", "pgbench"),
        default="none",
        help="with --scale: a continuous pgbench -c 2 write load on the active during the runs",
    )
    parser.add_argument(
        "--template-dir",
        type=Path,
        help="with --scale: where the filled data directories systems start from are kept "
        "between runs (one per system family, PostgreSQL version and scale); default: made "
        "once per run in its work directory",
    )
    parser.add_argument(
        "--no-template",
        action="store_true",
        help="with --scale: run pgbench -i in every cluster instead (and replay it on every "
        "standby), as systems that cannot be seeded do",
    )
    parser.add_argument(
        "--profile", choices=tuple(TIMING_PROFILES), help="the hacore system's timing.profile"
    )
    parser.add_argument(
        "--store",
        choices=BACKENDS,
        default="etcd",
        help="the hacore systems' store, 3 servers on loopback (Patroni stays on etcd)",
    )
    parser.add_argument(
        "--zk-tick-ms",
        type=int,
        help="with --store zookeeper: its tickTime (default: a managed server's at the profile)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (logs) and print its path"
    )
    args = parser.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    names = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in args.scenarios if s not in SCENARIOS] + [
        n for n in names if n not in known
    ]
    if unknown or args.runs < 1:
        parser.error(f"unknown: {', '.join(unknown)}" if unknown else "--runs must be at least 1")
    try:
        node_counts = [int(n) for n in args.nodes.split(",") if n.strip()]
    except ValueError:
        parser.error(f"--nodes: not a list of numbers: {args.nodes}")
    if not node_counts or min(node_counts) < 2 or args.scale < 0:
        parser.error("--nodes needs counts of at least 2, --scale at least 0")
    if args.load != "none" and not args.scale:
        parser.error("--load needs --scale (pgbench's tables)")
    shapes = shapes_asked(node_counts, args.scale, args.load == "pgbench")
    store = Store.for_profile(args.store, args.profile or "default", args.zk_tick_ms)
    known = systems(args.profile, store)

    console, log = bench_console(args.json, width=140)

    report: dict[str, Any] = {
        "machine": machine(),
        "versions": {
            **stack_versions(),
            "patroni": tool_version([str(_patroni.PATRONI), "--version"]),
            **({"haproxy": _haproxy.version()} if "haproxy" in args.scenarios else {}),
        },
        "runs": args.runs,
        "scenarios": args.scenarios,
        "store": {"hacore": store.describe(), "patroni": ETCD.describe()},
        "shapes": [attrs.asdict(s) for s in shapes],
        "status_load": {
            "connections": 8,
            "seconds": args.status_seconds,
            "generator": _load.generator(),
            "threads": args.status_threads,
        },
        "systems": {},
    }
    started = time.monotonic()
    root = prepare_workdir(Path(tempfile.mkdtemp(prefix="hacore-failover-bench-")))
    if args.no_template:
        args.template_dir = None
    elif args.template_dir is None:
        args.template_dir = root / "templates"
    report["templates"] = str(args.template_dir) if args.template_dir else None
    if store != ETCD and any(name.startswith("patroni") for name in names):
        log(f"hacore runs on a {store.describe()}; Patroni stays on a {ETCD.describe()}")
    try:
        for name in names:
            for shape in shapes:
                key = shape.key(name)
                asked = shape_args(args, shape)
                log(f"{key}: {shape.label}: running {', '.join(asked.scenarios)}")
                system = attrs.evolve(known[name], shape=shape)
                report["systems"][key] = {
                    **run_system(system, root, asked, log),
                    "system": name,
                    "shape": attrs.asdict(shape),
                }
    finally:
        if args.keep:
            log(f"work directory kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    report["ratios"] = ratios(report["systems"])
    report["size_ratios"] = size_ratios(report["systems"])
    report["wall_s"] = round(time.monotonic() - started, 1)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report, console)
        console.print(f"[dim]wall time {report['wall_s']} s[/]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
