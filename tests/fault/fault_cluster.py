"""A real 3-node cluster whose nodes are network namespaces, for the fault tests.

Each node is a ``hacore agent run -c node.yaml`` process started inside its host's namespace
(``ip netns exec``); the agent starts the node's PostgreSQL and managed etcd member, which
inherit the namespace, so cutting the host's network cuts all three. Every host has its own
port space, so the nodes use the usual ports (API 8008, PostgreSQL 5432, etcd 2379/2380) on
their own private address, as on real machines. The cluster is formed with the real CLI
(``cluster start``, ``cluster join``) from the root namespace, which reaches every host through
the bridge.

The checker's clients reach each database through its Unix socket: a socket file is not in
any network namespace, so they play the manager's own services, which run on the node and
write locally whatever the network does. (Over TCP only the members' own addresses may log in:
see docs/postgresql.md, access rules.)

``tls: {enabled: false}``: these tests are about the network, and stay independent of the
TLS work in progress. The node's layout, configuration and processes are the local-cluster
scaffold's (:mod:`hacore.testing.local_cluster`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import checker
import httpx
import psycopg
from click.testing import CliRunner, Result
from netns import Host, Network

from hacore.cli import cli
from hacore.config.timing import TIMING_PROFILES
from hacore.testing.local_cluster import LocalNode
from hacore.testing.procs import ServerProcess, wait_for

#: ``HACORE_FAULT_PROFILE`` runs every scenario with a timing profile (``timing.profile``: its
#: values, and a managed etcd's election timeouts), ``HACORE_FAULT_TTL`` at another ttl
#: (``benchmarks/faults.py --profile``, ``--ttl``)
PROFILE = os.environ.get("HACORE_FAULT_PROFILE", "default")
TIMING: dict[str, Any] = {
    "profile": PROFILE,
    "ttl": float(os.environ.get("HACORE_FAULT_TTL", TIMING_PROFILES[PROFILE].ttl)),
    "loop_wait": TIMING_PROFILES[PROFILE].loop_wait,
    "retry_timeout": TIMING_PROFILES[PROFILE].retry_timeout,
    "safety_margin": TIMING_PROFILES[PROFILE].safety_margin,
}
PG_PARAMETERS = {"shared_buffers": "16MB", "max_connections": 30, "fsync": "off"}
API_PORT, PG_PORT, CLIENT_PORT, PEER_PORT = 8008, 5432, 2379, 2380
#: generous: a busy two-core machine runs other engineers' servers too
WAIT = 150.0
#: one line per scenario, printed at the end of the run (conftest's terminal summary)
VERDICTS: list[str] = []
HACORE = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "hacore")


@attrs.define(init=False)
class FaultNode(LocalNode):
    """A node of the local-cluster scaffold on a host of its own: the usual ports on the
    host's private address, its agent started inside the host's namespace."""

    host: Host = attrs.field(kw_only=True)
    namespace: str = attrs.field(kw_only=True)
    #: the ``timing`` section of its node.yaml
    timing: dict[str, Any] = attrs.field(kw_only=True)

    def __init__(
        self,
        name: str,
        host: Host,
        root: Path,
        namespace: str,
        proc: ServerProcess | None = None,
        timing: dict[str, Any] | None = None,
    ) -> None:
        self.__attrs_init__(
            name,
            root,
            "etcd",
            ip=host.address,
            api_port=API_PORT,
            pg_port=PG_PORT,
            store={"client_port": CLIENT_PORT, "peer_port": PEER_PORT},
            proc=proc,
            host=host,
            namespace=namespace,
            timing=dict(TIMING if timing is None else timing),
        )

    @property
    def conninfo(self) -> str:
        """Straight to this node's database through its Unix socket, as the superuser."""
        return f"host={self.socket_dir} port={PG_PORT} user=postgres dbname=postgres"

    def write_config(self, **sections: Any) -> dict[str, Any]:
        return super().write_config(
            cluster="faulttest",
            namespace=self.namespace,
            timing=self.timing,
            checks={"check_fail_fast": False},
            failover={"synchronous_mode": "on"},
            replication={"parameters": PG_PARAMETERS},
            extra={"tls": {"enabled": False}},
            **sections,
        )

    def launch(self) -> FaultNode:
        """Start the agent service inside the host's namespace (not waiting for it)."""
        self.write_config()
        self.spawn_agent([HACORE], wrap=self.host.argv)
        return self

    def wait_up(self) -> None:
        wait_for(
            lambda: self.code() is not None, WAIT, interval=0.2, what=f"{self.name}'s agent API"
        )

    def code(self, path: str = "/status", timeout: float = 1.0) -> int | None:
        """The probe's HTTP status, None when the agent does not answer (down or cut off)."""
        try:
            return httpx.get(f"http://{self.address}{path}", timeout=timeout).status_code
        except httpx.HTTPError:
            return None

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5) as conn:
            return conn.execute(query, params).fetchall()

    def replication(self) -> dict[str, tuple[str, str]]:
        """On a primary: standby name -> (state, sync_state)."""
        rows = self.sql("SELECT application_name, state, sync_state FROM pg_stat_replication")
        return {name: (state, sync) for name, state, sync in rows}


class FaultCluster:
    """Three nodes n1..n3 on the hosts of ``net``, and the CLI run against them; ``timing``
    (the ``timing`` section) replaces :data:`TIMING` (``benchmarks/managed.py``)."""

    def __init__(self, net: Network, timing: dict[str, Any] | None = None) -> None:
        self.net = net
        self.root = Path(tempfile.mkdtemp(prefix="hacore-fault-"))
        # pytest's temp dirs are 0700 root: the postgres user could not enter them.
        self.root.chmod(0o755)
        self.profile = self.root / "profile.json"
        namespace = f"fault-{secrets.token_hex(4)}"
        self.nodes = {
            f"n{i + 1}": FaultNode(f"n{i + 1}", host, self.root, namespace, timing=timing)
            for i, host in enumerate(net.hosts)
        }

    # -- forming and tearing down -------------------------------------------------------------

    def form(self) -> FaultCluster:
        first, *others = self.nodes.values()
        for node in self.nodes.values():
            node.launch()
        for node in self.nodes.values():
            node.wait_up()
        self.cli("cluster", "start", "-c", str(first.config_path), "--timeout", str(WAIT))
        for node in others:
            self.cli(*node.join_arguments(first), "--timeout", str(WAIT))
        return self

    def cleanup(self, keep_logs: Path | None = None) -> None:
        # all at once: an active stopped alone would hand over to a standby about to stop
        for node in self.nodes.values():
            if node.proc is not None:
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                node.cleanup()
        if keep_logs is not None:
            keep_logs.mkdir(parents=True, exist_ok=True)
            for log in self.root.glob("*.log"):
                shutil.copy(log, keep_logs / log.name)
            for name in self.nodes:
                for log, kind in (
                    (self.root / name / "store" / "etcd.log", "etcd"),
                    (self.root / name / "keeper.log", "keeper"),
                    (self.root / name / "replication" / "log" / "postgresql.log", "postgresql"),
                ):
                    if log.exists():
                        shutil.copy(log, keep_logs / f"{name}-{kind}.log")
        shutil.rmtree(self.root, ignore_errors=True)

    def cli(self, *args: str) -> Result:
        result = CliRunner().invoke(
            cli, list(args), env={"HACORE_PROFILE": str(self.profile)}, catch_exceptions=False
        )
        assert result.exit_code == 0, (
            f"hacore {' '.join(args)} exited {result.exit_code}:\n{result.output}"
        )
        return result

    # -- observing ----------------------------------------------------------------------------

    def codes(self, path: str) -> dict[str, int | None]:
        return {name: node.code(path) for name, node in self.nodes.items()}

    def codes_active(self) -> str:
        """The one node answering /status 200 (AssertionError if not exactly one)."""
        active = [name for name, code in self.codes("/status").items() if code == 200]
        assert len(active) == 1, f"/status 200 on {active or 'no node'}"
        return active[0]

    def healthy(self) -> tuple[str, str] | None:
        """(active, synchronous standby) when the cluster is whole: one node answers /status
        200, the two others /standby 200, and the active's database streams to both, one of
        them synchronous."""
        status = self.codes("/status")
        active = [name for name, code in status.items() if code == 200]
        if len(active) != 1:
            return None
        node = self.nodes[active[0]]
        others = [name for name in self.nodes if name != node.name]
        if any(self.nodes[name].code("/standby") != 200 for name in others):
            return None
        streams = node.replication()
        if any(streams.get(name, ("", ""))[0] != "streaming" for name in others):
            return None
        sync = [name for name, (_, state) in streams.items() if state in ("sync", "quorum")]
        return (node.name, sync[0]) if len(sync) == 1 else None

    def wait_healthy(self, timeout: float = WAIT, steady: float = 2.0) -> tuple[str, str]:
        """Wait until :meth:`healthy` gives the same answer for ``steady`` seconds: right
        after a change the active may still be choosing its synchronous standby."""
        first: list[Any] = [None, 0.0]

        def stable() -> tuple[str, str] | None:
            now = self.healthy()
            if now is None or now != first[0]:
                first[:] = [now, time.monotonic()]
                return None
            return now if time.monotonic() - first[1] >= steady else None

        found = wait_for(stable, timeout, interval=0.5, what="one active, two standbys")
        assert isinstance(found, tuple)
        return found

    def log_tails(self, lines: int = 40) -> str:
        parts = []
        for node in self.nodes.values():
            if node.proc is not None:
                parts.append(f"--- {node.name}\n{node.proc.log_tail(lines)}")
        return "\n".join(parts)

    # -- the checker ------------------------------------------------------------------------

    def writer_conninfo(self) -> str:
        nodes = list(self.nodes.values())
        hosts = ",".join(str(node.socket_dir) for node in nodes)
        ports = ",".join(str(PG_PORT) for _ in nodes)
        return f"host={hosts} port={ports} user=postgres dbname=postgres"

    @contextlib.contextmanager
    def witnesses(self, run: str, impatient: float | None = None) -> Iterator[Witnesses]:
        """A writer, a database poller and a ``/status`` poller running for the block (stopped
        even when it fails); with ``impatient``, a second writer that cancels a write after
        that many seconds."""
        name, sync = self.wait_healthy()
        active = self.nodes[name]
        checker.prepare(active.conninfo)
        hosts = {str(node.socket_dir): name for name, node in self.nodes.items()}
        writer = checker.Writer(self.writer_conninfo(), hosts, run=run).start()
        second = None
        if impatient is not None:
            second = checker.Writer(
                self.writer_conninfo(), hosts, run=f"{run}-impatient", cancel_after=impatient
            ).start()
        poller = checker.Poller({name: n.conninfo for name, n in self.nodes.items()}).start()
        status = checker.StatusPoller(
            {name: f"http://{n.address}" for name, n in self.nodes.items()}
        ).start()
        try:
            yield Witnesses(writer, poller, active, self.nodes[sync], second, status)
        finally:
            writer.stop()
            if second is not None:
                second.stop()
            poller.stop()
            status.stop()


@attrs.define
class Witnesses:
    writer: checker.Writer
    poller: checker.Poller
    active: FaultNode
    #: the active's synchronous standby when the witnesses started
    sync: FaultNode
    #: the writer that cancels its writes on a client timeout, when asked for
    impatient: checker.Writer | None = None
    #: every agent's ``GET /status`` every 0.1 s, as a load balancer sees it
    status: checker.StatusPoller | None = None

    def acks_on(self, node: str, after: float = 0.0) -> int:
        return sum(1 for a in self.writer.acks() if a.node == node and a.at > after)

    def wait_acks(self, node: str, count: int, after: float = 0.0, timeout: float = WAIT) -> None:
        wait_for(
            lambda: self.acks_on(node, after) >= count,
            timeout,
            interval=0.1,
            what=f"{count} writes acknowledged by {node}",
        )

    def state(self, node: str) -> str | None:
        sample = self.poller.latest(node)
        return None if sample is None else sample.state

    def acking_other_than(self, node: str, after: float) -> str | None:
        """A node other than ``node`` seen acknowledging a probe write since ``after``."""
        for name, rows in self.poller.samples().items():
            if name != node and any(s.state == checker.ACKS and s.at_from > after for s in rows):
                return name
        return None

    def wait_not_writable(self, node: str, after: float, timeout: float = WAIT) -> float:
        """When ``node`` was first seen not taking writes after ``after``."""

        def seen() -> float | None:
            rows = self.poller.samples()[node]
            return next(
                (
                    s.end
                    for s in rows
                    if s.start > after and not s.writable and s.state != checker.UNKNOWN
                ),
                None,
            )

        found = wait_for(seen, timeout, interval=0.1, what=f"{node} to stop taking writes")
        assert isinstance(found, float)
        return found


def judge(
    name: str,
    cluster: FaultCluster,
    w: Witnesses,
    fault_at: float,
    new_active: str,
    writer: checker.Writer | None = None,
) -> checker.Verdict:
    """The checker's verdict on ``writer`` (the strict writer by default), recorded for the
    run's summary."""
    verdict = checker.judge(
        name,
        writer or w.writer,
        w.poller,
        fault_at=fault_at,
        old_active=w.active.name,
        new_active=new_active,
        final_conninfo=cluster.nodes[new_active].conninfo,
        status=w.status,
    )
    VERDICTS.append(verdict.summary())
    print(verdict.summary())
    record(verdict)
    return verdict


#: where :func:`judge` appends each verdict as a JSON line (benchmarks/faults.py sets it)
VERDICTS_FILE = os.environ.get("HACORE_FAULT_VERDICTS")


def record(verdict: checker.Verdict) -> None:
    if VERDICTS_FILE:
        with open(VERDICTS_FILE, "a") as out:
            out.write(dump(verdict) + "\n")


def explain(
    cluster: FaultCluster, w: Witnesses, since: float, writer: checker.Writer | None = None
) -> str:
    writer = writer or w.writer
    return (
        f"timeline (seconds after the fault):\n{checker.timeline(w.poller, writer, since=since)}"
        f"\n/status:\n{status_timeline(w, since)}"
        f"\nwriter errors: {writer.errors[-5:]}\n{cluster.log_tails(25)}"
    )


def status_timeline(w: Witnesses, since: float) -> str:
    if w.status is None:
        return "(not sampled)"
    lines = []
    for node, rows in sorted(w.status.samples().items()):
        previous = None
        for sample in rows:
            if sample.start >= since and sample.state != previous:
                lines.append((sample.start, f"{node}: /status {sample.state}"))
            previous = sample.state
    return "\n".join(f"{at - since:+8.3f}s  {text}" for at, text in sorted(lines))


def assert_safe(verdict: checker.Verdict, explanation: Callable[[], str]) -> None:
    """What every fault scenario must show: no acknowledged write lost (the writer's rows
    and the poller's probe rows), never two nodes acknowledging at once, never two agents
    answering ``/status`` 200 at once, and wherever the writable node changed, the old one
    last seen writable before the new one first was (a positive handover gap)."""
    assert not verdict.lost, (
        f"{len(verdict.lost)} acknowledged writes missing on {verdict.new_active}: "
        f"{list(verdict.lost)[:20]}\n{explanation()}"
    )
    assert not verdict.lost_probes, (
        f"{len(verdict.lost_probes)} acknowledged probe writes missing on "
        f"{verdict.new_active}: {list(verdict.lost_probes)[:20]}\n{explanation()}"
    )
    assert not verdict.overlaps_ack, (
        f"two nodes acknowledged writes at once: {verdict.overlaps_ack[:5]}\n{explanation()}"
    )
    assert not verdict.overlaps_status, (
        f"two agents answered /status 200 at once: {verdict.overlaps_status[:5]}\n{explanation()}"
    )
    assert_handover_gaps(verdict, explanation)


def assert_handover_gaps(verdict: checker.Verdict, explanation: Callable[[], str]) -> None:
    """Every change of the writable node after the fault has a positive gap."""
    shared = [h for h in verdict.handovers if h.gap <= 0]
    assert not shared, (
        "the writable role changed hands with no gap (old last seen writable at or after "
        f"the new one first was): {shared[:5]}\n{explanation()}"
    )


def assert_one_writer(verdict: checker.Verdict, explanation: Callable[[], str]) -> None:
    """Never two nodes writable (acknowledging or not), and no probe whose moment is unknown:
    an unanswered probe INSERT may have written at any time, so it cannot be ruled out."""
    assert not verdict.overlaps_rw, (
        f"two nodes were writable at once: {verdict.overlaps_rw[:5]}\n{explanation()}"
    )
    assert not verdict.unresolved, (
        f"probe writes never answered (cannot prove one writer): {verdict.unresolved[:5]}\n"
        f"{explanation()}"
    )


def assert_fenced_by(
    verdict: checker.Verdict,
    deadline_s: float,
    allowance: float,
    explanation: Callable[[], str],
    *,
    acknowledging_only: bool = False,
) -> None:
    """The old active's LAST writable (or, with ``acknowledging_only``, acknowledging)
    moment is at most ``allowance`` after ``deadline_s`` (seconds after the fault: when its
    lease can expire on the others, minus the safety margin)."""
    last = verdict.last_acks_old_s if acknowledging_only else verdict.last_writable_old_s
    what = "acknowledging" if acknowledging_only else "writable"
    assert last is not None and last <= deadline_s + allowance, (
        f"{verdict.old_active} was last seen {what} {last}s after the fault: later than its "
        f"deadline {deadline_s:.2f}s + allowance {allowance}s\n{explanation()}"
    )


def assert_everywhere(
    cluster: FaultCluster, w: Witnesses, writer: checker.Writer | None = None
) -> None:
    """Every node, the rewound or re-cloned old active included, holds every acked write."""
    writer = writer or w.writer
    ids = {a.id for a in writer.acks()}
    wait_for(
        lambda: set(ids_everywhere(cluster, writer.run, ids).values()) == {len(ids)},
        WAIT,
        interval=0.5,
        what=f"all {len(ids)} acknowledged writes on every node",
    )


def ids_everywhere(cluster: FaultCluster, run: str, ids: set[int]) -> dict[str, int]:
    """How many of ``ids`` each node holds (standbys once they replayed)."""
    return {
        name: len(checker.present_ids(node.conninfo, run, ids))
        for name, node in cluster.nodes.items()
    }


def settle(seconds: float) -> None:
    """Let the witnesses record a stretch of normal operation."""
    time.sleep(seconds)


def dump(verdict: checker.Verdict) -> str:
    return json.dumps(attrs.asdict(verdict), default=str)
