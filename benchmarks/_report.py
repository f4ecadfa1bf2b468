"""The failover benchmark's report: the machine, spreads over runs, tables and ratios."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

import hacore

#: (system, peer) pairs whose ratio is printed when both ran; the second pair is the
#: comparison "at equal timings".
RATIO_PAIRS = (
    ("hacore", "patroni-defaults"),
    ("hacore", "patroni-tight"),
    ("hacore", "patroni-sync"),
    ("hacore-tight", "patroni-tight"),
    ("hacore-tight", "patroni-sync"),
)
#: (label, scenario, summary key, lower is better)
RATIO_METRICS = (
    ("crash: first write on the new active", "crash", "first_write_s", True),
    ("crash: new active's status 200", "crash", "status_s", True),
    ("crash: first write through HAProxy", "haproxy", "haproxy_first_write_s", True),
    ("switchover: write gap", "switchover", "gap_s", True),
    ("switchover: new active's status 200", "switchover", "status_s", True),
    ("status endpoint: requests/s", "status", "rps", False),
    ("status endpoint: p99 latency", "status", "p99_ms", True),
)


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
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def bench_console(as_json: bool, width: int = 160) -> tuple[Console, Callable[[str], None]]:
    """The console a benchmark prints to (stderr when stdout carries its JSON; ``width``
    columns when it is not a terminal) and its timestamped progress line."""
    console = Console(stderr=as_json)
    if not console.is_terminal:
        console.width = width

    def log(line: str) -> None:
        console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {line}", highlight=False)

    return console, log


def tool_version(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "not installed"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def stack_versions() -> dict[str, str]:
    """hacore's, PostgreSQL's and etcd's versions: the stack every benchmark here runs."""
    from _cluster import PG_BIN

    return {
        "hacore": hacore.__version__,
        "postgresql": tool_version([str(PG_BIN / "postgres"), "--version"]),
        "etcd": tool_version(["etcd", "--version"]),
    }


def spread(samples: Iterable[float | None]) -> dict[str, Any]:
    values = [v for v in samples if v is not None]
    if not values:
        return {"n": 0, "min": None, "median": None, "max": None}
    return {
        "n": len(values),
        "min": round(min(values), 3),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
    }


def _cell(summary: dict[str, Any] | None, digits: int = 2) -> str:
    if not summary or not summary.get("n"):
        return "-"
    parts = (summary["min"], summary["median"], summary["max"])
    return " / ".join(f"{p:.{digits}f}" for p in parts)


def _errors(result: dict[str, Any]) -> str:
    errors = result.get("errors") or []
    return "; ".join(errors)[:200]


def print_report(report: dict[str, Any], console: Console) -> None:
    info = report["machine"]
    console.print(
        f"[bold]machine[/]: {info['cores']} cores, {info['memory_gib']} GiB, {info['platform']}, "
        f"Python {info['python']}, load average at start {info['load_average']}"
    )
    versions = report["versions"]
    console.print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    systems: dict[str, dict[str, Any]] = report["systems"]
    for name, result in systems.items():
        line = f"[bold]{name}[/]: {result['description']}"
        if result.get("load_average"):
            line += f" (load average at its start {result['load_average']})"
        if result.get("timings"):
            line += f"\n    in force: {result['timings']}"
        if result.get("skipped"):
            line += f"\n    skipped: {result['skipped']}"
        console.print(line)
    _crash_table(systems, console)
    _haproxy_table(systems, console)
    _switchover_table(systems, console)
    _status_table(report, systems, console)
    _ratio_table(report.get("ratios", []), console)
    _size_table(systems, report.get("size_ratios", {}), console)


def _crash_table(systems: dict[str, dict[str, Any]], console: Console) -> None:
    rows = {n: r["crash"] for n, r in systems.items() if r.get("crash")}
    if not rows:
        return
    table = Table(title="crash: host death of the active (min / median / max, seconds)")
    for column in ("system", "runs", "first write s", "status 200 s", "lost writes", "errors"):
        table.add_column(column, justify="left" if column in ("system", "errors") else "right")
    for name, crash in rows.items():
        summary = crash["summary"]
        lost = [str(run["lost"]) for run in crash["runs"] if "lost" in run]
        table.add_row(
            name,
            str(summary["first_write_s"]["n"]),
            _cell(summary["first_write_s"]),
            _cell(summary["status_s"]),
            ",".join(lost) or "-",
            _errors(crash),
        )
    console.print(table)


def _haproxy_table(systems: dict[str, dict[str, Any]], console: Console) -> None:
    rows = {n: r["haproxy"] for n, r in systems.items() if r.get("haproxy")}
    if not rows:
        return
    checks = next((r["checks"] for r in rows.values() if r.get("checks")), "")
    table = Table(
        title="host death, client through HAProxy (min / median / max, seconds from the "
        f"fault; HAProxy from `hacore cluster haproxy-config`, {checks})"
    )
    columns = (
        "system",
        "runs",
        "direct first write s",
        "through HAProxy s",
        "HAProxy adds s",
        "status 200 s",
        "lost direct+HAProxy",
        "errors",
    )
    for column in columns:
        table.add_column(column, justify="left" if column in ("system", "errors") else "right")
    for name, result in rows.items():
        summary = result.get("summary") or {}
        lost = [f"{r['lost']}+{r['haproxy_lost']}" for r in result["runs"]]
        table.add_row(
            name,
            str(len(result["runs"])),
            _cell(summary.get("first_write_s")),
            _cell(summary.get("haproxy_first_write_s")),
            _cell(summary.get("haproxy_extra_s")),
            _cell(summary.get("status_s")),
            ",".join(lost) or "-",
            _errors(result),
        )
    console.print(table)


def _switchover_table(systems: dict[str, dict[str, Any]], console: Console) -> None:
    rows = {n: r["switchover"] for n, r in systems.items() if r.get("switchover")}
    if not rows:
        return
    table = Table(title="switchover, planned (min / median / max, seconds from the request)")
    for column in ("system", "runs", "write gap s", "first write s", "status 200 s", "lost"):
        table.add_column(column, justify="left" if column == "system" else "right")
    table.add_column("errors")
    for name, switchover in rows.items():
        summary = switchover["summary"]
        table.add_row(
            name,
            str(summary["gap_s"]["n"]),
            _cell(summary["gap_s"]),
            _cell(summary["first_write_s"]),
            _cell(summary["status_s"]),
            str(switchover.get("lost", "-")),
            _errors(switchover),
        )
    console.print(table)


def _status_table(
    report: dict[str, Any], systems: dict[str, dict[str, Any]], console: Console
) -> None:
    rows = {n: r["status"] for n, r in systems.items() if r.get("status")}
    if not rows:
        return
    load = report["status_load"]
    table = Table(
        title=f"status endpoint on the active: {load['connections']} keep-alive connections, "
        f"{load['seconds']:g} s, {load['generator']}"
        + (f" ({load['threads']} thread(s))" if load.get("threads") else "")
    )
    for column in ("system", "endpoint", "req/s", "p50 ms", "p99 ms", "max ms", "failed"):
        table.add_column(column, justify="left" if column in ("system", "endpoint") else "right")
    table.add_column("errors")
    for name, status in rows.items():
        if "rps" not in status:
            table.add_row(name, status.get("endpoint", "-"), *["-"] * 5, _errors(status))
            continue
        table.add_row(
            name,
            status["endpoint"],
            f"{status['rps']:.0f}",
            f"{status['p50_ms']:.2f}",
            f"{status['p99_ms']:.2f}",
            f"{status['max_ms']:.1f}",
            str(status["failed"]),
            _errors(status),
        )
    console.print(table)
    for name, status in rows.items():
        if status.get("agent"):
            console.print(f"{name}'s agent during the load: {_agent_line(status['agent'])}")


def _agent_line(agent: dict[str, Any]) -> str:
    """What the agent's interpreter did while its probes were measured (_timeline.py)."""
    line = (
        f"{agent['loop_iterations']} loop iterations, loop CPU p50 {agent['loop_cpu_ms_p50']} "
        f"ms (max {agent['loop_cpu_ms_max']}), an iteration running "
        f"{(agent['loop_wall_share'] or 0) * 100:.0f}% of the time; collections over 1 ms: "
        f"{agent['gc_pauses_over_1ms']}"
        + (f" (max {agent['gc_pause_max_ms']} ms)" if agent["gc_pause_max_ms"] else "")
    )
    if "timed_probes" in agent:
        line += (
            f"; timed probes: {agent['slow']} of {agent['timed_probes']} over 2 ms, "
            f"{agent['slow_in_loop']} of them during a loop iteration (of all probes "
            f"{agent['all_in_loop_share'] * 100:.0f}% were), {agent['slow_in_gc']} during a "
            "collection"
        )
    return line


def ratios(systems: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """hacore / Patroni for each metric both have, on the medians (rates: higher is better)."""
    found = []
    for ours, peer in RATIO_PAIRS:
        if ours not in systems or peer not in systems:
            continue
        for label, scenario, key, lower_better in RATIO_METRICS:
            mine = _median(systems[ours].get(scenario), key)
            theirs = _median(systems[peer].get(scenario), key)
            if mine is None or theirs is None or theirs == 0:
                continue
            found.append(
                {
                    "metric": label,
                    "hacore": ours,
                    "patroni": peer,
                    "hacore_value": mine,
                    "patroni_value": theirs,
                    "ratio": round(mine / theirs, 3),
                    "lower_is_better": lower_better,
                }
            )
    return found


def _median(result: dict[str, Any] | None, key: str) -> float | None:
    if not result:
        return None
    if key in result:
        value = result[key]
        return float(value) if value is not None else None
    summary = result.get("summary", {}).get(key)
    return summary["median"] if summary and summary.get("n") else None


def _ratio_table(rows: list[dict[str, Any]], console: Console) -> None:
    if not rows:
        console.print("ratios: none (needs a hacore system and a Patroni system with results)")
        return
    pairs = list(dict.fromkeys((row["hacore"], row["patroni"]) for row in rows))
    table = Table(
        title="ratios hacore / Patroni on the medians (times: < 1 is hacore faster; "
        "requests/s: > 1 is hacore faster)"
    )
    table.add_column("metric")
    for ours, peer in pairs:
        table.add_column(f"{ours} /\n{peer}", justify="right")
    for label in dict.fromkeys(row["metric"] for row in rows):
        found = {(r["hacore"], r["patroni"]): r["ratio"] for r in rows if r["metric"] == label}
        table.add_row(label, *(f"{found[p]:.2f}" if p in found else "-" for p in pairs))
    console.print(table)


#: The shape every other is compared with: 3 nodes, the benchmark's table only, no load.
REFERENCE_SHAPE = {"nodes": 3, "scale": 0, "load": False}
#: (label, scenario, summary key) of the medians compared across shapes
SIZE_METRICS = (("crash", "crash", "first_write_s"), ("switchover", "switchover", "gap_s"))


def size_ratios(systems: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Each row's median over its system's 3-node empty-database median, per metric (1.10:
    10 % slower than the reference): the "flat with size" check."""
    found: dict[str, dict[str, float | None]] = {}
    reference = {r["system"]: r for r in systems.values() if r.get("shape") == REFERENCE_SHAPE}
    for key, result in systems.items():
        base = reference.get(result.get("system", ""))
        if base is None:
            continue
        row: dict[str, float | None] = {}
        for label, scenario, metric in SIZE_METRICS:
            mine = _median(result.get(scenario), metric)
            theirs = _median(base.get(scenario), metric)
            row[label] = round(mine / theirs, 3) if mine is not None and theirs else None
        found[key] = row
    return found


def _database(result: dict[str, Any]) -> str:
    """The database a row's clusters held: pgbench's scale and size, or empty."""
    shape = result.get("shape") or {}
    if not shape.get("scale"):
        return "empty"
    crash_runs = (result.get("crash") or {}).get("runs") or []
    found = [run.get("database") for run in crash_runs]
    found.append((result.get("switchover") or {}).get("database"))
    sizes = [d["size_mib"] for d in found if d]
    size = f" {max(sizes)} MiB" if sizes else ""
    return f"s{shape['scale']}{size}"


def _bytes(summary: dict[str, Any] | None) -> str:
    if not summary or not summary.get("n"):
        return "-"
    return f"{summary['max']:,.0f}"


def _size_table(
    systems: dict[str, dict[str, Any]],
    size_ratios: dict[str, dict[str, float | None]],
    console: Console,
) -> None:
    rows = {k: r for k, r in systems.items() if r.get("shape")}
    if not any(r["shape"] != REFERENCE_SHAPE for r in rows.values()):
        return
    table = Table(
        title="flat with size: min / median / max s; x ref: median / the same system's 3-node "
        "empty median; lag: the worst standby's replay lag (bytes) at the fault or request, "
        "max over runs; lost: per crash run | switchovers"
    )
    columns = (
        "system, nodes",
        "database, load",
        "crash 1st write",
        "x ref",
        "lag",
        "switchover gap",
        "x ref ",
        "lag ",
        "lost",
        "errors",
    )
    for column in columns:
        left = column in ("system, nodes", "database, load", "errors")
        # ten columns: the numbers stay on one line, the errors take what is left
        table.add_column(column, justify="left" if left else "right", no_wrap=column != "errors")
    for key, result in rows.items():
        crash = result.get("crash") or {}
        switchover = result.get("switchover") or {}
        ratio = size_ratios.get(key, {})
        lost = ",".join(str(r["lost"]) for r in crash.get("runs", []) if "lost" in r) or "-"
        table.add_row(
            f"{result['system']} {result['shape']['nodes']}n",
            _database(result) + (" +pgbench" if result["shape"]["load"] else ""),
            _cell((crash.get("summary") or {}).get("first_write_s")),
            f"{ratio['crash']:.2f}" if ratio.get("crash") else "-",
            _bytes((crash.get("summary") or {}).get("worst_replay_lag_bytes")),
            _cell((switchover.get("summary") or {}).get("gap_s")),
            f"{ratio['switchover']:.2f}" if ratio.get("switchover") else "-",
            _bytes((switchover.get("summary") or {}).get("worst_replay_lag_bytes")),
            f"{lost}|{switchover.get('lost', '-')}",
            "; ".join(filter(None, (_errors(crash), _errors(switchover))))[:200],
        )
    console.print(table)
