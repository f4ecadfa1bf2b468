"""File sync: how fast a file written on the active is on every standby, and how long a new
node takes to receive a whole tree, for hacore's Syncthing and rsync plugins beside plain rsync.

    python benchmarks/filesync.py [--quick] [--engines syncthing,rsync] [--big-count N]
                                  [--rsync-intervals 30,1] [--tree-mb 1024] [--json]

Everything runs on loopback in a temporary directory: three nodes per engine for propagation
(the active and two standbys), then a join of an empty node to an active holding a generated
tree, with ``rsync -a`` of the same tree (local, and from an rsync daemon) in the same run.
A benchmark, not a test: it prints numbers and asserts nothing about them. See
benchmarks/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _filesync_engines import Cluster, ConnectionWatch, StatePoller
from _filesync_measure import Propagation, summary
from _filesync_tree import (
    RsyncDaemon,
    link_copy,
    make_tree,
    plain_rsync,
    present,
    remove,
    settle,
    verify,
    wait_tree,
)
from _report import machine, tool_version
from rich.console import Console
from rich.table import Table

from hacore_plugins.rsync.settings import RsyncSettings
from hacore_plugins.syncthing import home as st_home
from hacore_plugins.syncthing.settings import SyncthingSettings

MIB = 1024 * 1024
#: a timer at least this long is measured open loop (see Propagation.open_loop)
SLOW_TIMER = 5.0
#: mean gap between open-loop writes
OPEN_LOOP_GAP = 1.0
#: random pause before each sequential Syncthing write (its watcher works in 1 s steps)
SYNCTHING_PHASE = 1.0
#: how often a joining node's state() is asked whether it is in sync
STATE_POLL = 1.0

log = Console(stderr=True)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def progress(message: str) -> None:
    log.print(f"[dim]{time.strftime('%H:%M:%S')} load {loadavg()}: {message}[/]")


# -- propagation ---------------------------------------------------------------------------


def _sizes(args: argparse.Namespace, slow: bool) -> list[tuple[str, int, int, str]]:
    """(label, bytes, count, method) per file size."""
    big_count = min(args.big_count, args.slow_count) if slow else args.big_count
    sizes = [("small", args.small_size, args.small_count, "open loop" if slow else "sequential")]
    if big_count > 0:
        sizes.append(("big", args.big_mb * MIB, big_count, "sequential"))
    return sizes


def _measure(
    prop: Propagation,
    args: argparse.Namespace,
    *,
    cluster: Cluster,
    engine: str,
    variant: str,
    timer: float,
) -> list[dict[str, Any]]:
    slow = timer >= SLOW_TIMER
    phase = SYNCTHING_PHASE if engine == "syncthing" else timer
    rows = []
    for label, size, count, method in _sizes(args, slow):
        if count <= 0:
            continue
        progress(f"{engine} {variant}: {count} {label} files ({method})")
        load = loadavg()
        cpu = cluster.cpu_s()
        timeout = 120 + 3 * timer + size / MIB
        prefix = f"{variant.split()[0]}-{label}"
        if method == "open loop":
            samples = prop.open_loop(prefix, size, count, mean_gap=OPEN_LOOP_GAP, timeout=timeout)
        else:
            samples = prop.sequential(prefix, size, count, phase=phase, timeout=timeout)
        used = cluster.cpu_s()
        rows.append(
            {
                "engine": engine,
                "variant": variant,
                "size": label,
                "bytes": size,
                "method": method,
                "load_average": load,
                "engine_cpu_s_per_file": None
                if cpu is None or used is None
                else round((used - cpu) / count, 3),
                **summary(samples),
                "samples": [
                    {"standbys_s": s.per_standby, "after_write_s": s.after_write_s} for s in samples
                ],
            }
        )
    return rows


def propagation_syncthing(work: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The defaults (the plugin scans what its writers finish), the same with an explicit
    ``scan()`` after each write, and Syncthing's own watcher alone (``scan_on_change`` off,
    what the plugin did before), each cluster started afresh."""
    defaults = SyncthingSettings()
    watcher = f"watcher {defaults.watcher_delay} s"
    clusters: list[tuple[dict[str, Any], list[tuple[str, bool]]]] = [
        (
            {},
            [
                ("defaults (scan on change)", False),
                ("defaults + scan() after each write", True),
            ],
        ),
        ({"scan_on_change": False}, [(f"scan_on_change off ({watcher})", False)]),
    ]
    rows: list[dict[str, Any]] = []
    for index, (settings, variants) in enumerate(clusters):
        root = work / f"syncthing-prop-{index}"
        cluster = Cluster("syncthing", root, settings)
        try:
            cluster.up(["a", "b", "c"], "a")
            a = cluster.nodes["a"]
            standbys = [cluster.nodes[n].files for n in ("b", "c")]
            for variant, scan in variants:
                with Propagation(
                    a.files,
                    standbys,
                    root / "staging",
                    after_write=a.backend.scan if scan else None,
                    seed=args.seed,
                ) as prop:
                    rows += _measure(
                        prop, args, cluster=cluster, engine="syncthing", variant=variant, timer=0.0
                    )
        finally:
            cluster.stop()
            remove(root)
    return rows


def propagation_rsync(
    work: Path, args: argparse.Namespace, interval: float
) -> list[dict[str, Any]]:
    root = work / f"rsync-prop-{interval:g}"
    default = interval == RsyncSettings().interval
    cluster = Cluster("rsync", root, {"interval": interval})
    variant = f"interval {interval:g} s" + (" (default)" if default else "")
    try:
        cluster.up(["a", "b", "c"], "a")
        standbys = [cluster.nodes[n].files for n in ("b", "c")]
        with Propagation(
            cluster.nodes["a"].files, standbys, root / "staging", seed=args.seed
        ) as prop:
            return _measure(
                prop, args, cluster=cluster, engine="rsync", variant=variant, timer=interval
            )
    finally:
        cluster.stop()
        remove(root)


# -- initial sync --------------------------------------------------------------------------


def _finish(row: dict[str, Any], dest: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    problem = verify(dest, manifest)
    row["verified"] = "ok" if problem is None else problem
    if row.get("tree_s"):
        total = sum(e.size for e in manifest.values())
        row["mib_per_s"] = round(total / MIB / row["tree_s"], 1)
    return row


def plain(src: str, dest: Path, what: str, manifest: dict[str, Any]) -> dict[str, Any]:
    progress(f"initial sync: {what}")
    settle()
    load = loadavg()
    elapsed = round(plain_rsync(src, dest), 3)
    row = {"copy": what, "load_average": load, "tree_s": elapsed, "in_sync_s": elapsed}
    _finish(row, dest, manifest)
    remove(dest)
    return row


def timed_join(
    cluster: Cluster, name: str, what: str, manifest: dict[str, Any], timeout: float
) -> dict[str, Any]:
    """From the new node's engine start until it holds the whole tree, and until its plugin
    says it is in sync with the tree whole (asked every STATE_POLL seconds); notes whether
    it said so earlier, while files were still missing."""
    progress(f"initial sync: {what}")
    settle()
    load = loadavg()
    cpu = cluster.cpu_s()
    began = time.monotonic()
    node = cluster.join(name)
    role_s = time.monotonic() - began
    at_sync: list[int] = []

    def whole() -> bool:
        at_sync.append(present(node.files, manifest))
        return at_sync[-1] == len(manifest)

    poller = StatePoller(node.backend, STATE_POLL, whole)
    poller.start()
    linked = ConnectionWatch(node.backend, str(cluster.source))
    linked.start()
    complete = wait_tree(node.files, manifest, timeout)
    poller.join(timeout=max(1.0, timeout - (time.monotonic() - began)))
    poller.stop()
    linked.stop()
    used = cluster.cpu_s()
    row: dict[str, Any] = {
        "copy": what,
        "load_average": load,
        "engine_start_s": round(node.started_s, 3),
        "role_s": round(role_s, 3),
        "connected_s": None if linked.at is None else round(linked.at - began, 3),
        "tree_s": None if complete is None else round(complete - began, 3),
        "in_sync_s": None
        if poller.first_in_sync is None
        else round(poller.first_in_sync - began, 3),
        "engine_cpu_s": None if cpu is None or used is None else round(used - cpu, 2),
    }
    if at_sync and at_sync[0] < len(manifest) and poller.first_claim is not None:
        row["premature_in_sync"] = (
            f"said in sync at {poller.first_claim - began:.1f} s "
            f"with {at_sync[0]}/{len(manifest)} files"
        )
    if poller.first_in_sync is None and poller.last is not None:
        row["last_state"] = poller.last.detail
    return _finish(row, node.files, manifest)


def initial_sync(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    tree = work / "tree"
    tree.mkdir(parents=True)
    progress(f"initial sync: generating a {args.tree_mb} MiB tree of {args.tree_files} files")
    began = time.monotonic()
    manifest = make_tree(tree, args.tree_mb * MIB, args.tree_files, args.seed)
    info = {
        "files": len(manifest),
        "dirs": len({str(Path(r).parent) for r in manifest}),
        "bytes": sum(e.size for e in manifest.values()),
        "largest_bytes": max(e.size for e in manifest.values()),
        "generate_s": round(time.monotonic() - began, 1),
    }
    runs = [
        plain(f"{tree}/", work / "plain-local", "rsync -a (local)", manifest),
    ]
    daemon = RsyncDaemon(work / "plain-daemon", tree).start()
    try:
        runs.append(
            plain(daemon.url, work / "plain-remote", "rsync -a (daemon, loopback)", manifest)
        )
    finally:
        daemon.stop()
    errors = []
    variants = [(e, None) for e in args.engines if e != "syncthing"]
    if "syncthing" in args.engines:
        variants[:0] = [("syncthing", seeding) for seeding in args.syncthing_seeding]
    for engine, seeding in variants:
        try:
            runs += _join_runs(engine, work, tree, manifest, args, seeding=seeding)
        except Exception as err:
            errors.append(f"initial sync, {engine}: {type(err).__name__}: {err}")
    return {"tree": info, "runs": runs, "errors": errors}


def _join_runs(
    engine: str,
    work: Path,
    tree: Path,
    manifest: dict[str, Any],
    args: argparse.Namespace,
    *,
    seeding: str | None = None,
) -> list[dict[str, Any]]:
    """Syncthing runs with TLS material, as a cluster with TLS on: ``seeding`` "on" is
    ``seed: true`` (a joiner is seeded by rsync over TLS), "off" the plugin's default."""
    root = work / f"{engine}-join"
    if engine == "syncthing":
        settings = {"seed": seeding == "on"}
        cluster = Cluster(engine, root, settings, tls=True)
    else:
        cluster = Cluster(engine, root)
    source = cluster.node("a", root / "a" / "files")
    link_copy(tree, source.files)
    runs: list[dict[str, Any]] = []
    try:
        progress(f"initial sync: {engine} {seeding or ''} active indexes the tree")
        began = time.monotonic()
        cluster.up(["a"], "a", timeout=args.join_timeout)
        index_s = round(time.monotonic() - began, 1)
        label = f"hacore syncthing (seed {seeding})" if engine == "syncthing" else "hacore rsync"
        run = timed_join(cluster, "b", f"{label}: 2nd node joins", manifest, args.join_timeout)
        run["active_ready_s"] = index_s
        runs.append(run)
        if engine == "syncthing":
            # A third node fetches from the active and the standby at once.
            runs.append(
                timed_join(cluster, "c", f"{label}: 3rd node joins", manifest, args.join_timeout)
            )
    finally:
        cluster.stop()
        if not args.keep:
            remove(root)
    return runs


# -- output --------------------------------------------------------------------------------


def _s(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_report(report: dict[str, Any], console: Console) -> None:
    info = report["machine"]
    console.print(
        f"[bold]machine[/]: {info['cores']} cores, {info['memory_gib']} GiB, {info['platform']}, "
        f"Python {info['python']}, hacore {info['hacore']}"
    )
    console.print("versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    console.print(
        f"load average: {report['load_average_start']} at start, "
        f"{report['load_average_end']} at the end (other work on the machine stretches times)"
    )
    if report.get("propagation"):
        table = Table(
            title="propagation: written on the active (rename into place) -> whole on both "
            "standbys, seconds"
        )
        for column in ("engine", "settings", "file", "method", "n", "p50", "p95", "p99", "max"):
            table.add_column(column, justify="right" if column in "n p50 p95 p99 max" else "left")
        table.add_column("1st standby p50", justify="right")
        table.add_column("CPU s/file", justify="right")
        table.add_column("lost", justify="right")
        table.add_column("load", justify="right")
        for row in report["propagation"]:
            size = row["bytes"]
            table.add_row(
                row["engine"],
                row["variant"],
                f"{size // MIB} MiB" if size >= MIB else f"{size // 1024} KiB",
                row["method"],
                str(row["n"]),
                *(_s(row.get(k)) for k in ("p50_s", "p95_s", "p99_s", "max_s")),
                _s(row.get("first_standby_p50_s")),
                _s(row.get("engine_cpu_s_per_file")),
                str(row["timeouts"]),
                f"{row['load_average'][0]:.1f}",
            )
        console.print(table)
    initial = report.get("initial_sync")
    if initial:
        tree = initial["tree"]
        table = Table(
            title=f"initial sync: {tree['bytes'] / MIB:.0f} MiB in {tree['files']} files, "
            f"{tree['dirs']} directories, to an empty node (seconds from its start)"
        )
        columns = ("copy", "active ready", "engine up", "connected", "tree on disk", "says in sync")
        for column in columns:
            table.add_column(column, justify="left" if column == "copy" else "right")
        for column in ("MiB/s", "engine CPU s", "load", "verified"):
            table.add_column(column, justify="left" if column == "verified" else "right")
        for run in initial["runs"]:
            verified = run.get("verified", "-")
            if run.get("premature_in_sync"):
                verified += f"; {run['premature_in_sync']}"
            table.add_row(
                run["copy"],
                _s(run.get("active_ready_s")),
                _s(run.get("role_s")),
                _s(run.get("connected_s")),
                _s(run.get("tree_s")),
                _s(run.get("in_sync_s")),
                _s(run.get("mib_per_s")),
                _s(run.get("engine_cpu_s")),
                f"{run['load_average'][0]:.1f}",
                verified,
            )
        console.print(table)
    for error in report.get("errors", []):
        console.print(f"[red]error[/]: {error}")
    console.print(f"[dim]wall time {report['wall_s']} s[/]")


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--quick", action="store_true", help="a small fast run (see the README)")
    add("--engines", default="syncthing,rsync", help="filesync plugins to run")
    add("--parts", default="propagation,initial", help="propagation and/or initial")
    add("--small-count", type=int, help="small files per setting (100; quick 10)")
    add("--small-size", type=int, default=4096, help="bytes of a small file (4096)")
    add("--big-count", type=int, help="big files per setting (20; quick 2)")
    add("--big-mb", type=int, default=50, help="MiB of a big file (50)")
    add("--slow-count", type=int, default=5, help="big files at a timer >= 5 s (5)")
    add("--rsync-intervals", help="rsync plugin pull intervals, s (30,1; quick 1)")
    add("--tree-mb", type=int, help="MiB of the initial-sync tree (1024; quick 64)")
    add("--tree-files", type=int, help="files in the tree (2000; quick 200)")
    add("--syncthing-seeding", default="on,off", help="Syncthing's seed setting(s) (on,off)")
    add("--join-timeout", type=float, default=900.0, help="seconds a join may take (900)")
    add("--seed", type=int, default=1, help="seed of the tree and of the random pauses")
    add("--workdir", type=Path, help="parent of the temporary work directory")
    add("--keep", action="store_true", help="keep the work directory and print its path")
    add("--json", action="store_true", help="print one JSON document on stdout")
    args = parser.parse_args(argv)
    quick = args.quick
    for name, full, small in (
        ("small_count", 100, 10),
        ("big_count", 20, 2),
        ("rsync_intervals", "30,1", "1"),
        ("tree_mb", 1024, 64),
        ("tree_files", 2000, 200),
    ):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    args.parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    args.syncthing_seeding = [v.strip() for v in args.syncthing_seeding.split(",") if v.strip()]
    if not set(args.syncthing_seeding) <= {"on", "off"}:
        parser.error("--syncthing-seeding takes on and/or off")
    args.intervals = [float(i) for i in str(args.rsync_intervals).split(",") if i.strip()]
    if not set(args.engines) <= {"syncthing", "rsync"}:
        parser.error("--engines takes syncthing and/or rsync")
    if not args.parts <= {"propagation", "initial"}:
        parser.error("--parts takes propagation and/or initial")
    if min(args.small_count, args.big_count, args.tree_files, args.tree_mb) < 0:
        parser.error("counts and sizes must not be negative")
    return args


def _word(line: str, index: int) -> str:
    words = line.split()
    return words[index] if len(words) > index and line != "not installed" else line


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(stderr=args.json)
    if not console.is_terminal:
        console.width = 140
    report: dict[str, Any] = {
        "machine": machine(),
        "versions": {
            "syncthing": _word(tool_version(["syncthing", "--version"]), 1)
            + f" (STHASHING={st_home.hashing()})",
            "rsync": tool_version(["rsync", "--version"]),
        },
        "load_average_start": loadavg(),
        "options": {k: v for k, v in vars(args).items() if k not in ("workdir", "parts")},
        "propagation": [],
        "errors": [],
    }
    report["options"]["parts"] = sorted(args.parts)
    work = Path(tempfile.mkdtemp(prefix="hacore-filesync-bench-", dir=args.workdir))
    started = time.monotonic()
    try:
        if "propagation" in args.parts:
            jobs: list[tuple[str, Callable[[], list[dict[str, Any]]]]] = []
            if "syncthing" in args.engines:
                jobs.append(("syncthing", lambda: propagation_syncthing(work, args)))
            if "rsync" in args.engines:
                for interval in args.intervals:
                    pull = functools.partial(propagation_rsync, work, args, interval)
                    jobs.append((f"rsync {interval:g} s", pull))
            for what, run in jobs:
                try:
                    report["propagation"] += run()
                except Exception as err:
                    report["errors"].append(f"propagation, {what}: {type(err).__name__}: {err}")
        if "initial" in args.parts:
            try:
                report["initial_sync"] = initial_sync(work, args)
                report["errors"] += report["initial_sync"].pop("errors")
            except Exception as err:
                report["errors"].append(f"initial sync: {type(err).__name__}: {err}")
    except KeyboardInterrupt:
        report["errors"].append("interrupted")
    finally:
        if args.keep:
            log.print(f"work directory kept: {work}")
        else:
            remove(work)
    report["load_average_end"] = loadavg()
    report["wall_s"] = round(time.monotonic() - started, 1)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report, console)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
