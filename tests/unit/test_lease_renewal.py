"""The renewal thread's rules (hacore/agent/renewal.py) and the shared lease it renews
(hacore/agent/lease.py): when a renewal is sent, and that one never moves the deadline beyond
what the store granted, nor a deadline that has passed, nor a lease the loop dropped."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from deadline_chain import deadline_chain

from hacore.agent.checks import LoopFacts, LoopHeartbeat
from hacore.agent.counters import EventCounters
from hacore.agent.lease import STALL_TTLS, LeaseState
from hacore.agent.renewal import Renewal, next_renewal, renewal_interval
from hacore.agent.vocabulary import DecisionConfig
from hacore.backends.records import Lease
from hacore.config.timing import TIMING_PROFILES
from hacore.testing.memory import MemoryConsensus

TTL, SAFETY, RETRY, LOOP = 3.0, 1.1, 0.5, 0.5


def _lease(token: int = 7) -> Lease:
    return Lease(holder="a", token=token, ttl=TTL, acquired_at=0.0)


def _plan(**given: float | None) -> float | None:
    args: dict[str, float | None] = {
        "now": 100.0,
        "last_renewal": 100.0,
        "every": 0.7,
        "gate": 101.9,
        "retry_timeout": RETRY,
        "busy_since": None,
        "stall": 9.0,
    }
    args.update(given)
    return next_renewal(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("profile", sorted(TIMING_PROFILES))
def test_the_thread_renews_only_when_the_loop_is_late_and_twice_before_the_last_call(
    profile: str,
) -> None:
    t = TIMING_PROFILES[profile]
    cfg = DecisionConfig(
        ttl=t.ttl,
        loop_wait=t.loop_wait,
        retry_timeout=t.retry_timeout,
        safety_margin=t.safety_margin,
    )
    every = renewal_interval(cfg)
    assert every > t.loop_wait, "a loop on time renews before the thread would"
    last_call = t.ttl - t.safety_margin - t.retry_timeout
    assert 2 * every <= last_call + 1e-9, "a failed first attempt leaves time for a second"


def test_a_renewal_is_due_every_interval_and_never_after_the_last_call() -> None:
    assert _plan(last_renewal=None) is None  # no lease, nothing to renew
    assert _plan() == pytest.approx(100.7)
    # a long interval is cut to the last moment a renewal still ends before the deadline
    assert _plan(every=5.0) == pytest.approx(101.4)
    assert _plan(now=101.5) is None  # too late: the loop fences
    assert _plan(now=101.5, gate=None) == pytest.approx(100.7)  # paused or fenced: no gate


def test_a_loop_stuck_for_good_loses_its_lease() -> None:
    assert _plan(now=100.5, busy_since=92.0) == pytest.approx(100.7)  # busy 8.5 s of 9
    assert _plan(now=100.5, busy_since=91.5) is None  # busy 9 s: taken for hung


def test_renewals_only_move_the_deadline_forward() -> None:
    told: list[float | None] = []
    state = LeaseState()
    state.listener = lambda: told.append(state.last_renewal)
    state.won(_lease(), 10.0)
    state.renewed(12.0)
    state.renewed(11.0)  # an older renewal answered late: the later one still stands
    assert state.last_renewal == 12.0
    assert told == [10.0, 12.0, 12.0]


def test_a_renewal_from_outside_the_loop_counts_only_for_the_lease_still_held() -> None:
    state = LeaseState()
    held = _lease()
    state.won(held, 10.0)
    assert state.renewed_in_time(held, 11.0, 11.2, lambda: 12.0)
    assert state.last_renewal == 11.0
    # answered after the deadline in force: the loop may be fencing; nothing moves
    assert not state.renewed_in_time(held, 11.5, 12.5, lambda: 12.0)
    assert state.last_renewal == 11.0
    # the loop renewed later meanwhile: taken, nothing moves back
    state.renewed(11.8)
    assert state.renewed_in_time(held, 11.6, 11.9, lambda: 14.0)
    assert state.last_renewal == 11.8
    # replaced by a new lease (an equal one included), or dropped: not this renewal's
    state.won(_lease(), 13.0)
    assert not state.renewed_in_time(held, 13.5, 13.6, lambda: None)
    assert state.last_renewal == 13.0
    state.drop()
    assert not state.renewed_in_time(held, 14.0, 14.1, lambda: None)
    assert state.lease is None and state.last_renewal is None


@attrs.frozen
class Wired:
    consensus: MemoryConsensus
    lease: LeaseState
    renewal: Renewal
    woken: list[bool]


@pytest.fixture
def wired(tmp_path: Path) -> Iterator[Wired]:
    with deadline_chain(
        tmp_path, ttl=TTL, loop_wait=LOOP, retry_timeout=RETRY, safety_margin=SAFETY
    ) as chain:
        woken: list[bool] = []
        renewal = Renewal(
            chain.consensus,
            chain.lease,
            chain.deadline,
            chain.dcfg,
            log=chain.log,
            wake=lambda: woken.append(True),
            counters=EventCounters(),
        )
        yield Wired(chain.consensus, chain.lease, renewal, woken)


def test_a_busy_loop_keeps_its_lease_and_a_lost_one_only_wakes_the_loop(wired: Wired) -> None:
    assert wired.renewal.step() == wired.renewal.every  # no lease: nothing sent
    held = wired.consensus.campaign()
    assert held is not None
    now = time.monotonic()
    wired.lease.won(held, now - 1.0)  # the loop has not renewed for 1 s: past the interval
    wired.renewal.busy_since = now - 1.0
    assert wired.renewal.step() == 0.0
    assert wired.renewal.renewals == 1
    assert wired.lease.last_renewal is not None and wired.lease.last_renewal >= now
    # not yet due again
    assert 0.0 < wired.renewal.step() <= wired.renewal.every
    # a loop busy for STALL_TTLS * ttl gets no more renewals
    wired.lease.won(held, time.monotonic() - 1.0)  # renewals only move forward: set it back
    wired.renewal.busy_since = time.monotonic() - STALL_TTLS * TTL
    wired.renewal.step()
    assert wired.renewal.renewals == 1
    # the leader key gone: the thread neither drops the lease nor moves it; it wakes the loop
    wired.renewal.busy_since = None
    wired.consensus.resign(held)
    before = wired.lease.last_renewal
    wired.renewal.step()
    assert wired.woken == [True]
    assert wired.lease.lease is held and wired.lease.last_renewal == before
    wired.renewal.step()  # and sends nothing more for that lease
    assert wired.woken == [True]


def test_a_long_iteration_fails_the_loop_check_only_once_the_thread_gives_it_up() -> None:
    """A promotion that outlasts the ttl keeps its lease (the thread renews): its loop check
    must not step it down for that; a loop stuck as long as the thread renews for it must."""
    facts = LoopFacts("a")
    check = LoopHeartbeat(facts, TTL)
    facts.previous_loop_at, facts.loop_at = 100.0, 100.0 + 2 * TTL
    assert check.run().ok
    facts.loop_at = 100.0 + STALL_TTLS * TTL + 0.1
    assert not check.run().ok
