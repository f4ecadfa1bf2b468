"""The consensus contract, leadership: one leader at a time, fencing tokens that only grow,
a resign or a killed leader handing over within the TTL, sessions that live while renewed."""

from __future__ import annotations

import functools
import threading
import time
from pathlib import Path
from typing import Any

from hacore.backends.consensus import LEADER_KEY, ConsensusBackend
from hacore.backends.records import EventKind, Leader, Lease, Member, NodeRole, WatchEvent
from hacore.testing.contract_support import VISIBLE, KillableLeader, eventually
from hacore.testing.harness import ConsensusHarness
from hacore.testing.pytest_plugin import ConsensusFactory

#: TTL of the leaders that are killed: short, since the test waits for it to run out.
SHORT_TTL = 3.0
#: How long a contender waits on its watch: far beyond any handover, so only an event wakes it.
WATCH_PATIENCE = 120.0


def _campaign_all(backends: list[ConsensusBackend]) -> list[Lease | BaseException | None]:
    """Every backend campaigns at the same instant, each from its own thread."""
    barrier = threading.Barrier(len(backends))
    results: list[Lease | BaseException | None] = [None] * len(backends)

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[index] = backends[index].campaign()
        except Exception as err:
            results[index] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(backends))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


class LeadershipContract:
    """Campaign, resign, renew and expiry of the leader key."""

    def test_campaign_is_mutually_exclusive(self, consensus_factory: ConsensusFactory) -> None:
        contenders = [consensus_factory(f"node{i}") for i in range(10)]
        for _ in range(3):
            results = _campaign_all(contenders)
            errors = [r for r in results if isinstance(r, BaseException)]
            assert not errors, f"campaign raised: {errors!r}"
            winners = [(c, r) for c, r in zip(contenders, results, strict=True) if r is not None]
            assert len(winners) == 1, f"{len(winners)} contenders won: {winners!r}"
            winner, lease = winners[0]
            assert isinstance(lease, Lease)
            assert lease.holder == winner.node_name
            expected = Leader(name=winner.node_name, token=lease.token)
            for contender in contenders:
                eventually(
                    functools.partial(_sees_leader, contender, expected),
                    VISIBLE,
                    f"{contender.node_name} sees {expected}",
                )
            assert winner.renew(lease) is True
            winner.resign(lease)
            contenders.remove(winner)

    def test_campaign_while_leader_returns_current_lease(
        self, consensus_factory: ConsensusFactory
    ) -> None:
        node = consensus_factory("a")
        lease = node.campaign()
        assert lease is not None
        again = node.campaign()
        assert again is not None
        assert (again.holder, again.token) == (lease.holder, lease.token)
        assert node.renew(again) is True

    def test_campaign_leaves_an_earlier_sessions_key_alone(
        self, consensus_factory: ConsensusFactory
    ) -> None:
        """A restarted agent (same node name, new session) must not adopt its old session's
        leader key: it could never renew it. The agent asks ``campaign()`` whenever the key
        names it, so this None is what keeps that safe."""
        earlier = consensus_factory("a")
        lease = earlier.campaign()
        assert lease is not None
        restarted = consensus_factory("a")
        assert restarted.campaign() is None
        assert restarted.leader() == Leader(name="a", token=lease.token)
        assert earlier.renew(lease) is True

    def test_fencing_token_increases_over_handovers(
        self, consensus_factory: ConsensusFactory
    ) -> None:
        nodes = [consensus_factory(f"node{i}") for i in range(3)]
        tokens: list[int] = []
        for handover in range(20):
            node = nodes[handover % len(nodes)]
            lease = node.campaign()
            assert lease is not None, f"handover {handover}: {node.node_name} did not win"
            assert node.leader() == Leader(name=node.node_name, token=lease.token)
            if tokens:
                assert lease.token > tokens[-1], f"tokens do not increase: {[*tokens, lease]}"
            tokens.append(lease.token)
            node.resign(lease)

    def test_resign_wakes_a_waiting_contender_at_once(
        self, consensus_factory: ConsensusFactory
    ) -> None:
        """The contender waits on its watch far longer than the test runs, so nothing but the
        watch's report of the deletion can make it campaign again: the handover is proven by
        that event, not by a number (benchmarks/wakeups.py measures how long it takes)."""
        holder, contender = consensus_factory("holder"), consensus_factory("contender")
        lease = holder.campaign()
        assert lease is not None
        waiting, stop = threading.Event(), threading.Event()
        won: list[float] = []
        woken_by: list[WatchEvent | None] = []
        failures: list[BaseException] = []

        def contend() -> None:
            try:
                with contender.watch(LEADER_KEY) as watcher:
                    while not stop.is_set():
                        if contender.campaign() is not None:
                            won.append(time.monotonic())
                            return
                        waiting.set()
                        # Opened before the campaign: a deletion after it is queued, never
                        # missed, whenever this get starts.
                        woken_by.append(watcher.get(timeout=WATCH_PATIENCE))
            except Exception as err:
                failures.append(err)

        thread = threading.Thread(target=contend)
        thread.start()
        try:
            assert waiting.wait(30), "the contender never campaigned"
            resigned = time.monotonic()
            holder.resign(lease)
            thread.join(timeout=WATCH_PATIENCE / 2)
        finally:
            stop.set()
            thread.join(timeout=WATCH_PATIENCE)
        assert not failures, f"contender failed: {failures!r}"
        assert won, f"the contender never won after the resign; its watch gave {woken_by}"
        assert woken_by and woken_by[-1] is not None, f"not woken by the watch: {woken_by}"
        assert (woken_by[-1].kind, woken_by[-1].key) == (EventKind.DELETE, LEADER_KEY), woken_by
        print(f"handover {won[0] - resigned:.3f}s after the resign")
        leader = contender.leader()
        assert leader is not None and leader.name == "contender"

    def test_killed_leader_loses_key_within_ttl(
        self,
        consensus_harness: ConsensusHarness,
        consensus_factory: ConsensusFactory,
        tmp_path: Path,
    ) -> None:
        observer = consensus_factory("observer")
        holder = KillableLeader(
            consensus_harness,
            consensus_factory,
            consensus_factory.namespace,
            tmp_path,
            name="holder",
            ttl=SHORT_TTL,
        )
        try:
            token = holder.start()
            expected = Leader(name="holder", token=token)
            eventually(lambda: observer.leader() == expected, VISIBLE, f"leader is {expected}")
            eventually(
                lambda: "holder" in [m.name for m in observer.members()],
                VISIBLE,
                "the holder's member record is published",
            )
            seen: dict[tuple[EventKind, str], float] = {}
            stop = threading.Event()
            with observer.watch("") as watcher:

                def watch() -> None:
                    while not stop.is_set():
                        event = watcher.get(timeout=0.1)
                        if event is not None:
                            seen.setdefault((event.kind, event.key), time.monotonic())

                thread = threading.Thread(target=watch)
                thread.start()
                try:
                    killed = time.monotonic()
                    holder.kill()
                    leader_gone = _poll_until(
                        lambda: observer.leader() is None, SHORT_TTL + 15, "the leader key is gone"
                    )
                    member_gone = _poll_until(
                        lambda: "holder" not in [m.name for m in observer.members()],
                        10,
                        "the holder's member record is gone",
                    )
                    eventually(
                        lambda: (EventKind.DELETE, LEADER_KEY) in seen,
                        VISIBLE,
                        "the watcher to report the deletion of the leader key",
                    )
                finally:
                    stop.set()
                    thread.join(timeout=10)
        finally:
            holder.stop()
        # What a standby waits for before it may campaign: the promise "one active again
        # within 2 x ttl" rests on the dead leader's key going within ttl (+ one second for
        # the store's own expiry tick). How fast the watch reports it is a number:
        # benchmarks/consensus.py measures it.
        budget = SHORT_TTL + 1.0
        assert leader_gone - killed <= budget, (
            f"leader key vanished {leader_gone - killed:.2f}s after the kill (ttl {SHORT_TTL:g}s)"
        )
        assert member_gone - killed <= budget, (
            f"member record vanished {member_gone - killed:.2f}s after the kill "
            f"(ttl {SHORT_TTL:g}s)"
        )
        assert (EventKind.DELETE, LEADER_KEY) in seen, f"no deletion of the leader key: {seen}"

    def test_renewed_session_outlives_its_ttl(self, consensus_factory: ConsensusFactory) -> None:
        leader = consensus_factory("leader", ttl=SHORT_TTL)
        standby = consensus_factory("standby", ttl=SHORT_TTL)
        observer = consensus_factory("observer")
        lease = leader.campaign()
        assert lease is not None
        leader.publish_member(Member(name="leader", role=NodeRole.ACTIVE))
        standby.publish_member(Member(name="standby", role=NodeRole.STANDBY))
        until = time.monotonic() + 2.5 * SHORT_TTL
        while time.monotonic() < until:
            time.sleep(SHORT_TTL / 4)
            assert leader.renew(lease) is True, "renew of a live lease failed"
            assert standby.keepalive() is True, "keepalive of a live session failed"
        assert observer.leader() == Leader(name="leader", token=lease.token)
        assert [m.name for m in observer.members()] == ["leader", "standby"]

    def test_renew_fails_once_leadership_is_lost(self, consensus_factory: ConsensusFactory) -> None:
        first, second, third = (consensus_factory(n) for n in ("first", "second", "third"))
        old = first.campaign()
        assert old is not None
        first.resign(old)
        new = second.campaign()
        assert new is not None, "campaign after resign must win"
        assert first.renew(old) is False, "renew of a resigned lease held by another node"
        first.resign(old)
        assert second.leader() == Leader(name="second", token=new.token), (
            "a stale resign removed the new leader"
        )
        assert second.renew(new) is True
        assert third.delete(LEADER_KEY) is True, "the leader key is a key of the namespace"
        assert second.renew(new) is False, "renew after the leader key was deleted"


def _sees_leader(backend: ConsensusBackend, expected: Leader) -> bool:
    return backend.leader() == expected


def _poll_until(predicate: Any, timeout: float, what: str) -> float:
    """The monotonic time ``predicate`` first held (store outages retried)."""
    eventually(predicate, timeout, what)
    return time.monotonic()
