"""The timing profiles with a managed ZooKeeper server: the tick each profile gives it keeps
the takeover after the store's leader died with the active within ``2 x ttl``, and the session
the agent opens (timeout ``ttl``) is one the server grants."""

from __future__ import annotations

from typing import Any

import pytest

from hacore.config.node import load_config
from hacore.config.timing import PROFILE_STORE_SETTINGS, TIMING_PROFILES
from hacore_plugins.zookeeper import server as zk
from hacore_plugins.zookeeper.settings import DEFAULT_TICK_MS, ManagedSettings

PORTS = {"client_port": 2181, "peer_port": 2888, "election_port": 3888}
MANAGED: dict[str, Any] = {
    "node": {"name": "node-1", "host": "127.0.0.1"},
    "consensus": {"backend": "zookeeper", "managed": True, **PORTS},
}
#: a ZooKeeper election once its followers gave up on the leader: 0.4-0.7 s in 6 losses of
#: the leader on a loaded 2-core machine (docs/zookeeper.md, "Timing"), with room for more load
ELECTION_S = 1.0


def _managed(name: str) -> tuple[Any, ManagedSettings]:
    config = load_config({**MANAGED, "timing": {"profile": name}})
    return config.timing, ManagedSettings.parse(config.consensus.settings)


@pytest.mark.parametrize("name", sorted(TIMING_PROFILES))
def test_each_profile_keeps_the_takeover_after_a_store_leader_loss_within_two_ttl(
    name: str,
) -> None:
    """Followers give up on a silent leader after ``syncLimit`` ticks; the new leader then
    restarts every session's timer, the dead active's included: its lease outlives it by
    that wait, the election and a whole ttl (tests/integration/test_agent.py promises a new
    active within 2 x ttl of a crash)."""
    timing, store = _managed(name)
    # the limits a managed server runs with (ZooKeeperManagedStore: its tick, the rest default)
    silent_leader_s = zk.ServerLimits().sync_limit * store.tick_time_ms / 1000
    assert silent_leader_s + ELECTION_S + timing.ttl <= 2 * timing.ttl


@pytest.mark.parametrize("name", sorted(TIMING_PROFILES))
def test_each_profile_asks_a_session_the_managed_server_grants(name: str) -> None:
    """A managed server grants sessions of 2 ticks to 60 s (``ZooKeeperManagedStore``); the
    backend refuses to run on a session other than ``ttl``."""
    timing, store = _managed(name)
    assert 2 * store.tick_time_ms <= timing.ttl * 1000 <= 60_000


def test_the_fast_profile_gives_a_managed_zookeeper_a_100_ms_tick() -> None:
    assert _managed("fast")[1].tick_time_ms == 100
    assert dict(PROFILE_STORE_SETTINGS["fast"]["zookeeper"]) == {"tick_time_ms": 100}
    assert _managed("default")[1].tick_time_ms == DEFAULT_TICK_MS


def test_a_tick_given_beside_the_fast_profile_wins() -> None:
    raw = {**MANAGED, "timing": {"profile": "fast"}}
    raw["consensus"] = {**MANAGED["consensus"], "tick_time_ms": 250}
    assert ManagedSettings.parse(load_config(raw).consensus.settings).tick_time_ms == 250
