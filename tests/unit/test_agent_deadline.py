"""The self-fencing deadline and the store gate, as the composition root wires them
(hacore/agent/deadline.py): the lease's deadline, moved by failsafe confirmations (rule F1),
and store calls refused while the database may write unless they can end before it (none
while paused)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from deadline_chain import deadline_chain

from hacore.agent.counters import Event, EventCounters
from hacore.agent.deadline import Deadline, StoreGate
from hacore.agent.failsafe_edge import FailsafeEdge
from hacore.agent.lease import LeaseState
from hacore.agent.pause_control import PauseControl
from hacore.agent.vocabulary import Pause
from hacore.backends.records import Lease
from hacore.errors import StoreUnavailableError

TTL, SAFETY, RETRY = 10.0, 2.0, 1.0


@attrs.frozen
class Wired:
    lease: LeaseState
    failsafe: FailsafeEdge
    pause: PauseControl
    deadline: Deadline
    gate: StoreGate
    counters: EventCounters


@pytest.fixture
def wired(tmp_path: Path) -> Iterator[Wired]:
    with deadline_chain(
        tmp_path, ttl=TTL, loop_wait=1.0, retry_timeout=RETRY, safety_margin=SAFETY, failsafe=True
    ) as chain:
        counters = EventCounters()
        gate = StoreGate(chain.deadline, RETRY, counters)
        yield Wired(chain.lease, chain.failsafe, chain.pause, chain.deadline, gate, counters)


def _held(lease: LeaseState, renewed: float) -> None:
    lease.won(Lease(holder="a", token=7, ttl=TTL, acquired_at=renewed), renewed)


def test_without_a_lease_there_is_no_deadline_and_every_call_is_sent(wired: Wired) -> None:
    assert wired.deadline() is None and wired.deadline.gate() is None
    assert wired.gate(lambda: "sent") == "sent"


def test_a_call_that_could_end_past_the_deadline_is_not_sent(wired: Wired) -> None:
    now = time.monotonic()
    _held(wired.lease, now)
    assert wired.deadline() == pytest.approx(now + TTL - SAFETY)
    assert wired.gate(lambda: "sent") == "sent"  # a full budget left
    _held(wired.lease, now - (TTL - SAFETY) + RETRY / 2)  # half a retry_timeout left
    sent: list[str] = []
    with pytest.raises(StoreUnavailableError, match="self-fencing deadline is too close"):
        wired.gate(lambda: sent.append("sent"))
    assert sent == []
    assert wired.counters.counts().get(Event.STORE_ERROR) == 1
    wired.lease.may_write = False  # fenced: the store may take its time
    assert wired.deadline.gate() is None and wired.gate(lambda: "sent") == "sent"


def test_while_paused_no_call_is_held_back(wired: Wired) -> None:
    _held(wired.lease, time.monotonic() - TTL)  # past the deadline
    wired.pause.note(Pause("operator", time.time(), "maintenance"), wired.pause.turn)
    assert wired.pause.paused and wired.deadline.gate() is None
    assert wired.gate(lambda: "sent") == "sent"
    wired.pause.note(None, wired.pause.turn)
    with pytest.raises(StoreUnavailableError):
        wired.gate(lambda: "sent")


def test_failsafe_confirmations_move_the_deadline_only_while_they_hold(wired: Wired) -> None:
    now = time.monotonic()
    _held(wired.lease, now)
    own = now + TTL - SAFETY
    wired.failsafe.confirmations.expiry = own + 20.0
    assert wired.deadline() == pytest.approx(own)  # a round that is not holding moves nothing
    wired.failsafe.holding = True
    assert wired.deadline() == pytest.approx(own + 20.0 - SAFETY)
    wired.failsafe.confirmations.expiry = own - 5.0  # earlier than the lease's: no earlier
    assert wired.deadline() == pytest.approx(own)
