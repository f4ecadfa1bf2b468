"""join.py's rejoin: the active's host dies under a write load, a standby takes over, and the
old active comes back as a streaming standby (pg_rewind, or a re-clone when rewind is not
possible), then is re-cloned (``nodes reinit``) under the same load; ``--rejoins`` times.

Each sample keeps the steps of both (:mod:`_rewind_steps`): from the returning node's agent
log and PostgreSQL log and the new active's checkpoints, so that a slow one says where its
time went; with ``--logs`` the three logs' windows are copied there too.
"""

from __future__ import annotations

import contextlib
import shutil
import statistics
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import _rewind_steps as steps_of
import psycopg
from _cli_cluster import HACORE, BenchNode, socket_dsn
from _cluster import PG_BIN
from rich.console import Console
from rich.table import Table

from hacore.testing.local_cluster import LocalNode
from hacore.testing.procs import wait_for

#: pgbench clients of the write load during the rejoin
LOAD_CLIENTS = 2
#: seconds of marks kept past the moment the benchmark saw the node stream
_TAIL = 1.0
#: the rewind's phases as the report names them
PHASES = (
    ("agent_up_s", "agent up"),
    ("to_job_s", "to the job"),
    ("before_recovery_s", "stop, slot, password, CHECKPOINT"),
    ("crash_recovery_s", "crash recovery"),
    ("pg_rewind_s", "pg_rewind"),
    ("to_standby_start_s", "to the standby's start"),
    ("standby_start_s", "standby start, until it streams"),
    ("seen_s", "until the benchmark saw it"),
)


class Cluster(Protocol):
    """What of join.py's bench the rejoin uses."""

    nodes: dict[str, BenchNode]
    active: str

    def log(self, line: str) -> None: ...
    def refresh_active(self) -> str: ...
    def streaming_pid(self, name: str) -> int | None: ...
    def wait_streaming(self, name: str, began: float, other_than: int | None = None) -> float: ...
    def cli(self, *args: str) -> str: ...


def query(node: LocalNode, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with contextlib.closing(
        psycopg.connect(socket_dsn(node), autocommit=True, connect_timeout=3)
    ) as conn:
        cursor = conn.execute(sql, params)
        return list(cursor.fetchall()) if cursor.description else []


def pg_log(node: LocalNode) -> Path:
    return node.data_dir / "replication" / "log" / "postgresql.log"


def write_load(node: LocalNode) -> subprocess.Popen[bytes]:
    argv = [str(PG_BIN / "pgbench"), "-n", "-c", str(LOAD_CLIENTS), "-j", "1", "-T", "3600"]
    argv += ["-h", str(node.socket_dir), "-p", str(node.pg_port), "-U", "postgres", "postgres"]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


class Window:
    """The returning node's agent and PostgreSQL logs and the new active's PostgreSQL log
    from now on."""

    def __init__(self, node: LocalNode, active: str, active_node: LocalNode) -> None:
        self.paths = {
            "agent": node.log_path,
            "pg": pg_log(node),
            f"pg {active}": pg_log(active_node),
        }
        self.active = active
        self.offsets = {key: steps_of.size(path) for key, path in self.paths.items()}
        self.wall = time.time()
        self.began = time.monotonic()

    def texts(self) -> dict[str, str]:
        return {k: steps_of.read_from(p, self.offsets[k]) for k, p in self.paths.items()}

    def steps(self, until: float) -> list[steps_of.Mark]:
        texts = self.texts()
        found = steps_of.timeline(
            agent_log=texts["agent"],
            pg_log=texts["pg"],
            active_log=texts[f"pg {self.active}"],
            active=self.active,
            since=self.wall,
        )
        return [m for m in found if m[0] <= until]

    def save(self, directory: Path, prefix: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for key, text in self.texts().items():
            (directory / f"{prefix}-{key.replace(' ', '-')}.log").write_text(text)


def rejoin(bench: Cluster, index: int, logs: Path | None) -> dict[str, Any]:
    """One sample: the kill, the takeover, the rewind and the re-clone, with their steps."""
    old = bench.refresh_active()
    for name in bench.nodes:
        if name != old:
            bench.wait_streaming(name, time.monotonic())
    load = write_load(bench.nodes[old])
    result: dict[str, Any] = {"node": old}
    try:
        time.sleep(3.0)
        killed = bench.nodes[old].crash(store=False)
        died = time.monotonic()
        bench.log(f"rejoin {index}: killed {old}: {', '.join(killed)}")
        survivors = [n for n in bench.nodes if n != old]

        def promoted() -> str | None:
            for name in survivors:
                with contextlib.suppress(psycopg.Error):
                    if query(bench.nodes[name], "SELECT NOT pg_is_in_recovery()")[0][0]:
                        return name
            return None

        bench.active = str(wait_for(promoted, 900.0, interval=0.02, what="a new active"))
        result["takeover_s"] = time.monotonic() - died
        result["new_active"] = bench.active
        bench.log(f"{bench.active} took over after {result['takeover_s']:.2f} s")
    finally:
        stop(load)
    load = write_load(bench.nodes[bench.active])
    try:
        time.sleep(2.0)
        node, active = bench.nodes[old], bench.nodes[bench.active]
        result["wal_bytes"] = {old: _wal_bytes(node), bench.active: _wal_bytes(active)}
        window = Window(node, bench.active, active)
        node.spawn_agent(HACORE)
        result["rewind_s"] = bench.wait_streaming(old, window.began)
        result["load"] = round(_load(), 2)
        time.sleep(_TAIL)
        steps = window.steps(result["rewind_s"] + _TAIL)
        result["how"] = _how(steps)
        result["rewind_steps"] = steps
        result["rewind_phases"] = steps_of.phases(steps, result["rewind_s"])
        if logs is not None:
            window.save(logs, f"rejoin{index}-{old}-rewind")
        bench.log(
            f"{old} back as a streaming standby in {result['rewind_s']:.2f} s ({result['how']})"
        )
        time.sleep(2.0)
        before = bench.streaming_pid(old)
        window = Window(node, bench.active, active)
        bench.cli("cluster", "nodes", "reinit", old, "--yes", "-o", "json")
        result["reinit_cli_s"] = time.monotonic() - window.began
        result["reclone_s"] = bench.wait_streaming(old, window.began, other_than=before)
        result["reclone_load"] = round(_load(), 2)
        time.sleep(_TAIL)
        result["reclone_steps"] = window.steps(result["reclone_s"] + _TAIL)
        if logs is not None:
            window.save(logs, f"rejoin{index}-{old}-reclone")
        bench.log(f"{old} re-cloned and streaming in {result['reclone_s']:.2f} s")
    finally:
        stop(load)
    return result


def _wal_bytes(node: LocalNode) -> int:
    """What the node's ``pg_wal`` holds (pg_rewind copies the source's whole)."""
    return sum(p.stat().st_size for p in (node.pgdata / "pg_wal").glob("0*") if p.is_file())


def _load() -> float:
    with open("/proc/loadavg") as handle:
        return float(handle.read().split()[0])


def _how(steps: Sequence[steps_of.Mark]) -> str:
    said = [what for _, where, what in steps if where == "agent"]
    if any(w.startswith(("rewind failed", "cloned")) for w in said):
        return "re-cloned"
    if any(w.startswith("pg_rewind done") and "no rewind required" in w for w in said):
        return "pg_rewind (no rewind required)"
    if any(w.startswith("pg_rewind done") for w in said):
        return "pg_rewind"
    return "restarted as a standby (no rewind needed)"


def summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the samples: the rewind, the re-clone, and the rewind's phases."""

    def median(values: list[Any]) -> float | None:
        found = [v for v in values if v is not None]
        return round(statistics.median(found), 3) if found else None

    return {
        "n": len(samples),
        "takeover_s": median([s.get("takeover_s") for s in samples]),
        "rewind_s": median([s.get("rewind_s") for s in samples]),
        "reclone_s": median([s.get("reclone_s") for s in samples]),
        "phases": {
            key: median([(s.get("rewind_phases") or {}).get(key) for s in samples])
            for key, _ in PHASES
        },
    }


def print_rejoins(samples: list[dict[str, Any]], console: Console) -> None:
    """Per sample its steps (time since the agent's start, the gap from the mark before),
    then the rewind's phases side by side, then the medians."""
    for i, sample in enumerate(samples, 1):
        wal = sample.get("wal_bytes") or {}
        console.print(
            f"rejoin {i} of {sample.get('node')} after its host died under a pgbench load: "
            f"takeover by {sample.get('new_active')} {sample.get('takeover_s', 0):.2f} s; back "
            f"as a streaming standby {sample.get('rewind_s', 0):.2f} s ({sample.get('how')}); "
            f"re-clone (nodes reinit) {sample.get('reclone_s', 0):.2f} s; load "
            f"{sample.get('load')} / {sample.get('reclone_load')}; pg_wal before the rewind "
            + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in wal.items()),
            highlight=False,
        )
        for key, title in (("rewind_steps", "rewind"), ("reclone_steps", "re-clone")):
            _steps_table(sample.get(key) or [], f"rejoin {i}: the {title}'s steps", console)
    if not samples:
        return
    table = Table(title="the rewind's phases (seconds)")
    table.add_column("phase")
    for i in range(1, len(samples) + 1):
        table.add_column(str(i), justify="right")
    table.add_column("median", justify="right")
    rows = [(key, label) for key, label in PHASES]
    rows += [("checkpoint_wait_s", "of which waiting for the new active's CHECKPOINT")]
    rows += [("checkpoint_total_s", "that CHECKPOINT itself")]
    rows += [("replayed_bytes", "WAL replayed by the crash recovery (MiB)")]
    rows += [("job_failures", "failed jobs")]
    for key, label in rows:
        values = [(s.get("rewind_phases") or {}).get(key) for s in samples]
        found = [v for v in values if v is not None]
        cells = [*values, statistics.median(found) if found else None]
        table.add_row(label, *(_cell(key, v) for v in cells))
    table.add_row("back as a streaming standby", *(_cell("", s.get("rewind_s")) for s in samples))
    table.add_row("re-clone", *(_cell("", s.get("reclone_s")) for s in samples))
    console.print(table)
    total = summary(samples)
    console.print(
        f"medians over {total['n']}: rewind {total['rewind_s']} s, re-clone "
        f"{total['reclone_s']} s, takeover {total['takeover_s']} s",
        highlight=False,
    )


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "replayed_bytes":
        return f"{value / 2**20:.0f}"
    if key == "job_failures":
        return f"{value:g}"
    return f"{value:.2f}"


def _steps_table(marks: Sequence[steps_of.Mark], title: str, console: Console) -> None:
    table = Table(title=title)
    for column in ("at", "+", "where", "what"):
        table.add_column(column, justify="right" if column in ("at", "+") else "left")
    previous = 0.0
    for at, where, what in marks:
        table.add_row(f"{at:.3f}", f"{at - previous:.3f}", where, what[:140])
        previous = at
    console.print(table)


def remove_data(root: Path) -> None:
    """With ``--keep``: the logs stay, the data directories (GiBs) go."""
    for pgdata in root.glob("*/replication/pgdata"):
        shutil.rmtree(pgdata, ignore_errors=True)
