"""When a Syncthing node calls a peer again, and what address it gives it (no Syncthing)."""

from __future__ import annotations

from hacore_plugins.syncthing.redial import Redials, with_redial

PEER, OTHER = "P" * 7, "Q" * 7


def _event(kind: str, device: str) -> dict[str, object]:
    return {"id": 1, "type": kind, "data": {"id": device}}


def test_each_call_is_a_new_address_and_none_is_the_address_itself() -> None:
    assert with_redial("tcp://127.0.0.1:22000", 0) == "tcp://127.0.0.1:22000"
    assert with_redial("tcp://127.0.0.1:22000", 3) == "tcp://127.0.0.1:22000?redial=3"
    assert with_redial("tcp://h:1?x=1", 2) == "tcp://h:1?x=1&redial=2"


def test_a_watched_peer_is_called_every_interval_until_connected() -> None:
    redials = Redials(interval=1.0, window=20.0)
    redials.watch([PEER], now=0.0)
    assert redials.wake_in(now=0.0) == 1.0
    assert not redials.due({PEER}, set(), now=0.5)
    assert redials.due({PEER}, set(), now=1.0) == {PEER: 1}
    assert redials.due({PEER}, set(), now=2.0) == {PEER: 2}
    assert redials.counts() == {PEER: 2}
    # connected: no more calls, and the address it connected on stays
    assert not redials.due({PEER}, {PEER}, now=3.0)
    assert redials.counts() == {PEER: 2}
    # seen connected for a moment (a refused call): the window is still open
    assert redials.due({PEER}, set(), now=4.0)
    assert not redials.due({PEER}, set(), now=21.0)
    assert redials.idle


def test_the_window_ends_and_a_peer_no_longer_dialed_is_forgotten() -> None:
    redials = Redials(interval=1.0, window=2.5)
    redials.watch([PEER, OTHER], now=0.0)
    assert redials.due({PEER, OTHER}, set(), now=1.0) == {PEER: 1, OTHER: 1}
    assert redials.due({PEER}, set(), now=2.0) == {PEER: 2}
    assert redials.counts() == {PEER: 2}
    assert not redials.due({PEER}, set(), now=3.0)
    assert redials.idle
    assert redials.wake_in(now=3.0) is None


def test_a_refusal_opens_no_window_and_a_lasting_connection_lost_does() -> None:
    redials = Redials(interval=1.0, window=20.0, lasting=2.0)
    redials.note([_event("DeviceConnected", PEER)], now=10.0)
    redials.note([_event("DeviceDisconnected", PEER)], now=10.1)
    assert redials.idle
    redials.note([_event("DeviceConnected", PEER)], now=20.0)
    redials.note([_event("DeviceDisconnected", PEER)], now=30.0)
    assert not redials.idle
    assert redials.due({PEER}, set(), now=31.0)


def test_a_connection_made_and_dropped_keeps_the_window_open() -> None:
    """A refused call looks to the caller like a connection made, then dropped."""
    redials = Redials(interval=1.0, window=20.0)
    redials.watch([PEER], now=0.0)
    redials.note([{"type": "DeviceConnected", "data": "garbage"}, {"type": "StateChanged"}])
    redials.note([_event("DeviceConnected", PEER)], now=0.2)
    redials.note([_event("DeviceDisconnected", PEER)], now=0.21)
    assert redials.due({PEER}, set(), now=1.0)
