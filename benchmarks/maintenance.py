"""Maintenance with no failover: a restart-only PostgreSQL parameter and an agent upgrade.

On a paused 3-node cluster under a writer: a PostgreSQL parameter that needs a restart,
and an agent upgrade on the active.

    python benchmarks/maintenance.py [--parameter max_connections --value 60] [--json] [--keep]

Three real nodes (``hacore agent run``, managed etcd, PostgreSQL, TLS), formed with the real
CLI (``cluster start``, ``cluster join``), synchronous mode on. A writer process inserts one
row every 10 ms through every node's socket (``target_session_attrs=read-write``) for the
whole run. Each step is done with the commands an operator types, and timed:

1. ``hacore cluster pause --wait``;
2. ``hacore cluster config set parameters.NAME=VALUE`` (a parameter that needs a server
   restart), then waiting until every node reports ``pending_restart``;
3. ``hacore cluster nodes restart NAME`` of each standby, then ``--in-place`` of the active;
   the new value is then read with ``SHOW`` on every node;
4. the agent upgrade on the active: its agent is stopped (while paused nobody takes over),
   a *different build* of hacore (this tree with a local version label, built as a wheel
   beforehand, its dependencies pinned to this virtualenv's) is installed into a second
   virtualenv, and the agent is started from there; the version the node then reports
   (``nodes list``) is shown;
5. ``hacore cluster resume``, then a few seconds of normal running.

The report is one line per step: its duration, the failovers during it (changes of the
active in ``hacore cluster history``), the writer's longest gap between acknowledged writes,
the writes acknowledged during it and how many of those are missing at the end. A benchmark:
it asserts nothing about the numbers, but exits 1 when a failover happened, an acknowledged
row is missing or a step failed, so its output can be trusted as it reads.

Root only (PostgreSQL runs as the ``postgres`` user). Building the second virtualenv needs
the package index (pip), or ``--upgrade-venv`` naming one prepared beforehand.
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
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import psycopg
from _cli_cluster import WAIT, BenchNode, CliCluster, Failed, probe, socket_dsn
from _cluster import prepare_workdir
from _report import bench_console, machine, stack_versions
from _writer import Ack, Writer
from rich.console import Console
from rich.table import Table

import hacore
from hacore.config.timing import TimingSettings
from hacore.testing.local_cluster import LocalNode
from hacore.testing.procs import wait_for

REPO = Path(__file__).resolve().parents[1]
TABLE = "maintenance_writes"
#: the parameters the cluster starts with (the step changes one of them)
PARAMETERS = {"shared_buffers": "32MB", "max_connections": "50"}
#: writes acknowledged before the first step, so the writer is known to be steady
WARM_ACKS = 100
#: seconds of normal running watched after resume
AFTER_RESUME = 5.0


@attrs.define
class Step:
    name: str
    started: float
    ended: float = 0.0
    failovers: int = 0
    note: str = ""
    error: str | None = None
    #: the history entries recorded during the step
    entries: list[dict[str, Any]] = attrs.field(factory=list)


class Run(CliCluster):
    """The cluster, the writer, the CLI and the steps' record."""

    def __init__(self, root: Path, log: Callable[[str], None], ttl: float | None) -> None:
        super().__init__(root, log, "maint")
        self.ttl = ttl
        self.nodes = {name: BenchNode(name, root) for name in ("n1", "n2", "n3")}
        self.writer: Writer | None = None
        self.steps: list[Step] = []
        self.history_seen = 0

    def view(self) -> dict[str, Any]:
        data: dict[str, Any] = self.cli_json("cluster", "nodes", "list", timeout=30)
        return data

    def rows(self) -> dict[str, dict[str, Any]]:
        return {row["name"]: row for row in self.view()["nodes"]}

    def history(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self.cli_json("cluster", "history", timeout=30)["history"]
        return entries

    # -- forming the cluster ---------------------------------------------------------------

    def write_config(self, node: BenchNode) -> None:
        node.write_config(
            cluster="maintenance",
            namespace=self.namespace,
            failover={"synchronous_mode": "on"},
            replication={"parameters": dict(PARAMETERS)},
            **({"timing": {"ttl": self.ttl}} if self.ttl else {}),
        )

    def form(self) -> None:
        first = self.nodes["n1"]
        for node in self.nodes.values():
            self.write_config(node)
        self.start_agent(first)
        self.start_cluster(first)
        self.log(f"n1 founded the cluster (CA {self.ca_fingerprint[:17]}...)")
        for name in ("n2", "n3"):
            node = self.nodes[name]
            self.start_agent(node)
            self.cli_json(*node.join_arguments(first), "--ca-fingerprint", self.ca_fingerprint)
            self.log(f"{name} joined")
        with contextlib.closing(psycopg.connect(socket_dsn(first), autocommit=True)) as conn:
            conn.execute(f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY)")
        wait_for(self.converged, WAIT, interval=0.5, what="one active, two standbys streaming")

    def converged(self) -> bool:
        rows = self.rows()
        states = sorted(row["state"] for row in rows.values())
        streaming = all(
            row["replication"] == "streaming" for row in rows.values() if row["state"] == "standby"
        )
        return states == ["active", "standby", "standby"] and streaming and bool(self.sync())

    def active(self) -> str:
        status = self.cli_json("cluster", "status", timeout=30)
        return str(status["active"])

    def sync(self) -> list[str]:
        active = self.nodes[self.active()]
        with contextlib.closing(psycopg.connect(socket_dsn(active), autocommit=True)) as conn:
            rows = conn.execute(
                "SELECT application_name FROM pg_stat_replication"
                " WHERE sync_state IN ('sync', 'quorum')"
            ).fetchall()
        return [str(r[0]) for r in rows]

    # -- steps -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[Step]:
        step = Step(name, time.monotonic())
        self.steps.append(step)
        self.log(f"step: {name}")
        try:
            yield step
        except Exception as exc:
            step.error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            step.ended = time.monotonic()
            try:
                entries = self.history()
            except Exception as exc:
                # counted by the next step that reads it, and by the final reading
                step.note += f" (history unreadable: {exc})"
            else:
                step.entries = entries[self.history_seen :]
                self.history_seen = len(entries)
                step.failovers = sum(1 for e in step.entries if _changed_active(e))
            self.log(f"  {step.ended - step.started:.2f} s {step.note}")

    def setting(self, node: BenchNode, name: str) -> str:
        with contextlib.closing(psycopg.connect(socket_dsn(node), autocommit=True)) as conn:
            row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
        return str(row[0]) if row else "?"

    def maintenance(self, parameter: str, value: str, new_hacore: Path, wheel: Path | None) -> None:
        """The steps; ``wheel`` None: ``new_hacore`` is installed already."""
        active = self.active()
        standbys = [name for name in self.nodes if name != active]
        with self.step("pause") as step:
            self.cli("cluster", "pause", "--reason", "maintenance benchmark", "--wait")
            step.note = "every agent reports the pause"

        with self.step(f"config set parameters.{parameter}={value}") as step:
            answer = self.cli_json("cluster", "config", "set", f"parameters.{parameter}={value}")
            wait_for(
                lambda: all(r["pending_restart"] for r in self.rows().values()),
                WAIT,
                interval=0.5,
                what="every node reporting pending_restart",
            )
            step.note = (
                f"revision {answer.get('revision')}; pending_restart on every node; "
                f"{parameter} still {self.setting(self.nodes[active], parameter)}"
            )

        for name in [*standbys, active]:
            in_place = ["--in-place"] if name == active else []
            label = f"nodes restart {name}{' --in-place' if in_place else ''}"
            with self.step(label + (" (active)" if in_place else "")) as step:
                self.cli("cluster", "nodes", "restart", name, *in_place, "-o", "json")
                now = self.setting(self.nodes[name], parameter)
                step.note = f"{parameter} = {now} on {name}"
                if now != value:
                    raise Failed(f"{name} runs {parameter} = {now} after its restart, not {value}")
        live = {name: self.setting(node, parameter) for name, node in self.nodes.items()}
        pending = [n for n, r in self.rows().items() if r["pending_restart"]]
        self.log(f"  {parameter} now: {live}; pending_restart: {pending or 'none'}")
        if set(live.values()) != {value} or pending:
            raise Failed(f"after the restarts: {parameter} {live}, pending_restart {pending}")

        node = self.nodes[active]
        down = 2 * (self.ttl or TimingSettings().ttl)
        with self.step(f"stop the agent on {active} (active)") as step:
            postmaster = node.postmaster()
            assert node.proc is not None
            node.proc.stop(signal.SIGTERM, timeout=60)
            stopped = time.monotonic()
            step.note = f"SIGTERM; database {_kept(node, postmaster)}"
        if wheel is not None:
            with self.step("install the new build (pip)") as step:
                pip = new_hacore.parent / "pip"
                _run([str(pip), "install", "--quiet", "--no-deps", str(wheel)])
                step.note = f"{wheel.name} into the second virtualenv"
        with self.step(f"agent down past a lease ({down:g} s since its stop)") as step:
            time.sleep(max(0.0, down - (time.monotonic() - stopped)))
            others = {n: probe(self.nodes[n]) for n in standbys}
            step.note = (
                f"agent down {time.monotonic() - stopped:.1f} s; database "
                f"{_kept(node, postmaster)}; /status "
                + ", ".join(f"{n} {code}" for n, code in others.items())
            )
            if node.postmaster() != postmaster or 200 in others.values():
                raise Failed(step.note)

        with self.step(f"start the new agent on {active}") as step:
            node.spawn_agent([str(new_hacore)])
            wait_for(lambda: probe(node) == 200, WAIT, interval=0.1, what=f"{active} /status 200")
            answered = time.monotonic() - step.started
            expected = _version_of(new_hacore)

            def back() -> bool:
                row = self.rows().get(active) or {}
                return row.get("state") == "active" and row.get("version") == expected

            wait_for(back, WAIT, interval=0.5, what=f"{active} active again on hacore {expected}")
            versions = {n: r.get("version") for n, r in self.rows().items()}
            step.note = f"/status 200 after {answered:.1f} s; nodes list: " + ", ".join(
                f"{n} {v}" for n, v in sorted(versions.items())
            )

        with self.step("resume") as step:
            self.cli("cluster", "resume")
            step.note = f"active: {self.active()}"

        with self.step(f"after resume ({AFTER_RESUME:g} s)") as step:
            time.sleep(AFTER_RESUME)
            step.note = f"active: {self.active()}"

    # -- the end -------------------------------------------------------------------------

    def committed(self) -> set[int]:
        active = self.nodes[self.active()]
        with contextlib.closing(psycopg.connect(socket_dsn(active), autocommit=True)) as conn:
            return {int(r[0]) for r in conn.execute(f"SELECT id FROM {TABLE}").fetchall()}

    def cleanup(self) -> None:
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                node.cleanup()


# -- helpers ---------------------------------------------------------------------------------


def _writer_dsn(nodes: Sequence[LocalNode]) -> str:
    """Every node's socket, as root over peer authentication; libpq picks the writable one."""
    return (
        f"host={','.join(str(n.socket_dir) for n in nodes)} "
        f"port={','.join(str(n.pg_port) for n in nodes)} user=postgres dbname=postgres "
        "target_session_attrs=read-write connect_timeout=2"
    )


def _kept(node: LocalNode, postmaster: int | None) -> str:
    return "still running" if postmaster and node.postmaster() == postmaster else "NOT running"


def _changed_active(entry: dict[str, Any]) -> bool:
    """A history entry that is a change of the active (not the first start, not the same
    node taking its own lease back after its agent restarted)."""
    return entry.get("previous") not in (None, entry.get("node"))


def _run(argv: Sequence[str], cwd: Path | None = None) -> str:
    done = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise Failed(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout


def _version_of(hacore_cli: Path) -> str:
    out = _run([str(hacore_cli), "--version"]).strip()
    return out.rsplit(" ", 1)[-1]


def build_upgrade(work: Path, label: str, log: Callable[[str], None]) -> tuple[Path, Path]:
    """This tree as a wheel whose version carries the local label ``label``, and a second
    virtualenv holding its dependencies (pinned to this virtualenv's versions) but not hacore
    itself yet: the step installs it. Returns (the new ``hacore`` script, the wheel)."""
    source = work / "source"
    source.mkdir(parents=True)
    for name in ("hacore", "hacore_plugins"):
        shutil.copytree(
            REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md"):
        shutil.copy2(REPO / name, source / name)
    init = source / "hacore" / "__init__.py"
    old = f'__version__ = "{hacore.__version__}"'
    text = init.read_text()
    if old not in text:
        raise Failed(f"cannot find {old} in hacore/__init__.py")
    version = f"{hacore.__version__}+{label}"
    init.write_text(text.replace(old, f'__version__ = "{version}"'))
    wheels = work / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "-w", str(wheels), str(source)]
    )  # fmt: skip
    wheel = next(wheels.glob("hacore-*.whl"))
    log(f"built {wheel.name}")
    frozen = _run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"])
    constraints = work / "constraints.txt"
    constraints.write_text(
        "".join(line + "\n" for line in frozen.splitlines() if line and line[0] not in "#-")
    )
    venv = work / "venv-upgrade"
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", str(venv)])
    pip = str(venv / "bin" / "pip")
    _run([pip, "install", "--quiet", "-c", str(constraints), f"{wheel}[all]"])
    _run([pip, "uninstall", "--quiet", "--yes", "hacore"])
    log(f"second virtualenv ready: {venv} (its dependencies; hacore {version} to install)")
    return venv / "bin" / "hacore", wheel


# -- the report ------------------------------------------------------------------------------


def longest_gap(acks: Sequence[Ack], start: float, end: float) -> float:
    """The longest interval between consecutive acknowledged writes overlapping
    [start, end]: a wait that began before the step and ended in it counts."""
    gap = 0.0
    for before, after in itertools.pairwise(acks):
        if after.at > start and before.at < end:
            gap = max(gap, after.at - before.at)
    return gap


def summarise(
    steps: Sequence[Step], acks: Sequence[Ack], committed: set[int]
) -> list[dict[str, Any]]:
    rows = []
    for step in steps:
        during = [a for a in acks if step.started <= a.at <= step.ended]
        rows.append(
            {
                "step": step.name,
                "duration_s": round(step.ended - step.started, 2),
                "failovers": step.failovers,
                "longest_gap_s": round(longest_gap(acks, step.started, step.ended), 3),
                "acked": len(during),
                "lost": sum(1 for a in during if a.id not in committed),
                "note": step.note,
                "error": step.error,
                "history": step.entries,
            }
        )
    return rows


def print_table(report: dict[str, Any], console: Console) -> None:
    m = report["machine"]
    console.print(
        f"machine: {m['cores']} cores, {m['memory_gib']} GiB, {m['platform']}, "
        f"Python {m['python']}, load {m['load_average']}",
        soft_wrap=True,
        highlight=False,
    )
    v = report["versions"]
    console.print(
        f"versions: hacore {v['hacore']} -> {v.get('upgrade')}; {v['postgresql']}; {v['etcd']}",
        soft_wrap=True,
        highlight=False,
    )
    console.print(f"cluster: {report['cluster']}", soft_wrap=True, highlight=False)
    table = Table(title="maintenance on a paused cluster, a writer running throughout")
    for column in ("step", "duration s", "failovers", "longest gap s", "acked", "lost", "what"):
        table.add_column(column, overflow="fold")
    for row in report["steps"]:
        table.add_row(
            row["step"],
            f"{row['duration_s']:.2f}",
            str(row["failovers"]),
            f"{row['longest_gap_s']:.3f}",
            str(row["acked"]),
            str(row["lost"]),
            row["error"] or row["note"],
        )
    t = report["totals"]
    table.add_row(
        "whole run", f"{t['duration_s']:.2f}", str(t["failovers"]), f"{t['longest_gap_s']:.3f}",
        str(t["acked"]), str(t["lost"]), f"writer errors: {t['writer_errors']}",
    )  # fmt: skip
    console.print(table)
    entries = [(row["step"], e) for row in report["steps"] for e in row["history"]]
    for step, entry in entries:
        console.print(
            f"history during '{step}': {entry.get('previous')} -> {entry.get('node')} "
            f"({entry.get('reason')}, token {entry.get('token')})",
            soft_wrap=True,
            highlight=False,
        )
    if not entries:
        console.print("cluster history: no new entry during the steps")
    console.print(report["verdict"], soft_wrap=True, highlight=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parameter", default="max_connections", help="needs a restart")
    parser.add_argument("--value", default="60", help="its new value (the cluster starts at 50)")
    parser.add_argument("--ttl", type=float, default=None, help="timing.ttl (default: hacore's)")
    parser.add_argument(
        "--upgrade-venv",
        type=Path,
        default=None,
        help="a virtualenv holding another build of hacore and its dependencies (skips "
        "building one; the step then reinstalls nothing)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run it as root: PostgreSQL runs as the postgres user")

    console, log = bench_console(args.json)

    started = time.monotonic()
    root = prepare_workdir(Path(tempfile.mkdtemp(prefix="hacore-maintenance-bench-")))
    run = Run(root, log, args.ttl)
    report: dict[str, Any] = {
        "machine": machine(),
        "versions": stack_versions(),
    }
    failure: str | None = None
    changes: list[dict[str, Any]] | None = None
    acks: list[Ack] = []
    committed: set[int] = set()
    try:
        if args.upgrade_venv is not None:
            new_hacore, wheel = args.upgrade_venv / "bin" / "hacore", None
        else:
            prep = time.monotonic()
            new_hacore, wheel = build_upgrade(root / "upgrade", f"maint{int(time.time())}", log)
            log(f"the upgrade was prepared in {time.monotonic() - prep:.1f} s (not a step)")
        report["versions"]["upgrade"] = (
            _version_of(new_hacore) if wheel is None else wheel.name.split("-")[1]
        )
        form = time.monotonic()
        run.form()
        active = run.active()
        report["cluster"] = (
            f"3 nodes, managed etcd, synchronous mode on, {PARAMETERS}; active {active}, "
            f"synchronous standby {run.sync()}; formed in {time.monotonic() - form:.1f} s"
        )
        run.history_seen = history_start = len(run.history())
        run.writer = Writer(_writer_dsn(list(run.nodes.values())), TABLE).start()
        run.writer.wait_acks(WARM_ACKS, 60)
        try:
            run.maintenance(args.parameter, args.value, new_hacore, wheel)
        except Exception as exc:
            failure = f"{type(exc).__name__}: {exc}"
            log(f"failed: {failure}")
        time.sleep(1.0)
        acks = run.writer.stop()
        committed = run.committed()
        # the authority for the verdict: every entry since the first step, read at the end
        changes = [e for e in run.history()[history_start:] if _changed_active(e)]
    except Exception as exc:
        failure = failure or f"{type(exc).__name__}: {exc}"
        log(f"failed: {failure}")
        if run.writer is not None:
            acks = run.writer.stop()
    finally:
        run.cleanup()
        if args.keep:
            log(f"work directory kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    report.setdefault("cluster", "not formed")
    steps = run.steps
    report["steps"] = summarise(steps, acks, committed)
    first = steps[0].started if steps else 0.0
    last = steps[-1].ended if steps else 0.0
    report["totals"] = {
        "duration_s": round(last - first, 2),
        "failovers": len(changes) if changes is not None else None,
        "longest_gap_s": round(longest_gap(acks, first, last), 3),
        "acked": len(acks),
        "lost": sum(1 for a in acks if a.id not in committed) if committed else None,
        "writer_errors": len(run.writer.errors) if run.writer is not None else 0,
    }
    problems = [failure] if failure else []
    if report["totals"]["failovers"]:
        problems.append(f"{report['totals']['failovers']} failover(s)")
    if report["totals"]["lost"]:
        problems.append(f"{report['totals']['lost']} acknowledged row(s) missing")
    if not committed:
        problems.append("the final rows could not be read")
    if changes is None:
        problems.append("the history could not be read at the end")
    report["verdict"] = (
        "FAILED: " + "; ".join(problems)
        if problems
        else "OK: no failover, every acknowledged row is there"
    )
    report["wall_s"] = round(time.monotonic() - started, 1)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report, console)
        console.print(f"[dim]wall time {report['wall_s']} s[/]")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
