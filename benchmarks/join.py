"""A join at disk speed, and a rejoin without re-cloning, on a database of a given size.

    python benchmarks/join.py [--scale 70] [--samples 5] [--rejoins 1] [--no-rejoin] [--logs DIR]
                              [--json] [--keep]

Two real nodes (``hacore agent run``, managed etcd, PostgreSQL 15, TLS on), formed with the
real CLI (``cluster start``, ``cluster join``); ``pgbench -i`` fills the database at
``--scale`` (70 is about 1 GiB). Then, alternating, ``--samples`` times each:

(a) ``hacore cluster join`` of a third node (its agent already running and answering), timed
    from the command's start until ``pg_stat_replication`` on the active shows the node
    streaming (polled every 20 ms), and until the command returns; the join's ``-o json``
    result and progress events give the time of each step. The node is then removed
    (``cluster nodes remove``) and its directory wiped, except after the last sample.
(b) a raw ``pg_basebackup`` of the active over TCP and TLS, as the replication role with a
    member's client certificate (the conninfo the standby streams with), into an empty
    directory beside the nodes' data, with the flags the clone uses (``-X stream -c fast``).

Then (unless ``--no-rejoin``), ``--rejoins`` times, the rejoin (:mod:`_rewind`): under a
``pgbench`` write load on the active, its agent and PostgreSQL are killed (SIGKILL, the store
member spared: with 3 members the store keeps its quorum either way), a standby takes over,
the old active's agent is started again and its return as a streaming standby is timed
(pg_rewind, or a re-clone when rewind is not possible: the agent's log says which); then
``hacore cluster nodes reinit`` of the same node is timed under the same load, until a new
streaming connection of that node shows. Each prints its steps, from the node's agent log and
PostgreSQL log and the new active's checkpoints (:mod:`_rewind_steps`).

Root only (PostgreSQL runs as the ``postgres`` user). A benchmark: it asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from _cli_cluster import HACORE, BenchNode, CliCluster, Failed, probe
from _cluster import PG_BIN, prepare_workdir
from _report import bench_console, machine, spread, stack_versions
from _rewind import print_rejoins, query, rejoin, remove_data
from _rewind import summary as rejoin_summary
from rich.console import Console
from rich.table import Table

from hacore.testing.procs import wait_for

WAIT = 900.0
#: seconds between two looks at pg_stat_replication while a node comes up
POLL = 0.02


class SyncProbe:
    """What another writer of the disk sees meanwhile: 4 KiB written and fdatasync'ed every
    20 ms into a file beside the nodes' data, as etcd syncs its WAL; the longest wait."""

    def __init__(self, root: Path) -> None:
        self.path = root / "sync-probe"
        self.waits: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> SyncProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while not self._stop.wait(0.02):
                began = time.monotonic()
                os.write(fd, b"x" * 4096)
                os.fdatasync(fd)
                self.waits.append(time.monotonic() - began)
        finally:
            os.close(fd)
            self.path.unlink(missing_ok=True)

    def result(self) -> dict[str, Any]:
        waits = sorted(self.waits)
        p99 = waits[int(len(waits) * 0.99)] if waits else None
        return {"sync_max_s": waits[-1] if waits else None, "sync_p99_s": p99}


class Bench(CliCluster):
    """The cluster, the CLI and the samples."""

    def __init__(self, root: Path, log: Callable[[str], None]) -> None:
        super().__init__(root, log, "join", wait=WAIT)
        self.nodes: dict[str, BenchNode] = {}
        self.active = "n1"
        self.failovers: list[str] = []

    def node(self, name: str) -> BenchNode:
        node = self.nodes[name] = BenchNode(name, self.root)
        node.write_config(cluster="joinbench", namespace=self.namespace)
        self.start_agent(node)
        return node

    def form(self) -> None:
        self.start_cluster(self.node("n1"))
        self.join(self.node("n2"))

    # -- measuring -------------------------------------------------------------------------

    def streaming_pid(self, name: str) -> int | None:
        """The pid of ``name``'s streaming walsender on the active (on any other node, should
        the active have changed), or None."""
        others = [self.active, *(n for n in self.nodes if n not in (self.active, name))]
        for other in others:
            try:
                rows = query(
                    self.nodes[other],
                    "SELECT pid FROM pg_stat_replication WHERE application_name = %s"
                    " AND state = 'streaming'",
                    (name,),
                )
            except psycopg.Error:
                continue
            if rows:
                return int(rows[0][0])
        return None

    def refresh_active(self) -> str:
        """The node whose database is writable now; a change is noted (on a busy machine
        the store may time out and the cluster fail over between samples)."""
        for name, node in self.nodes.items():
            with contextlib.suppress(psycopg.Error):
                if query(node, "SELECT NOT pg_is_in_recovery()")[0][0] and name != self.active:
                    self.log(f"the active is now {name} (was {self.active})")
                    self.failovers.append(f"{self.active} -> {name}")
                    self.active = name
        return self.active

    def wait_streaming(self, name: str, began: float, other_than: int | None = None) -> float:
        """Seconds from ``began`` until ``name`` streams from the active (on a walsender other
        than ``other_than``)."""
        deadline = began + WAIT
        while time.monotonic() < deadline:
            pid = self.streaming_pid(name)
            if pid is not None and pid != other_than:
                return time.monotonic() - began
            time.sleep(POLL)
        raise Failed(f"{name} did not stream within {WAIT:.0f} s")

    def join(self, node: BenchNode) -> dict[str, Any]:
        """``cluster join`` of ``node``; its times and the progress the CLI showed."""
        self.refresh_active()
        argv = [*HACORE, *node.join_arguments(self.nodes[self.active])]
        argv += ["--ca-fingerprint", self.ca_fingerprint, "--timeout", str(WAIT), "-o", "json"]
        env = {**os.environ, "HACORE_PROFILE": str(self.profile)}
        events: list[dict[str, Any]] = []
        began, wall = time.monotonic(), time.time()
        proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

        def read_events() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if isinstance(event, dict):
                        event["seen"] = round(time.monotonic() - began, 3)
                        events.append(event)
                        continue
                events.append({"event": "text", "line": line.rstrip()})

        reader = threading.Thread(target=read_events, daemon=True)
        reader.start()
        try:
            with SyncProbe(self.root) as probe:
                streaming = self.wait_streaming(node.name, began)
        except Failed:
            proc.kill()
            raise
        out, _ = proc.communicate(timeout=WAIT)
        cli = time.monotonic() - began
        reader.join(10)
        if proc.returncode != 0:
            texts = [e["line"] for e in events if e.get("event") == "text"]
            raise Failed(f"cluster join of {node.name} exited {proc.returncode}: {texts[-5:]}")
        return {
            "streaming_s": streaming,
            "load": os.getloadavg()[0],
            "cli_s": cli,
            **self.store_stalls(wall),
            **probe.result(),
            **phases(json.loads(out), events, cli),
        }

    def store_stalls(self, since: float) -> dict[str, Any]:
        """etcd's "slow fdatasync" warnings (a WAL sync over 1 s) on every member since the
        wall-clock time ``since``: how many, and the longest; a copy that floods the disk
        shows here first, then as a missed lease renewal."""
        count, longest = 0, 0.0
        for node in self.nodes.values():
            with contextlib.suppress(OSError):
                for line in (node.data_dir / "store" / "etcd.log").read_text().splitlines():
                    if "slow fdatasync" not in line:
                        continue
                    with contextlib.suppress(ValueError, KeyError):
                        entry = json.loads(line)
                        stamp = entry["ts"].replace("Z", "+00:00")
                        if datetime.fromisoformat(stamp).timestamp() >= since:
                            count += 1
                            longest = max(longest, _seconds(str(entry.get("took", "0s"))))
        return {"stalls": count, "longest_stall_s": round(longest, 3)}

    def remove(self, name: str) -> None:
        """Remove the joiner; should the cluster have failed over to it meanwhile (noted as
        a failover), a switchover to a founding node comes first."""
        wait_for(
            lambda: any(probe(n) == 200 for n in self.nodes.values()),
            WAIT,
            interval=0.2,
            what="an active node",
        )
        if self.refresh_active() == name:
            home = next(n for n in self.nodes if n != name)
            self.cli("cluster", "switchover", "--to", home)
            self.refresh_active()
        self.cli("cluster", "nodes", "remove", name, "--yes")
        node = self.nodes.pop(name)
        node.cleanup()
        shutil.rmtree(node.data_dir, ignore_errors=True)
        node.config_path.unlink(missing_ok=True)

    def raw_basebackup(self, member: str) -> dict[str, Any]:
        """A raw pg_basebackup of the active as ``member``'s standby streams (its conninfo:
        TCP, TLS with its client certificate, the replication role); seconds."""
        conninfo = str(query(self.nodes[member], "SHOW primary_conninfo")[0][0])
        target = self.root / "raw-basebackup"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        shutil.chown(target, "postgres", "postgres")
        argv = ["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_basebackup")]
        argv += ["-D", str(target), "-X", "stream", "-c", "fast", "-w", "-d", conninfo]
        began, wall = time.monotonic(), time.time()
        with SyncProbe(self.root) as probe:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT)
        took = time.monotonic() - began
        shutil.rmtree(target, ignore_errors=True)
        if done.returncode != 0:
            raise Failed(f"raw pg_basebackup failed: {done.stderr.strip()[-500:]}")
        return {
            "raw_s": took,
            "load": os.getloadavg()[0],
            **self.store_stalls(wall),
            **probe.result(),
        }

    def fill(self, scale: int, attempts: int = 3) -> None:
        """``pgbench -i`` on the active; again on the new active should the cluster fail
        over meanwhile (its writes flood a shared disk: the store can stall, the active
        fence; noted as a failover)."""
        for attempt in range(1, attempts + 1):
            node = self.nodes[self.active]
            argv = [str(PG_BIN / "pgbench"), "-i", "-q", "-s", str(scale)]
            argv += ["-h", str(node.socket_dir), "-p", str(node.pg_port), "-U", "postgres"]
            done = subprocess.run([*argv, "postgres"], capture_output=True, text=True)
            if done.returncode == 0:
                return
            if attempt == attempts:
                raise Failed(f"pgbench -i failed: {done.stderr.strip()[-1000:]}")
            self.log(f"pgbench -i failed ({done.stderr.strip()[-80:]!r}): again on the active")
            wait_for(
                lambda: any(probe(n) == 200 for n in self.nodes.values()),
                WAIT,
                interval=0.2,
                what="an active node",
            )
            self.refresh_active()

    def size(self) -> int:
        return int(
            query(self.nodes[self.active], "SELECT sum(pg_database_size(oid)) FROM pg_database")[0][
                0
            ]
        )

    def cleanup(self) -> None:
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                node.cleanup()


def phases(result: dict[str, Any], events: list[dict[str, Any]], cli: float) -> dict[str, Any]:
    """Where a join's time went, from its steps' began/ended (seconds since the operation
    began on the joining node) and what the CLI printed."""
    steps = {s["name"]: s for s in result.get("steps") or []}
    clone = result.get("clone") or {}

    def span(name: str) -> float | None:
        step = steps.get(name) or {}
        began, ended = step.get("began"), step.get("ended")
        return ended - began if began is not None and ended is not None else None

    copy_began = clone.get("began")
    copy = clone.get("elapsed")
    agent_end = (steps.get("agent") or {}).get("ended")
    streaming_end = (steps.get("streaming") or {}).get("ended")
    rates = [e for e in events if e.get("event") == "clone" and e.get("rate")]
    # the CLI's clock at each event minus the operation's: when the operation began for the
    # CLI (a poll late at most); what the CLI saw last: when it saw the operation end
    seen = [e for e in events if e.get("at") is not None and "seen" in e]
    return {
        "before_s": min(e["seen"] - e["at"] for e in seen) if seen else None,
        "cli_after_s": cli - max(e["seen"] for e in seen) if seen else None,
        "operation_s": result.get("elapsed"),
        "ca_s": span("ca"),
        "store_s": span("store"),
        "agent_s": span("agent"),
        "to_copy_s": copy_began - agent_end if None not in (copy_began, agent_end) else None,
        "copy_s": copy,
        "after_copy_s": (
            streaming_end - copy_began - copy
            if None not in (streaming_end, copy_began, copy)
            else None
        ),
        "copied_bytes": clone.get("total"),
        "rate_bytes_s": clone.get("rate"),
        "progress_events": len([e for e in events if e.get("event") == "clone"]),
        "rate_reports": len(rates),
    }


def _seconds(duration: str) -> float:
    """A Go duration as etcd logs it ("1.52s", "820ms", "1m2.5s") in seconds."""
    total = 0.0
    for value, unit in re.findall(r"([\d.]+)(h|ms|µs|us|ns|m|s)", duration):
        scale = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "µs": 1e-6, "us": 1e-6, "ns": 1e-9}
        total += float(value) * scale[unit]
    return total


def _stalls(sample: dict[str, Any]) -> str:
    return (
        f"load {sample['load']:.2f}; "
        f"etcd slow fdatasync {sample['stalls']}, longest {sample['longest_stall_s']:.2f} s; "
        f"probe fdatasync max {sample['sync_max_s'] or 0:.3f} s, "
        f"p99 {sample['sync_p99_s'] or 0:.3f} s"
    )


def _median(samples: list[dict[str, Any]], key: str) -> float | None:
    values = [s[key] for s in samples if s.get(key) is not None]
    return round(statistics.median(values), 3) if values else None


def print_report(report: dict[str, Any], console: Console) -> None:
    info = report["machine"]
    console.print(
        f"[bold]machine[/]: {info['cores']} cores, {info['memory_gib']} GiB, {info['platform']}, "
        f"Python {info['python']}, load average at start {info['load_average']}"
    )
    console.print("versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()))
    console.print(report.get("cluster", ""))
    table = Table(title="join vs raw pg_basebackup (seconds: min / median / max)")
    for column in ("what", "n", "min", "median", "max"):
        table.add_column(column, justify="left" if column == "what" else "right")
    for label, key in (
        ("join, until streaming", "join_streaming"),
        ("join, until the CLI returns", "join_cli"),
        ("raw pg_basebackup (TCP+TLS)", "raw"),
    ):
        s = report["summary"].get(key) or {}
        cells = [s.get(k) for k in ("min", "median", "max")]
        table.add_row(label, str(s.get("n", 0)), *("-" if c is None else f"{c:.2f}" for c in cells))
    console.print(table)
    ratio = report["summary"].get("ratio")
    console.print(
        f"ratio join/raw (medians): [bold]{ratio:.2f}x[/]" if ratio else "ratio: -",
        highlight=False,
    )
    stalls = report["summary"].get("stalls") or {}
    if stalls:
        console.print(
            f"etcd slow fdatasync (> 1 s) on any member: during the joins {stalls['join']} "
            f"(longest {stalls['join_longest_s']:.2f} s), during the raw copies {stalls['raw']} "
            f"(longest {stalls['raw_longest_s']:.2f} s)",
            highlight=False,
        )
        console.print(
            "a 4 KiB fdatasync beside the data every 20 ms (another writer of the disk): "
            f"during the joins max {stalls['join_sync_max_s']:.3f} s, p99 (median of samples) "
            f"{stalls['join_sync_p99_s'] or 0:.3f} s; during the raw copies max "
            f"{stalls['raw_sync_max_s']:.3f} s, p99 {stalls['raw_sync_p99_s'] or 0:.3f} s",
            highlight=False,
        )
    breakdown = report["summary"].get("phases") or {}
    if breakdown:
        console.print(
            "join phases (medians, s): "
            + ", ".join(
                f"{k.removesuffix('_s')} {v:.2f}" for k, v in breakdown.items() if v is not None
            ),
            highlight=False,
        )
    print_rejoins(report.get("rejoins") or [], console)
    if report.get("failovers"):
        console.print(
            f"failovers during the run: {', '.join(report['failovers'])}", highlight=False
        )
    for error in report.get("errors", []):
        console.print(f"[red]error[/]: {error}", highlight=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=70, help="pgbench scale (70: about 1 GiB)")
    parser.add_argument("--samples", type=int, default=5, help="joins and raw copies, each")
    parser.add_argument("--rejoins", type=int, default=1, help="rejoins (rewind, re-clone)")
    parser.add_argument("--no-rejoin", action="store_true", help="leave out the rejoin")
    parser.add_argument(
        "--logs", type=Path, help="copy each rejoin's windows of the nodes' logs there"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of the tables")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        parser.error("run it as root: PostgreSQL runs as the postgres user")

    console, log = bench_console(args.json)

    started = time.monotonic()
    root = prepare_workdir(Path(tempfile.mkdtemp(prefix="hacore-join-bench-")))
    bench = Bench(root, log)
    report: dict[str, Any] = {
        "machine": machine(),
        "versions": stack_versions(),
        "errors": [],
        "rejoins": [],
    }
    joins: list[dict[str, Any]] = []
    raws: list[dict[str, Any]] = []
    try:
        bench.form()
        log("n1 started the cluster, n2 joined")
        fill = time.monotonic()
        bench.fill(args.scale)
        query(bench.nodes[bench.refresh_active()], "CHECKPOINT")
        size = bench.size()
        report["cluster"] = (
            f"2 nodes + the joiner, managed etcd, TLS on; pgbench scale {args.scale}: databases "
            f"{size / 2**30:.2f} GiB (filled in {time.monotonic() - fill:.0f} s)"
        )
        log(report["cluster"])
        for i in range(1, args.samples + 1):
            name = f"j{i}"
            node = bench.node(name)
            sample = bench.join(node)
            joins.append(sample)
            log(
                f"join {i}: streaming after {sample['streaming_s']:.2f} s, CLI returned after "
                f"{sample['cli_s']:.2f} s (copy {sample['copy_s']} s; {_stalls(sample)})"
            )
            raw = bench.raw_basebackup(next(n for n in ("n2", "n1") if n != bench.active))
            raws.append(raw)
            log(f"raw pg_basebackup {i}: {raw['raw_s']:.2f} s ({_stalls(raw)})")
            if i < args.samples or args.no_rejoin:
                bench.remove(name)
        for i in range(1, 0 if args.no_rejoin else args.rejoins + 1):
            report["rejoins"].append(rejoin(bench, i, args.logs))
    except Exception as exc:
        report["errors"].append(f"{type(exc).__name__}: {exc}")
        log(f"failed: {exc}")
    finally:
        bench.cleanup()
        if args.keep:
            remove_data(root)
            log(f"work directory kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    summary: dict[str, Any] = {
        "join_streaming": spread(s["streaming_s"] for s in joins),
        "join_cli": spread(s["cli_s"] for s in joins),
        "raw": spread(r["raw_s"] for r in raws),
        "stalls": {
            "join": sum(s["stalls"] for s in joins),
            "join_longest_s": max((s["longest_stall_s"] for s in joins), default=0.0),
            "raw": sum(r["stalls"] for r in raws),
            "raw_longest_s": max((r["longest_stall_s"] for r in raws), default=0.0),
            "join_sync_max_s": max((s["sync_max_s"] or 0 for s in joins), default=0.0),
            "raw_sync_max_s": max((r["sync_max_s"] or 0 for r in raws), default=0.0),
            "join_sync_p99_s": _median(joins, "sync_p99_s"),
            "raw_sync_p99_s": _median(raws, "sync_p99_s"),
        },
    }
    join_median, raw_median = summary["join_streaming"]["median"], summary["raw"]["median"]
    summary["ratio"] = round(join_median / raw_median, 3) if join_median and raw_median else None
    keys = (
        "before_s",
        "operation_s",
        "cli_after_s",
        "ca_s",
        "store_s",
        "agent_s",
        "to_copy_s",
        "copy_s",
        "after_copy_s",
    )
    summary["phases"] = {k: _median(joins, k) for k in keys} if joins else {}
    summary["rejoin"] = rejoin_summary(report["rejoins"])
    report["summary"] = summary
    report["joins"] = joins
    report["raw"] = raws
    report["failovers"] = bench.failovers
    report["wall_s"] = round(time.monotonic() - started, 1)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report, console)
        console.print(f"[dim]wall time {report['wall_s']} s[/]")
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
