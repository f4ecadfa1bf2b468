"""``failover.minority_mode``: parsed like the other failover switches, off by default, and
refused by the PostgreSQL backend without the WAL level its salvage needs."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from hacore.config.node import load_config
from hacore.errors import ConfigError
from hacore.plugins.configured import load_config_and_plugins

BASE: dict[str, Any] = {
    "node": {"name": "node-1", "host": "127.0.0.1"},
    "consensus": {"backend": "etcd", "endpoints": ["http://127.0.0.1:2379"]},
}


def test_off_by_default_and_yaml_booleans_work() -> None:
    assert load_config(BASE).failover.minority_mode == "off"
    for raw, mode in (("on", "on"), ("off", "off"), ("true", "on"), ("'off'", "off")):
        config = load_config(yaml.safe_load(f"failover: {{minority_mode: {raw}}}") | BASE)
        assert config.failover.minority_mode == mode


def test_other_values_are_refused() -> None:
    with pytest.raises(ConfigError, match="minority_mode"):
        load_config({"failover": {"minority_mode": "sometimes"}} | BASE)


def _postgres(minority: str, wal_level: str | None) -> dict[str, Any]:
    replication: dict[str, Any] = {"backend": "postgresql"}
    if wal_level is not None:
        replication["parameters"] = {"wal_level": wal_level}
    return {"failover": {"minority_mode": minority}, "replication": replication} | BASE


def test_postgresql_needs_logical_wal_for_minority_mode() -> None:
    with pytest.raises(ConfigError, match="wal_level: logical"):
        load_config_and_plugins(_postgres("on", None))
    with pytest.raises(ConfigError, match="wal_level: logical"):
        load_config_and_plugins(_postgres("on", "replica"))
    config, _ = load_config_and_plugins(_postgres("on", "logical"))
    assert config.failover.minority_mode == "on"
    load_config_and_plugins(_postgres("off", None))
