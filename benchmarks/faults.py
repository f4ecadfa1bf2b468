"""Every fault scenario of ``tests/fault/``, K times, summarised as one table.

    sudo .venv/bin/python benchmarks/faults.py [--runs K] [--scenarios isolate,frozen,...]
                                               [--ttl S] [--profile fast] [--json] [--keep]

Each run is one ``pytest tests/fault`` (as root: the scenarios use network namespaces), with
``HACORE_FAULT_VERDICTS`` set: every scenario's checker verdict (``fault_cluster.judge``, the
numbers the tests assert on) is appended to a JSON-lines file, whatever the test's outcome.
``test_checker.py`` and ``test_netns.py`` test the harness itself and judge no scenario: they
are left out. The table gives, per scenario (the verdict's name), medians and worst values over
the runs: acknowledged writes, lost ones (the writer's rows plus the poller's acknowledged
probe rows), evidence of two nodes writable / acknowledging / answering ``/status`` 200 at
once, the fence time (the old active first seen not writable), the takeover (another node
first seen acknowledging), the longest stall of the writer and the handover gap. Tests that
failed are listed under the table, per run.

A benchmark, not a test: it prints what the scenarios measured and asserts nothing; the tests
assert the bounds (``docs/testing.md``). A run of the whole directory takes 10 to 15 minutes
on a quiet two-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from _report import bench_console, machine
from rich.console import Console
from rich.table import Table

import hacore
from hacore.config.timing import TIMING_PROFILES

ROOT = Path(__file__).resolve().parents[1]
FAULT_DIR = ROOT / "tests" / "fault"
#: the harness's own tests: no scenario, no verdict
NOT_SCENARIOS = ("test_checker.py", "test_netns.py")


def pytest_argv(scenarios: list[str], junit: Path) -> list[str]:
    argv = [sys.executable, "-m", "pytest", str(FAULT_DIR), "-q", "-p", "no:cacheprovider"]
    argv += [f"--junitxml={junit}"]
    for name in NOT_SCENARIOS:
        argv += ["--ignore", str(FAULT_DIR / name)]
    if scenarios:
        argv += ["-k", " or ".join(scenarios)]
    return argv


def run_once(
    index: int,
    scenarios: list[str],
    work: Path,
    log: Callable[[str], None],
    ttl: float | None = None,
    profile: str | None = None,
) -> dict[str, Any]:
    """One pytest run; its verdicts, failed tests and exit code."""
    verdicts = work / f"verdicts-{index}.jsonl"
    junit = work / f"junit-{index}.xml"
    output = work / f"pytest-{index}.log"
    env = {**os.environ, "HACORE_FAULT_VERDICTS": str(verdicts)}
    if ttl is not None:
        env["HACORE_FAULT_TTL"] = str(ttl)
    if profile is not None:
        env["HACORE_FAULT_PROFILE"] = profile
    started = time.monotonic()
    with output.open("w") as out:
        code = subprocess.run(
            pytest_argv(scenarios, junit), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        ).returncode
    rows = (
        [json.loads(line) for line in verdicts.read_text().splitlines()]
        if verdicts.exists()
        else []
    )
    failed = failed_tests(junit)
    log(
        f"run {index}: pytest exited {code} after {time.monotonic() - started:.0f}s, "
        f"{len(rows)} verdicts, {len(failed)} failed"
    )
    return {"exit": code, "verdicts": rows, "failed": failed, "log": str(output)}


def failed_tests(junit: Path) -> list[str]:
    if not junit.exists():
        return []
    found = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            found.append(f"{case.get('classname', '')}::{case.get('name', '')}")
    return found


def _numbers(values: Iterable[float | int | None]) -> list[float]:
    return [float(v) for v in values if v is not None]


def summarise(verdicts: list[dict[str, Any]]) -> dict[str, Any]:
    """Per scenario: the runs, and (median, worst) of each measure."""

    def pair(values: Iterable[float | int | None], worst: Callable[[list[float]], float]) -> Any:
        found = _numbers(values)
        return None if not found else [statistics.median(found), worst(found)]

    by: dict[str, list[dict[str, Any]]] = {}
    for verdict in verdicts:
        by.setdefault(verdict["scenario"], []).append(verdict)
    table = {}
    for scenario, rows in by.items():
        table[scenario] = {
            "runs": len(rows),
            "acked": pair((r["acked"] for r in rows), min),
            "lost": pair((len(r["lost"]) + len(r.get("lost_probes", [])) for r in rows), max),
            "overlaps": {
                kind: max(len(r.get(f"overlaps_{kind}", [])) for r in rows)
                for kind in ("rw", "ack", "status")
            },
            "unresolved": max(len(r.get("unresolved", [])) for r in rows),
            "fence_s": pair((r["fence_s"] for r in rows), max),
            "last_writable_old_s": pair((r["last_writable_old_s"] for r in rows), max),
            "takeover_s": pair((r["takeover_s"] for r in rows), max),
            "longest_stall_s": pair((r["longest_stall_s"] for r in rows), max),
            "handover_gap_s": pair((r["handover_gap_s"] for r in rows), min),
        }
    return table


def _cell(value: Any, unit: str = "s") -> str:
    if value is None:
        return "-"
    median, worst = value
    if unit == "s":
        return f"{median:.2f} / {worst:.2f}"
    return f"{median:g} / {worst:g}"


def print_table(table: dict[str, Any], console: Console) -> None:
    out = Table(title="fault scenarios (median / worst over the runs)")
    for column in (
        "scenario", "runs", "acked", "lost", "overlaps rw/ack/status", "unresolved",
        "fence", "old last writable", "takeover", "longest stall", "handover gap",
    ):  # fmt: skip
        out.add_column(column, justify="left" if column == "scenario" else "right")
    for scenario, row in sorted(table.items()):
        overlaps = row["overlaps"]
        out.add_row(
            scenario,
            str(row["runs"]),
            _cell(row["acked"], ""),
            _cell(row["lost"], ""),
            f"{overlaps['rw']}/{overlaps['ack']}/{overlaps['status']}",
            str(row["unresolved"]),
            _cell(row["fence_s"]),
            _cell(row["last_writable_old_s"]),
            _cell(row["takeover_s"]),
            _cell(row["longest_stall_s"]),
            _cell(row["handover_gap_s"]),
        )
    console.print(out)
    console.print(
        "Times in seconds after the fault. Worst: fewest acked, most lost, longest times, "
        "smallest handover gap; overlaps and unresolved probes: the most in one run."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="pytest runs of tests/fault")
    parser.add_argument(
        "--scenarios",
        default="",
        help="comma-separated substrings of test names (pytest -k, or-ed); default: all",
    )
    parser.add_argument(
        "--ttl",
        type=float,
        default=None,
        help="run the scenarios at this timing.ttl instead of the harness's 6 s "
        "(e.g. 5, the product's default)",
    )
    parser.add_argument(
        "--profile",
        default=None,
        help="run the scenarios with this timing.profile (e.g. fast: its ttl, loop_wait, "
        "retry_timeout, safety_margin and managed etcd timeouts)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--keep", action="store_true", help="keep the pytest logs and verdicts")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if os.geteuid() != 0:
        parser.error("the fault scenarios need root (network namespaces)")
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]

    console, log = bench_console(args.json)

    work = Path(tempfile.mkdtemp(prefix="hacore-faults-bench-"))
    runs = []
    try:
        for index in range(1, args.runs + 1):
            runs.append(run_once(index, scenarios, work, log, args.ttl, args.profile))
    finally:
        if args.keep:
            log(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    verdicts = [v for run in runs for v in run["verdicts"]]
    report = {
        "machine": machine(),
        "hacore": hacore.__version__,
        "runs": args.runs,
        "ttl": args.ttl or TIMING_PROFILES[args.profile or "default"].ttl,
        "profile": args.profile or "default",
        "scenarios": scenarios or "all",
        "table": summarise(verdicts),
        "failed": {i + 1: run["failed"] for i, run in enumerate(runs)},
        "exit_codes": [run["exit"] for run in runs],
    }
    if args.json:
        print(json.dumps({**report, "verdicts": verdicts}, indent=2, default=str))
        return 0
    host = report["machine"]
    console.print(
        f"{host['cores']} cores, {host['memory_gib']} GiB, {host['platform']}, Python "
        f"{host['python']}, load {host['load_average']}; hacore {report['hacore']}; "
        f"{args.runs} run(s) of tests/fault at ttl {report['ttl']:g} s, "
        f"profile {report['profile']}"
        f"{'' if not scenarios else ' -k ' + repr(' or '.join(scenarios))}",
        highlight=False,
    )
    print_table(report["table"], console)
    for index, failed in report["failed"].items():
        for name in failed:
            console.print(f"run {index}: FAILED {name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
