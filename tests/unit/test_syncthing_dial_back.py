"""Which refused callers a Syncthing node dials back, and for how long (no Syncthing needed)."""

from __future__ import annotations

import time

from hacore_plugins.syncthing.dial_back import DialBacks, refused_callers

#: "A..." < "M..." < "Z...": this node is M; A dials it, it dials Z
OWN, SMALLER, LARGER = "M" * 7, "A" * 7, "Z" * 7


def _refused(*devices: str) -> dict[str, object]:
    added = [{"deviceID": d, "name": "", "address": "127.0.0.1:1"} for d in devices]
    return {"id": 1, "type": "PendingDevicesChanged", "data": {"added": added}}


def test_only_added_pending_devices_count_as_refused_calls() -> None:
    removed = {"id": 2, "type": "PendingDevicesChanged", "data": {"removed": [{"deviceID": "X"}]}}
    other = {"id": 3, "type": "StateChanged", "data": {"folder": "f"}}
    odd = {"id": 4, "type": "PendingDevicesChanged", "data": {"added": "garbage"}}
    assert refused_callers([_refused(SMALLER, LARGER), removed, other, odd]) == {SMALLER, LARGER}


def test_a_refusal_seen_before_the_peer_is_known_is_dialed_back_once_it_is() -> None:
    dial = DialBacks()
    dial.note([_refused(SMALLER)])
    assert not dial.begin([], own_id=OWN, managed=True)
    assert dial.begin([SMALLER], own_id=OWN, managed=True)
    assert dial.devices == {SMALLER}
    # consumed: once connected and ended, the same refusal does not start it again
    assert dial.end([SMALLER])
    assert not dial.begin([SMALLER], own_id=OWN, managed=True)
    assert dial.idle


def test_no_dial_back_when_it_is_this_node_s_turn_connected_or_unmanaged() -> None:
    dial = DialBacks()
    dial.note([_refused(LARGER, SMALLER)])
    assert not dial.begin([LARGER, SMALLER], connected=[SMALLER], own_id=OWN, managed=True)
    dial.note([_refused(SMALLER)])
    assert not dial.begin([SMALLER], own_id=OWN, managed=False)
    assert dial.devices == frozenset()


def test_pending_devices_count_too_and_the_dial_back_ends_after_its_window() -> None:
    dial = DialBacks(window=0.05)
    assert dial.begin([SMALLER], pending=[SMALLER], own_id=OWN, managed=True)
    assert not dial.end([])
    time.sleep(0.06)
    assert dial.end([])
    assert dial.idle


def test_a_refusal_is_forgotten_after_the_window() -> None:
    dial = DialBacks(window=0.05)
    dial.note([_refused(SMALLER)])
    time.sleep(0.06)
    assert not dial.begin([SMALLER], own_id=OWN, managed=True)
    assert dial.idle
