"""The timing profiles (``timing.profile``): each one's values pass the timing validator, keep
the self-fencing rules with a margin for a store election, and reach a managed etcd member."""

from __future__ import annotations

import math
from typing import Any

import pytest

from hacore.agent.runtime import _LAST_CALL_SLACK
from hacore.config.cluster_settings import ClusterWide, with_assignments
from hacore.config.node import load_config
from hacore.config.timing import PROFILE_STORE_SETTINGS, TIMING_PROFILES
from hacore.config.write_back import to_mapping
from hacore.errors import ConfigError
from hacore_plugins.etcd.settings import EtcdManagedSettings

#: tests/fault/test_partitions.py's ALLOWANCE (not importable from here)
FENCE_ALLOWANCE = 1.0
EXTERNAL: dict[str, Any] = {
    "node": {"name": "node-1", "host": "127.0.0.1"},
    "consensus": {"backend": "etcd", "endpoints": ["http://127.0.0.1:2379"]},
}
MANAGED: dict[str, Any] = {
    "node": {"name": "node-1", "host": "127.0.0.1"},
    "consensus": {"backend": "etcd", "managed": True},
}


def _with(base: dict[str, Any], **sections: Any) -> dict[str, Any]:
    return {**base, **sections}


@pytest.mark.parametrize("name", sorted(TIMING_PROFILES))
def test_each_profile_passes_the_timing_validator(name: str) -> None:
    timing = load_config(_with(EXTERNAL, timing={"profile": name})).timing
    assert timing == TIMING_PROFILES[name]
    assert timing.profile == name
    # the validator's rule (DESIGN §3 rule 1), stated again: a change of the rule or of a
    # profile must be looked at together
    assert timing.loop_wait + 2 * timing.retry_timeout + timing.safety_margin < timing.ttl
    # the fault tests allow a fence to lag its deadline by up to 1 s on a busy two-core machine
    # (tests/fault/test_partitions.py, ALLOWANCE): the margin must cover it
    assert timing.safety_margin > FENCE_ALLOWANCE


@pytest.mark.parametrize("name", sorted(TIMING_PROFILES))
def test_each_profile_leaves_a_managed_etcd_time_to_elect_before_the_last_renewal(
    name: str,
) -> None:
    """docs/etcd.md: the loop's last renewal before its deadline starts ``ttl -
    safety_margin - retry_timeout - slack`` after the previous one; a cut of the store's
    leader can come up to one ``loop_wait`` after that one; in what is left, an etcd election
    must fit in full (etcd randomises the timeout up to twice the setting)."""
    config = load_config(_with(MANAGED, timing={"profile": name}))
    timing = config.timing
    store = EtcdManagedSettings.parse(config.consensus.settings)
    last_renewal = timing.ttl - timing.safety_margin - timing.retry_timeout - _LAST_CALL_SLACK
    assert last_renewal - timing.loop_wait >= 2 * store.election_ms / 1000 - 1e-9
    # etcd raises a lease's TTL to 1.5 election timeouts (whole seconds): the profile's ttl
    # must be above it, or the lease would outlive the dead active by more than ttl
    assert math.ceil(1.5 * store.election_ms / 1000) <= timing.ttl


def test_the_fast_profile_halves_the_default_ttl_and_tightens_the_managed_store() -> None:
    fast = load_config(_with(MANAGED, timing={"profile": "fast"}))
    assert fast.timing.ttl <= TIMING_PROFILES["default"].ttl / 2
    store = EtcdManagedSettings.parse(fast.consensus.settings)
    assert (store.heartbeat_ms, store.election_ms) == (50, 300)
    assert dict(PROFILE_STORE_SETTINGS["fast"]["etcd"]) == {
        "heartbeat_interval": 50,
        "election_timeout": 300,
    }


def test_keys_given_beside_a_profile_win() -> None:
    raw = _with(
        MANAGED,
        timing={"profile": "fast", "ttl": 4},
        consensus={"backend": "etcd", "managed": True, "election_timeout": 600},
    )
    config = load_config(raw)
    assert (config.timing.ttl, config.timing.loop_wait) == (4, 0.5)
    assert EtcdManagedSettings.parse(config.consensus.settings).election_ms == 600


def test_an_external_store_gets_no_server_settings() -> None:
    config = load_config(_with(EXTERNAL, timing={"profile": "fast"}))
    assert "election_timeout" not in config.consensus.settings


def test_the_default_profile_is_the_defaults() -> None:
    config = load_config(EXTERNAL)
    assert config.timing == TIMING_PROFILES["default"]
    assert config.timing.profile == "default"


def test_an_unknown_profile_is_refused_with_the_choices() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_with(EXTERNAL, timing={"profile": "turbo"}))
    assert "timing.profile must be one of default, fast" in str(info.value)


def test_setting_the_profile_cluster_wide_takes_all_its_values() -> None:
    fast = with_assignments(ClusterWide(), {"timing.profile": "fast"})
    assert fast.timing == TIMING_PROFILES["fast"]
    assert with_assignments(fast, {"timing.profile": "default"}).timing == ClusterWide().timing
    mixed = with_assignments(ClusterWide(), {"timing.profile": "fast", "timing.ttl": "4"})
    assert (mixed.timing.ttl, mixed.timing.loop_wait) == (4, 0.5)


def test_the_default_profile_is_not_written_back() -> None:
    """A record or node.yaml without a profile in use stays readable by an older agent."""
    assert "profile" not in ClusterWide().to_mapping()["timing"]
    assert "profile" not in to_mapping(load_config(EXTERNAL))["timing"]
    fast = load_config(_with(EXTERNAL, timing={"profile": "fast"}))
    assert to_mapping(fast)["timing"]["profile"] == "fast"
    assert load_config(to_mapping(fast)).timing == fast.timing
