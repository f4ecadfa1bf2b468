"""Host death with the node's own store member (managed etcd) beside an external store.

    sudo .venv/bin/python benchmarks/managed.py [--runs N] [--profiles default,fast]
                                                [--scenarios rest,leader,external] [--json]

Three hosts are network namespaces, as in ``tests/fault`` (its ``FaultCluster``: each node's
agent, PostgreSQL and managed etcd member run inside its host's namespace). The active's host
dies: every process in its namespace is SIGKILLed at once (``Network.signal_host``). Scenarios,
per timing profile (``timing.profile``):

* ``rest``: the managed deployment as it runs: hacore has moved the store's raft leadership
  off the active (``hacore/agent/store_leadership.py``); the benchmark waits for that.
* ``leader``: the worst case: right before the kill, ``etcdctl move-leader`` puts the raft
  leadership on the active's own member, so the store loses its leader with the host.
* ``external``: ``benchmarks/failover.py``'s crash scenario (a fresh loopback cluster on a
  3-member etcd of its own per run, the host death by SIGSTOP then SIGKILL) for the same
  profile: the external-store figure of the same run.

Measured from the kill: the store's new raft leader as both survivors see it (``leader`` only;
at rest the store keeps its leader), the leader key gone from the store (the dead active's
lease expired: detection), a survivor's campaign won (``won the election`` in its log), its
database first seen writable by the fault tests' poller (promoted), and the first write
acknowledged by another node (the fault tests' writer through every node's Unix socket). The
dead host's agent is then started again, and the next run waits for the cluster to be whole.
A benchmark: it asserts nothing.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import _systems
import failover
import httpx
from _cluster import prepare_workdir
from _fault_hosts import checker, fault_cluster, fault_store, formed, netns
from _report import bench_console, machine, spread
from rich.console import Console
from rich.table import Table

import hacore
from hacore.config.timing import TIMING_PROFILES
from hacore.testing.procs import wait_for

etcd_call = fault_store.etcd_call
member_ids = fault_store.member_ids
move_store_leadership = fault_store.move_store_leadership
store_leader = fault_store.store_leader

SCENARIOS = ("rest", "leader", "external")
#: writes acknowledged by the active before its host dies
WARM_ACKS = 50
#: how long to wait for anything after the kill
AFTER_KILL = 90.0
#: how often the store is asked who leads it and who holds the leader key
STORE_POLL = 0.05
#: tries at putting the store's leader on the active right before the kill
MOVE_ATTEMPTS = 5
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def timing_section(profile: str) -> dict[str, Any]:
    return {"profile": profile}


# -- the store, seen from the root namespace ---------------------------------------------------


class StoreWatch:
    """Polls the surviving members: the raft leader each sees, and the leader key's holder."""

    def __init__(self, cluster: fault_cluster.FaultCluster, survivors: list[str]) -> None:
        self.urls = [
            f"http://{cluster.nodes[n].host.address}:{fault_cluster.CLIENT_PORT}" for n in survivors
        ]
        key = f"/hacore/{cluster.nodes[survivors[0]].namespace}/leader".encode()
        self.key = base64.b64encode(key).decode()
        self.samples: list[tuple[float, set[int], tuple[str, int] | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> StoreWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        with httpx.Client(timeout=0.3, trust_env=False) as http:
            while not self._stop.is_set():
                leaders: set[int] = set()
                for url in self.urls:
                    with contextlib.suppress(httpx.HTTPError, ValueError):
                        leaders.add(int(http.post(f"{url}/v3/maintenance/status", json={}).json()
                                        .get("leader", 0)))  # fmt: skip
                holder = None
                for url in self.urls:
                    try:
                        data = http.post(f"{url}/v3/kv/range", json={"key": self.key}).json()
                    except (httpx.HTTPError, ValueError):
                        continue
                    if "error" in data:
                        continue
                    kvs = data.get("kvs") or []
                    holder = (
                        ("", 0)
                        if not kvs
                        else (
                            base64.b64decode(kvs[0]["value"]).decode(),
                            int(kvs[0]["create_revision"]),
                        )
                    )
                    break
                self.samples.append((time.monotonic(), leaders, holder))
                self._stop.wait(STORE_POLL)

    def first(
        self, test: Callable[[set[int], tuple[str, int] | None], bool], after: float
    ) -> float | None:
        """When a sample taken after ``after`` first passed ``test``."""
        return next(
            (at for at, leaders, holder in self.samples if at > after and test(leaders, holder)),
            None,
        )


def leads_itself(node: fault_cluster.FaultNode) -> bool:
    """Whether ``node``'s own member leads the store, by its own word (one request)."""
    status = etcd_call(node, "/v3/maintenance/status", {})
    header = status["header"]
    assert isinstance(header, dict)
    return int(str(status.get("leader", 0))) == int(header["member_id"])


def log_time(path: Path, text: str, after_wall: float) -> float | None:
    """Wall time of the first line of the agent's log holding ``text`` after ``after_wall``."""
    if not path.exists():
        return None
    for line in path.read_text(errors="replace").splitlines():
        match = _LOG_TIME.match(line)
        if not match or text not in line:
            continue
        at = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if at > after_wall:
            return at
    return None


# -- one host death ------------------------------------------------------------------------------


def host_death(
    cluster: fault_cluster.FaultCluster, scenario: str, index: int, log: Callable[[str], None]
) -> dict[str, Any]:
    name, _ = cluster.wait_healthy()
    if scenario == "rest":
        wait_for(
            lambda: (leader := store_leader(cluster)) is not None and leader != name,
            120,
            interval=0.5,
            what="hacore moving the store's leadership off the active",
        )
    with cluster.witnesses(f"managed-{scenario}-{index}") as w:
        old = w.active
        w.wait_acks(old.name, WARM_ACKS)
        survivors = [n for n in cluster.nodes if n != old.name]
        ids = member_ids(cluster)
        watch = StoreWatch(cluster, survivors).start()
        for _ in range(MOVE_ATTEMPTS if scenario == "leader" else 0):
            # waits for every member to agree, which a member that just came back may delay
            with contextlib.suppress(TimeoutError):
                move_store_leadership(cluster, old)
            # the active's agent moves the leadership off again within CHECK_EVERY: the kill
            # follows this check at once, and the move is tried again when the agent was first
            if leads_itself(old):
                break
        leader_before = old.name if leads_itself(old) else store_leader(cluster)
        fault_wall, fault_at = time.time(), time.monotonic()
        cluster.net.signal_host(old.host, signal.SIGKILL)
        try:
            first = wait_for(
                lambda: next(
                    (a for a in w.writer.acks() if a.node != old.name and a.at > fault_at), None
                ),
                AFTER_KILL,
                interval=0.05,
                what="a write acknowledged by another node",
            )
            new = first.node
            w.wait_acks(new, 50, after=first.at)
        finally:
            watch.stop()
    verdict = checker.judge(
        f"managed {scenario}",
        w.writer,
        w.poller,
        fault_at=fault_at,
        old_active=old.name,
        new_active=new,
        final_conninfo=cluster.nodes[new].conninfo,
        status=w.status,
    )
    dead = ids[old.name]
    election = (
        watch.first(
            lambda leaders, _: len(leaders) == 1 and 0 not in leaders and dead not in leaders,
            fault_at,
        )
        if leader_before == old.name
        else None
    )
    gone = watch.first(lambda _, holder: holder is not None and holder[0] != old.name, fault_at)
    won = log_time(cluster.nodes[new].log_path, "won the election", fault_wall)
    writable = [
        s.at_from
        for s in w.poller.samples().get(new, [])
        if s.writable and s.at_from > fault_at and s.state != checker.UNKNOWN
    ]
    promoted = min(writable, default=None)

    def since(at: float | None, wall: bool = False) -> float | None:
        if at is None:
            return None
        return round(at - (fault_wall if wall else fault_at), 3)

    result = {
        "scenario": scenario,
        "old_active": old.name,
        "new_active": new,
        "store_leader_at_kill": leader_before,
        "store_election_s": since(election),
        "lease_gone_s": since(gone),
        "campaign_won_s": since(won, wall=True),
        "promoted_s": since(promoted),
        "first_write_s": since(first.at),
        "acked": verdict.acked,
        "lost": len(verdict.lost) + len(verdict.lost_probes),
        "overlaps": len(verdict.overlaps_ack) + len(verdict.overlaps_rw),
    }
    log(
        f"{scenario} run {index}: {old.name} died (store leader {leader_before}), {new} active; "
        f"store election {result['store_election_s']} s, lease gone {result['lease_gone_s']} s, "
        f"won {result['campaign_won_s']} s, promoted {result['promoted_s']} s, first write "
        f"{result['first_write_s']} s, lost {result['lost']}"
    )
    # the host comes back: its agent starts its member and database again, as a standby
    old.launch()
    cluster.wait_healthy()
    return result


def managed_runs(
    profile: str, scenarios: list[str], runs: int, log: Callable[[str], None], keep: bool
) -> dict[str, Any]:
    """``runs`` host deaths of each of ``scenarios`` (rest, leader), alternating, on one
    cluster of three network-namespace hosts."""
    found: dict[str, list[dict[str, Any]]] = {s: [] for s in scenarios}
    errors: list[str] = []
    netns.cleanup_stale()
    with netns.Network(3) as net:
        started = time.monotonic()
        cluster, failures = formed(net, profile, log)
        errors += [f"forming: {failure}" for failure in failures]
        try:
            log(f"managed {profile}: cluster formed in {time.monotonic() - started:.0f} s")
            for index in range(runs):
                for scenario in scenarios:
                    try:
                        found[scenario].append(host_death(cluster, scenario, index, log))
                    except Exception as exc:
                        errors.append(f"{scenario} run {index}: {type(exc).__name__}: {exc}")
                        log(f"managed {profile}: {errors[-1]}")
                        for node in cluster.nodes.values():
                            if node.proc is None or not node.proc.alive():
                                node.launch()
        finally:
            net.heal()
            kept = Path(tempfile.mkdtemp(prefix="hacore-managed-logs-")) if keep else None
            cluster.cleanup(keep_logs=kept)
            if kept is not None:
                log(f"logs kept in {kept}")
    return {"runs": found, "errors": errors}


def external_runs(profile: str, runs: int, log: Callable[[str], None]) -> dict[str, Any]:
    """``benchmarks/failover.py``'s crash scenario at ``profile``: the external-store figure."""
    system = _systems.hacore_system(
        f"hacore-{profile}", f"hacore, timing.profile {profile}", timing_section(profile)
    )
    reason = system.unavailable()
    if reason:
        return {"runs": [], "errors": [f"unavailable: {reason}"]}
    # short: PostgreSQL's socket path must fit in 107 bytes; traversable by postgres
    root = prepare_workdir(Path(tempfile.mkdtemp(prefix="hm-")))
    args = argparse.Namespace(runs=runs, keep=False)
    result: dict[str, Any] = {}
    try:
        found, errors = failover.fresh_cluster_runs(
            "crash", failover.crash_run, system, root, args, log, result
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"runs": found, "errors": errors, "timings": result.get("timings")}


# -- the report -----------------------------------------------------------------------------------

MEASURES = (
    ("store_election_s", "store election"),
    ("lease_gone_s", "lease gone"),
    ("campaign_won_s", "campaign won"),
    ("promoted_s", "promoted"),
    ("status_s", "status 200"),
    ("first_write_s", "first write"),
)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary = {key: spread(r.get(key) for r in runs) for key, _ in MEASURES}
    summary["lost"] = sum(r.get("lost", 0) for r in runs)
    return summary


def cell(value: dict[str, Any]) -> str:
    if not value.get("n"):
        return "-"
    return f"{value['min']:.2f} / {value['median']:.2f} / {value['max']:.2f}"


def print_report(report: dict[str, Any], console: Console) -> None:
    host = report["machine"]
    console.print(
        f"{host['cores']} cores, {host['memory_gib']} GiB, {host['platform']}, Python "
        f"{host['python']}, load {host['load_average']}; hacore {report['hacore']}; "
        f"{report['runs']} run(s) per scenario",
        highlight=False,
    )
    table = Table(title="host death → seconds after the kill (min / median / max)")
    table.add_column("profile")
    table.add_column("scenario")
    for _, label in MEASURES:
        table.add_column(label, justify="right")
    table.add_column("lost", justify="right")
    table.add_column("vs external", justify="right")
    for profile, rows in report["profiles"].items():
        external = rows.get("external", {}).get("summary", {}).get("first_write_s", {})
        for scenario, row in rows.items():
            summary = row["summary"]
            ratio = "-"
            median = summary["first_write_s"].get("median")
            if scenario != "external" and median and external.get("median"):
                ratio = f"{median / external['median']:.2f}x"
            table.add_row(
                profile,
                scenario,
                *(cell(summary[key]) for key, _ in MEASURES),
                str(summary["lost"]),
                ratio,
            )
    console.print(table)
    for profile, rows in report["profiles"].items():
        timing = TIMING_PROFILES[profile]
        console.print(
            f"{profile}: ttl {timing.ttl:g}, loop_wait {timing.loop_wait:g}, retry_timeout "
            f"{timing.retry_timeout:g}, safety_margin {timing.safety_margin:g}",
            highlight=False,
        )
        for scenario, row in rows.items():
            for error in row["errors"]:
                console.print(f"  {scenario}: FAILED {error}", highlight=False)
    console.print(
        "rest: hacore keeps the store's leader off the active; leader: the raft leader moved onto "
        "the active just before the kill; external: benchmarks/failover.py crash (own etcd).",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="host deaths per scenario")
    parser.add_argument(
        "--profiles", default="default,fast", help="timing profiles, comma-separated"
    )
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"of {', '.join(SCENARIOS)}"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--keep", action="store_true", help="keep the managed clusters' logs")
    args = parser.parse_args(argv)
    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if unknown := [p for p in profiles if p not in TIMING_PROFILES]:
        parser.error(f"unknown profile(s) {unknown}: one of {', '.join(TIMING_PROFILES)}")
    if unknown := [s for s in scenarios if s not in SCENARIOS]:
        parser.error(f"unknown scenario(s) {unknown}: of {', '.join(SCENARIOS)}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    managed = [s for s in scenarios if s != "external"]
    if managed and (reason := fault_reason()):
        parser.error(reason)

    console, log = bench_console(args.json, width=170)

    report: dict[str, Any] = {
        "machine": machine(),
        "hacore": hacore.__version__,
        "runs": args.runs,
        "profiles": {},
    }
    for profile in profiles:
        rows: dict[str, Any] = {}
        if managed:
            try:
                done = managed_runs(profile, managed, args.runs, log, args.keep)
            except RuntimeError as exc:  # no cluster formed at all
                done = {"runs": {s: [] for s in managed}, "errors": [f"forming: {exc}"]}
            for scenario in managed:
                runs = done["runs"][scenario]
                errors = [e for e in done["errors"] if e.startswith((scenario, "forming"))]
                rows[scenario] = {"runs": runs, "errors": errors, "summary": summarise(runs)}
        if "external" in scenarios:
            done = external_runs(profile, args.runs, log)
            rows["external"] = {**done, "summary": summarise(done["runs"])}
        report["profiles"][profile] = rows
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print_report(report, console)
    return 0


def fault_reason() -> str | None:
    if os.geteuid() != 0:
        return "the managed scenarios need root (network namespaces)"
    if shutil.which("etcdctl") is None:
        return "no etcdctl on PATH (moving etcd's leadership needs its gRPC API)"
    return netns.unavailable_reason()


if __name__ == "__main__":
    raise SystemExit(main())
