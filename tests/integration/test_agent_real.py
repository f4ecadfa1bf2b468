"""The agent's promises on a real store, with real ``hacore agent run`` processes and SIGKILL.

One loopback cluster for the module, formed through the real CLI (cluster_fixtures.py): three
agent processes, each with its managed etcd member and its PostgreSQL server, synchronous mode
on. Every node loads agent_hook_plugin.py as an operator's plugin (``$HACORE_PLUGINS``): it
logs each lifecycle hook to a file and, on request through files, vetoes a promotion or holds
a hook so that a SIGKILL lands at a known point of a promotion.

What is proven here, each on processes the test kills with SIGKILL (or freezes with
SIGSTOP), never by stopping a loop cooperatively:

- a veto from ``before_promote`` keeps the target a standby (and it tries again after the
  backoff); the hooks run in their documented order on both sides of a switchover;
- the agent SIGKILLed inside its promotion (database promoted, ``after_promote`` running)
  and restarted only after its lease expired: its fence keeper leaves the database writable
  for the last time before ``ttl - safety_margin`` (+ :data:`ALLOWANCE`) after the kill, the
  cluster recovers with never two writable nodes at once and no row lost;
- the whole store frozen (SIGSTOP of every etcd member): the active is writable for the last
  time before ``ttl - safety_margin`` (+ :data:`ALLOWANCE`) after the freeze, no standby
  promotes, and one active comes back after the thaw;
- a host death of the active (agent, keeper and PostgreSQL SIGKILLed): the synchronous
  standby takes over with every acknowledged write, and the old active rejoins as a standby.

The tests run in file order and each begins by waiting for a whole cluster (one active, two
streaming standbys, one of them synchronous), so none depends on which node is active.

Each test can be shown to fail when the behaviour it proves is broken, without touching the
product (run the one test with the variable set; it must fail):

- ``HACORE_AGENT_REAL_ASYNC=1`` forms the cluster with ``synchronous_mode: off``: the host
  death loses the writes the active acknowledged while its WAL senders were stopped;
- ``HACORE_AGENT_REAL_WITHOUT_KEEPER=1`` SIGKILLs the fence keeper with the agent caught in
  its promotion: its writable database outlives the lease;
- ``HACORE_AGENT_REAL_WITHOUT_FENCE=1`` freezes the active's agent and keeper with the store:
  nothing fences, the active stays writable past its lease;
- ``HACORE_AGENT_REAL_IGNORE_VETO=1`` makes the plugin record its veto but not return it:
  the target is promoted at the first attempt and the veto test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import checker
import psycopg
import pytest
from agent_hook_plugin import CALLS, control_dir
from cluster_fixtures import TIMING, WAIT, CliCluster, Node, formed_cluster

from hacore.testing.procs import wait_for
from hacore_plugins.postgresql.settings import default_bin_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(default_bin_dir() is None, reason="no PostgreSQL binaries installed"),
]

TTL = TIMING["ttl"]
MARGIN = TIMING["safety_margin"]
#: beyond ``ttl - safety_margin``: the fence's signal to the postmaster, one poller sample
ALLOWANCE = 1.0
PROMOTE_BACKOFF = 3
ASYNC = os.environ.get("HACORE_AGENT_REAL_ASYNC") == "1"
WITHOUT_KEEPER = os.environ.get("HACORE_AGENT_REAL_WITHOUT_KEEPER") == "1"
WITHOUT_FENCE = os.environ.get("HACORE_AGENT_REAL_WITHOUT_FENCE") == "1"
HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def real() -> Iterator[CliCluster]:
    plugins = [p for p in os.environ.get("HACORE_PLUGINS", "").split(",") if p]
    path = [str(HERE), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env = {
        "HACORE_PLUGINS": ",".join([*plugins, "agent_hook_plugin"]),
        "PYTHONPATH": os.pathsep.join(path),
    }
    mode = "off" if ASYNC else "on"
    extra = {"failover": {"synchronous_mode": mode, "promote_backoff": PROMOTE_BACKOFF}}
    yield from formed_cluster("etcd", env=env, extra=extra)


# -- helpers ------------------------------------------------------------------------------


def socket_dir(node: Node) -> str:
    return str(node.data_dir / "replication" / "run")


def conninfo(node: Node) -> str:
    return f"host={socket_dir(node)} port={node.pg_port} user=postgres dbname=postgres"


def writer_conninfo(cluster: CliCluster) -> str:
    nodes = list(cluster.nodes.values())
    hosts = ",".join(socket_dir(n) for n in nodes)
    ports = ",".join(str(n.pg_port) for n in nodes)
    return f"host={hosts} port={ports} user=postgres dbname=postgres"


def status_codes(cluster: CliCluster) -> dict[str, int | None]:
    codes: dict[str, int | None] = {}
    for name, node in cluster.nodes.items():
        answer = node.probe()
        codes[name] = None if answer is None else answer["http_status"]
    return codes


def replication(node: Node) -> dict[str, tuple[str, str]]:
    """On a primary: standby name -> (state, sync_state)."""
    with node.connect() as conn:
        rows = conn.execute(
            "SELECT application_name, state, sync_state FROM pg_stat_replication"
        ).fetchall()
    return {str(name): (str(state), str(sync)) for name, state, sync in rows}


def healthy(cluster: CliCluster) -> tuple[str, str] | None:
    """(active, synchronous standby) when exactly one node answers /status 200 and its
    database streams to both others, one of them synchronously (with :data:`ASYNC`, the
    first standby stands for it)."""
    active = [name for name, code in status_codes(cluster).items() if code == 200]
    if len(active) != 1:
        return None
    try:
        streams = replication(cluster.nodes[active[0]])
    except psycopg.Error:
        return None
    others = [name for name in cluster.nodes if name != active[0]]
    if any(streams.get(name, ("", ""))[0] != "streaming" for name in others):
        return None
    sync = [name for name, (_, state) in streams.items() if state in ("sync", "quorum")]
    if ASYNC:
        sync = sorted(others)[:1]
    return (active[0], sync[0]) if len(sync) == 1 else None


def wait_healthy(cluster: CliCluster, steady: float = 2.0) -> tuple[Node, Node]:
    """Wait until :func:`healthy` gives the same answer for ``steady`` seconds."""
    first: list[Any] = [None, 0.0]

    def stable() -> tuple[str, str] | None:
        now = healthy(cluster)
        if now is None or now != first[0]:
            first[:] = [now, time.monotonic()]
            return None
        return now if time.monotonic() - first[1] >= steady else None

    found = wait_for(stable, WAIT, interval=0.5, what="one active, two streaming standbys")
    assert isinstance(found, tuple)
    return cluster.nodes[found[0]], cluster.nodes[found[1]]


def calls(node: Node) -> list[dict[str, Any]]:
    path = control_dir(node.data_dir) / CALLS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def control(node: Node, name: str, text: str | None) -> None:
    """Create (``text``) or remove (None) one of the plugin's control files on ``node``."""
    path = control_dir(node.data_dir) / name
    if text is None:
        path.unlink(missing_ok=True)
    else:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)


def in_recovery(node: Node) -> bool | None:
    try:
        with node.connect() as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    except psycopg.Error:
        return None
    assert row is not None
    return bool(row[0])


def request_switchover(cluster: CliCluster, target: Node) -> None:
    """Post the request and return at once (the CLI's wait is cut short on purpose)."""
    cluster.cli("cluster", "switchover", "--to", target.name, "--timeout", "0.5", code=None)


def restart(node: Node) -> None:
    """A new agent process for ``node`` (its log file goes on)."""
    assert node.proc is not None and not node.proc.alive(), f"{node.name} still runs"
    node.proc = None
    node.start()


@contextlib.contextmanager
def poller(cluster: CliCluster) -> Iterator[checker.Poller]:
    watcher = checker.Poller({name: conninfo(n) for name, n in cluster.nodes.items()}).start()
    try:
        yield watcher
    finally:
        watcher.stop()


def writable_samples(watcher: checker.Poller, node: str) -> list[checker.Sample]:
    return [s for s in watcher.samples()[node] if s.writable]


def assert_one_writer(watcher: checker.Poller) -> None:
    samples = watcher.samples()
    found = checker.overlaps(samples)
    assert not found, f"two nodes writable at once: {found[:3]}"
    unresolved = watcher.unresolved()
    assert not unresolved, f"probes whose outcome nobody knows: {unresolved[:3]}"


def insert_everywhere(cluster: CliCluster, active: Node, run: str, ident: int) -> None:
    """One synchronous write on the active; wait until every node holds it."""
    with psycopg.connect(conninfo(active), autocommit=True) as conn:
        conn.execute(f"INSERT INTO {checker.SCHEMA}.writes (run, id) VALUES (%s, %s)", (run, ident))
    for node in cluster.nodes.values():

        def holds(where: str = conninfo(node)) -> bool:
            return checker.present_ids(where, run, [ident]) == {ident}

        wait_for(
            holds,
            WAIT,
            interval=0.2,
            what=f"row {ident} of {run} on {node.name}",
        )


# -- the tests ----------------------------------------------------------------------------


def test_hooks_run_in_order_and_a_veto_keeps_the_target_a_standby(real: CliCluster) -> None:
    old, _ = wait_healthy(real)
    checker.prepare(conninfo(old))
    target = next(n for n in real.nodes.values() if n is not old)
    seen_old, seen_target = len(calls(old)), len(calls(target))
    control(target, "veto", "the test says no")
    try:
        request_switchover(real, target)

        def vetoes() -> list[dict[str, Any]]:
            since = calls(target)[seen_target:]
            promoted = [
                c for c in since if c["hook"] == "after_promote" or c.get("new") == "active"
            ]
            assert not promoted, f"{target.name} promoted despite its veto: {since}"
            return [c for c in since if c["hook"] == "before_promote"]

        wait_for(lambda: len(vetoes()) >= 1, WAIT, interval=0.2, what=f"{target.name}'s veto")
        assert vetoes()[0]["veto"] == "the test says no"
        # The target backs off and campaigns again; meanwhile it never takes writes.
        wait_for(lambda: len(vetoes()) >= 2, WAIT, interval=0.2, what="a second attempt")
        assert all(c["veto"] for c in vetoes()), vetoes()
        assert in_recovery(target) is True, "a vetoed promotion promoted the database"
        assert status_codes(real)[target.name] != 200
        vetoes()  # still no promotion
    finally:
        control(target, "veto", None)
    wait_for(
        lambda: status_codes(real)[target.name] == 200,
        WAIT,
        interval=0.2,
        what=f"{target.name} active once the veto is lifted",
    )
    new, _ = wait_healthy(real)
    assert new is target

    # Leave out the vetoed attempts and the role changes around them (standby <-> starting).
    promoted = [
        c
        for c in calls(target)[seen_target:]
        if not c.get("veto") and (c["hook"] != "role_changed" or c["new"] == "active")
    ]
    assert [c["hook"] for c in promoted][:3] == [
        "before_promote",
        "after_promote",
        "role_changed",
    ], promoted
    assert promoted[2]["new"] == "active", promoted
    demoted = [
        c for c in calls(old)[seen_old:] if c["hook"] != "role_changed" or c["old"] == "active"
    ]
    assert [c["hook"] for c in demoted][:3] == [
        "before_demote",
        "after_demote",
        "role_changed",
    ], demoted
    # The old active was out before the new one was in.
    assert demoted[1]["at"] < promoted[0]["at"]


def test_agent_killed_in_the_middle_of_a_promotion_recovers(real: CliCluster) -> None:
    """SIGKILL of the agent inside ``after_promote``: its database is writable and its lease
    was renewed just before, so its fence keeper must fence it by that lease's deadline; the
    agent is restarted only after the lease expired, and the cluster converges."""
    old, _ = wait_healthy(real)
    checker.prepare(conninfo(old))
    victim = next(n for n in real.nodes.values() if n is not old)
    run = f"mid-{secrets.token_hex(3)}"
    insert_everywhere(real, old, run, 1)
    held = control_dir(victim.data_dir) / "held-after_promote"
    held.unlink(missing_ok=True)
    control(victim, "hold-after_promote", "1")
    try:
        with poller(real) as watcher:
            request_switchover(real, victim)
            wait_for(held.exists, WAIT, interval=0.1, what=f"{victim.name} inside after_promote")
            assert in_recovery(victim) is False, "after_promote runs on a writable database"
            assert victim.proc is not None
            victim.proc.kill()
            killed_at = time.monotonic()
            if WITHOUT_KEEPER:
                keeper = victim.keeper()
                if keeper is not None:
                    os.kill(keeper, signal.SIGKILL)
            control(victim, "hold-after_promote", None)
            # No agent on the victim until its lease is long gone: only the keeper can fence.
            time.sleep(max(0.0, killed_at + TTL + 3.0 - time.monotonic()))
            restarted_at = time.monotonic()
            restart(victim)
            active, _ = wait_healthy(real)
            insert_everywhere(real, active, run, 2)
    finally:
        control(victim, "hold-after_promote", None)
    before_restart = [s for s in writable_samples(watcher, victim.name) if s.at_from < restarted_at]
    assert before_restart, f"{victim.name} was never seen writable"
    last = before_restart[-1]
    print(f"{victim.name} last writable {last.at_to - killed_at:.2f}s after the kill")
    assert last.at_to <= killed_at + TTL - MARGIN + ALLOWANCE, (
        f"{victim.name}'s database writable {last.at_to - killed_at:.2f}s after its agent died"
        f" in a promotion; its lease could expire {TTL - MARGIN:.1f}s after (+{ALLOWANCE}s)"
    )
    assert_one_writer(watcher)
    for node in real.nodes.values():
        assert checker.present_ids(conninfo(node), run, [1, 2]) == {1, 2}, node.name
    assert list(status_codes(real).values()).count(200) == 1


def history(cluster: CliCluster) -> list[dict[str, Any]]:
    entries = json.loads(cluster.cli("cluster", "history", "-o", "json").output)["history"]
    assert isinstance(entries, list)
    return entries


def started_at(node: Node) -> object:
    with node.connect() as conn:
        row = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
    assert row is not None
    return row[0]


def test_a_promotion_slower_than_the_ttl_keeps_its_lease(real: CliCluster) -> None:
    """``after_promote`` takes longer than the ttl: the renewal thread keeps the new active's
    lease meanwhile, so it is never fenced and never has to win the lease again (without it,
    the lease lapsed inside the hook: the database was fenced, and the node campaigned and
    promoted a second time under a new token)."""
    old, _ = wait_healthy(real)
    target = next(n for n in real.nodes.values() if n is not old)
    seen, known = len(calls(target)), len(history(real))
    control(target, "slow-after_promote", str(TTL + 3.0))
    try:
        request_switchover(real, target)
        wait_for(
            lambda: any(c["hook"] == "after_promote" for c in calls(target)[seen:]),
            WAIT,
            interval=0.1,
            what=f"{target.name} inside its slow after_promote",
        )
        began = started_at(target)  # the database is writable, its postmaster running
        time.sleep(TTL + 3.0)  # the hook outlasts the lease's ttl
    finally:
        control(target, "slow-after_promote", None)
    active, _ = wait_healthy(real)
    assert active is target
    assert started_at(target) == began, f"{target.name}'s database was fenced after promoting"
    entries = history(real)[known:]
    assert [e["node"] for e in entries] == [target.name], (
        f"{target.name} lost the lease it promoted under: {entries}"
    )


def test_active_fences_before_its_lease_can_expire_when_the_store_freezes(
    real: CliCluster,
) -> None:
    leader, _ = wait_healthy(real)
    checker.prepare(conninfo(leader))
    stores = {name: n.store_server() for name, n in real.nodes.items()}
    assert all(stores.values()), f"a store member is not running: {stores}"
    frozen = [pid for pid in stores.values() if pid is not None]
    if WITHOUT_FENCE:
        assert leader.proc is not None and leader.proc.pid is not None
        frozen += [leader.proc.pid, *[p for p in [leader.keeper()] if p is not None]]
    with poller(real) as watcher:
        wait_for(
            lambda: bool(writable_samples(watcher, leader.name)),
            WAIT,
            interval=0.1,
            what=f"{leader.name} seen writable",
        )
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            # Frozen past the lease's expiry: what must not happen (a standby promoted, the
            # active still writable) has had every chance to.
            time.sleep(max(0.0, frozen_at + TTL + 3.0 - time.monotonic()))
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        thawed_at = time.monotonic()
        wait_healthy(real)
    deadline = frozen_at + TTL - MARGIN
    during = [s for s in writable_samples(watcher, leader.name) if s.at_from < thawed_at]
    last = during[-1]
    print(f"{leader.name} last writable {last.at_to - frozen_at:.2f}s after the freeze")
    assert last.at_to <= deadline + ALLOWANCE, (
        f"{leader.name} writable {last.at_to - frozen_at:.2f}s after the freeze; its lease could"
        f" expire on the others {TTL - MARGIN:.1f}s after it (+{ALLOWANCE}s allowed)"
    )
    for name in real.nodes:
        if name != leader.name:
            promoted = [s for s in writable_samples(watcher, name) if s.at_from < thawed_at]
            assert not promoted, f"{name} took writes while the store was frozen"
    assert_one_writer(watcher)


def wal_senders(active: Node) -> list[int]:
    with active.connect() as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_replication").fetchall()
    assert len(rows) == 2, f"{active.name} streams to {len(rows)} standbys"
    return [int(row[0]) for row in rows]


def test_host_death_of_the_active_keeps_every_acknowledged_write(real: CliCluster) -> None:
    """The standbys lag when the active's host dies (its WAL senders are stopped for a second
    before, so what it wrote then never leaves it): in synchronous mode the active cannot
    acknowledge what its synchronous standby lacks, so the standby that takes over holds
    every acknowledged write."""
    old, sync = wait_healthy(real)
    checker.prepare(conninfo(old))
    run = f"host-{secrets.token_hex(3)}"
    hosts = {socket_dir(n): name for name, n in real.nodes.items()}
    writer = checker.Writer(writer_conninfo(real), hosts, run=run).start()
    senders: list[int] = []
    try:
        wait_for(lambda: len(writer.acks()) >= 20, WAIT, interval=0.1, what="acknowledged writes")
        senders = wal_senders(old)
        for pid in senders:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(1.0)  # the writer goes on (or waits, in synchronous mode)
        old.crash()  # the stopped senders die with the rest of the server

        def new_active() -> str | None:
            active = [n for n, code in status_codes(real).items() if code == 200 and n != old.name]
            return active[0] if len(active) == 1 else None

        new = real.nodes[str(wait_for(new_active, WAIT, interval=0.2, what="a new active"))]
        if not ASYNC:
            assert new is sync, "in synchronous mode only the synchronous standby may take over"
        wait_for(
            lambda: any(a.node == new.name for a in writer.acks()),
            WAIT,
            interval=0.2,
            what=f"writes acknowledged by {new.name}",
        )
    finally:
        for pid in senders:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        writer.stop()
    acked = {a.id for a in writer.acks()}
    by_old = {a.id for a in writer.acks() if a.node == old.name}
    assert by_old, "no write was acknowledged by the old active"
    missing = acked - checker.present_ids(conninfo(new), run, acked)
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {sorted(missing)[:5]}"
    # The dead host comes back: it rejoins as a standby of the new active, with every write.
    restart(old)
    active, _ = wait_healthy(real)
    assert active is new
    wait_for(
        lambda: checker.present_ids(conninfo(old), run, acked) == acked,
        WAIT,
        interval=0.5,
        what=f"{old.name} to hold every acknowledged write",
    )
