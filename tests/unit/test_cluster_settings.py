"""The cluster-wide settings record: read from node.yaml, round trip through plain data, the
``config check`` messages for a bad record, and a node's configuration with it applied."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hacore.config.cluster_settings import (
    ClusterWide,
    from_mapping,
    ignored_options,
    is_cluster_wide,
    validated_for,
    with_assignments,
)
from hacore.config.node import NodeConfig, load_config
from hacore.errors import ConfigError
from hacore.plugins.registry import load_plugins
from hacore_plugins.postgresql.settings import default_bin_dir


def _config(**sections: Any) -> NodeConfig:
    raw: dict[str, Any] = {
        "node": {"name": "n1", "host": "127.0.0.1", "api_port": 8101, "data_dir": "/tmp/x/n1"},
        "consensus": {"backend": "etcd", "endpoints": ["http://127.0.0.1:2379"]},
        "replication": {"backend": "postgresql", "port": 5433, "parameters": {"work_mem": "8MB"}},
        "timing": {"ttl": 9, "loop_wait": 1},
        "failover": {"synchronous_mode": "on", "maximum_lag_on_failover": 1000},
        "checks": {"check_fail_fast": False},
    }
    raw.update(sections)
    return load_config(raw)


def _problems(raw: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        from_mapping(raw)
    return str(info.value).splitlines()


def test_read_from_a_node_configuration() -> None:
    wide = ClusterWide.from_config(_config())
    assert wide.timing.ttl == 9
    assert wide.failover.synchronous_mode == "on"
    assert wide.failover.maximum_lag_on_failover == 1000
    assert wide.checks.check_fail_fast is False
    assert dict(wide.parameters) == {"work_mem": "8MB"}


def test_round_trip_through_json() -> None:
    wide = ClusterWide.from_config(_config())
    data = json.loads(json.dumps(wide.to_mapping()))
    assert from_mapping(data) == wide
    assert from_mapping({}) == ClusterWide()


def test_parameters_are_kept_as_text() -> None:
    wide = from_mapping({"parameters": {"max_connections": 200, "fsync": True}})
    assert dict(wide.parameters) == {"max_connections": "200", "fsync": "on"}


def test_every_problem_is_one_line_like_config_check() -> None:
    assert _problems(
        {
            "timing": {"ttl": -1},
            "failover": {"synchronous_mode": "sometimes", "maximum_lag_on_failovr": 5},
            "checks": "no",
            "parameters": {"work_mem": ["8MB"]},
            "nodes": 3,
        }
    ) == [
        'cluster settings: unknown key "nodes" at top level '
        "(known keys: checks, failover, parameters, timing)",
        "cluster settings: timing.ttl must be a number of seconds > 0 (got -1)",
        'cluster settings: unknown key "maximum_lag_on_failovr" in failover; '
        'did you mean "maximum_lag_on_failover"?',
        "cluster settings: failover.synchronous_mode must be one of off, on, strict "
        '(got "sometimes")',
        'cluster settings: checks must be a mapping of keys to values (got "no")',
        'cluster settings: parameters.work_mem must be a string, number or boolean (got ["8MB"])',
    ]


def test_the_timing_rule_is_checked() -> None:
    (line,) = _problems({"timing": {"ttl": 2, "loop_wait": 1}})
    assert line.startswith("cluster settings: timing is unsafe: loop_wait + 2 * retry_timeout")


def test_apply_to_replaces_the_cluster_wide_part_only() -> None:
    config = _config()
    wide = from_mapping(
        {
            "timing": {"ttl": 12},
            "failover": {"maximum_lag_on_failover": 5},
            "parameters": {"work_mem": "16MB", "max_connections": "150"},
        }
    )
    applied = wide.apply_to(config)
    assert applied.timing.ttl == 12
    assert applied.timing.loop_wait == 1.0  # a default of the record, not node.yaml's
    assert applied.failover.synchronous_mode == "off"
    assert applied.failover.maximum_lag_on_failover == 5
    assert applied.checks.check_fail_fast is True
    assert applied.replication is not None
    assert dict(applied.replication.settings) == {
        "port": 5433,
        "parameters": {"work_mem": "16MB", "max_connections": "150"},
    }
    assert (applied.node, applied.consensus, applied.api) == (
        config.node,
        config.consensus,
        config.api,
    )
    assert ClusterWide.from_config(applied) == wide
    assert ClusterWide().apply_to(config).replication.settings == {"port": 5433}  # type: ignore[union-attr]


def test_differences_name_the_keys() -> None:
    ours = ClusterWide.from_config(_config())
    theirs = with_assignments(ours, {"timing.ttl": "12", "parameters.work_mem": "null"})
    assert ours.differences(theirs) == ["parameters.work_mem", "timing.ttl"]
    assert ours.differences(ours) == []


def test_assignments_are_read_as_yaml_and_validated() -> None:
    wide = with_assignments(
        ClusterWide(),
        {
            "failover.maximum_lag_on_failover": "1048576",
            "failover.synchronous_mode": "on",
            "parameters.work_mem": "16MB",
        },
    )
    assert wide.failover.maximum_lag_on_failover == 1048576
    assert wide.failover.synchronous_mode == "on"
    assert dict(wide.parameters) == {"work_mem": "16MB"}
    assert with_assignments(wide, {"failover.maximum_lag_on_failover": "null"}).failover == (
        ClusterWide().failover.__class__(synchronous_mode="on")
    )
    with pytest.raises(ConfigError) as info:
        with_assignments(wide, {"failover.maximum_lag_on_failover": "-3", "ttl": "5"})
    assert str(info.value).splitlines() == [
        "cluster settings: ttl: expected SECTION.KEY with SECTION one of timing, failover, "
        "checks, parameters (for example failover.maximum_lag_on_failover=1048576)"
    ]
    with pytest.raises(ConfigError) as info:
        with_assignments(wide, {"failover.maximum_lag_on_failover": "-3"})
    assert str(info.value) == (
        "cluster settings: failover.maximum_lag_on_failover must be a number of bytes >= 0, "
        "or null for no limit (got -3)"
    )


@pytest.mark.skipif(default_bin_dir() is None, reason="no PostgreSQL binaries installed")
def test_the_backend_checks_the_parameters_it_owns() -> None:
    config = _config(
        replication={"backend": "postgresql", "port": 5433, "bin_dir": str(default_bin_dir())}
    )
    registry = load_plugins().registry
    wide = with_assignments(ClusterWide.from_config(config), {"parameters.work_mem": "16MB"})
    assert validated_for(wide, config, registry).replication.settings["parameters"] == {  # type: ignore[union-attr]
        "work_mem": "16MB"
    }
    bad = with_assignments(wide, {"parameters.port": "6000"})
    with pytest.raises(ConfigError, match="postgresql parameter 'port' is set by hacore per node"):
        validated_for(bad, config, registry)


def test_which_node_yaml_keys_are_cluster_wide() -> None:
    assert all(
        is_cluster_wide(key)
        for key in ("timing.ttl", "failover.synchronous_mode", "checks.active_grace")
    )
    assert is_cluster_wide("replication.parameters.work_mem")
    assert not any(
        is_cluster_wide(key)
        for key in ("replication.port", "node.name", "consensus.endpoints", "logging.level")
    )


def test_join_options_that_the_cluster_overrides_are_named_with_both_values() -> None:
    cluster = ClusterWide.from_config(_config())
    overrides = {
        "timing": {"ttl": 9.0},  # the cluster's value: no effect, no warning
        "failover": {"synchronous_mode": True, "maximum_lag_on_failover": 5},
        "replication": {"port": 6000, "parameters": {"work_mem": "9MB", "work_mem_x": 1}},
        "node": {"name": "n2"},
    }
    found = ignored_options(cluster, overrides)
    assert [(i.key, i.option, i.given, i.cluster) for i in found] == [
        ("failover.maximum_lag_on_failover", "failover.maximum_lag_on_failover", 5, 1000),
        ("parameters.work_mem", "replication.parameters.work_mem", "9MB", "8MB"),
        ("parameters.work_mem_x", "replication.parameters.work_mem_x", "1", None),
    ]
    # synchronous_mode: true reads as the cluster's "on"; node-local keys are never named
    assert ignored_options(cluster, {"node": {"name": "x"}, "replication": {"port": 1}}) == []
    # the cluster's settings unknown: every cluster-wide key given, no value for the cluster
    assert [(i.key, i.cluster) for i in ignored_options(None, overrides)] == [
        ("failover.maximum_lag_on_failover", None),
        ("failover.synchronous_mode", None),
        ("parameters.work_mem", None),
        ("parameters.work_mem_x", None),
        ("timing.ttl", None),
    ]
    # an option the record cannot read: named as given rather than guessed
    bad = ignored_options(cluster, {"timing": {"ttl": "soon"}})
    assert [(i.key, i.given, i.cluster) for i in bad] == [("timing.ttl", "soon", 9.0)]
