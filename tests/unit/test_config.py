"""Node configuration: records, defaults, every validation message, overrides, registry checks."""

from __future__ import annotations

import copy
import os
import stat
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml

from hacore.backends.consensus import ConsensusBackend, ManagedStore
from hacore.backends.replication import ReplicationBackend
from hacore.config.node import (
    ApiAuth,
    BackendSection,
    ConsensusSection,
    FailoverSettings,
    FilesyncSection,
    ServicesSection,
    load_config,
    validate_node_name,
)
from hacore.config.options import parse_options
from hacore.config.write_back import dump, to_mapping
from hacore.errors import ConfigError, UnknownBackendError
from hacore.plugins.configured import load_config_and_plugins
from hacore.plugins.hookspecs import hookimpl
from hacore.plugins.registry import BackendRegistry, load_plugins
from hacore.testing.pytest_plugin import MEMORY_PLUGIN

MINIMAL: dict[str, Any] = {
    "node": {"name": "node-1", "host": "127.0.0.1"},
    "consensus": {"backend": "etcd", "endpoints": ["http://127.0.0.1:2379"]},
}

FULL_YAML = """
cluster:
  name: manager
  namespace: prod.manager
node:
  name: node-2
  host: 10.0.0.2
  api_port: 9443
  data_dir: /srv/hacore
timing:
  ttl: 10
  loop_wait: 2
  retry_timeout: 2
  safety_margin: 3
checks:
  check_ttl_multiplier: 2.5
  check_fail_fast: false
failover:
  synchronous_mode: on
  maximum_lag_on_failover: 1048576
  promote_backoff: 20
  switchover_timeout: 60
  switchover_max_lag: 0
consensus:
  backend: etcd
  managed: true
  client_port: 2379
  peer_port: 2380
replication:
  backend: postgresql
  port: 5432
  bin_dir: /usr/lib/postgresql/15/bin
filesync:
  backend: syncthing
  directories: [/opt/manager/resources, /etc/manager]
  gui_port: 8384
services:
  backend: supervisor
  active_only: [mgmtworker, rabbitmq]
  everywhere: [node-exporter]
  socket: /run/supervisor.sock
api:
  auth:
    username: admin
    password_hash: "pbkdf2_sha256$600000$c2FsdA$aGFzaA"
  status_requires_auth: true
plugins:
  block: [consul]
  settings:
    diskspace: {min_free_mb: 500}
"""


def _with(**sections: Any) -> dict[str, Any]:
    raw = copy.deepcopy(MINIMAL)
    raw.update(sections)
    return raw


def _error(raw: Mapping[str, Any] | str | Path, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(raw, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- good configurations ------------------------------------------------------------------


def test_minimal_config_gets_the_documented_defaults() -> None:
    config = load_config(MINIMAL)
    assert config.node.name == "node-1"
    assert config.node.host == "127.0.0.1"
    assert config.node.api_port == 8008
    assert config.node.data_dir == Path("/var/lib/hacore")
    assert config.cluster.name == "hacore"
    assert config.cluster.namespace == "hacore"
    assert attrs.astuple(config.timing) == (6.0, 1.0, 1.0, 1.5, "default")
    assert config.timing.fence_after == 4.5
    assert config.checks.check_ttl_multiplier == 1
    assert config.checks.check_fail_fast is True
    assert config.failover == FailoverSettings("off", None, 10.0, 30.0, 16 * 1024 * 1024)
    assert config.consensus == ConsensusSection(
        "etcd", {"endpoints": ["http://127.0.0.1:2379"]}, managed=False
    )
    assert config.replication is None
    assert config.filesync is None
    assert config.services is None
    assert config.api.auth is None
    assert config.api.status_requires_auth is False
    assert config.plugins.block == ()
    assert dict(config.plugins.settings) == {}


def test_full_config_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(FULL_YAML)
    config = load_config(path)
    assert config.cluster.name == "manager"
    assert config.cluster.namespace == "prod.manager"
    assert config.node.name == "node-2"
    assert config.node.host == "10.0.0.2"
    assert config.node.api_port == 9443
    assert config.node.data_dir == Path("/srv/hacore")
    assert attrs.astuple(config.timing) == (10.0, 2.0, 2.0, 3.0, "default")
    assert config.checks.check_ttl_multiplier == 2.5
    assert config.checks.check_fail_fast is False
    assert config.failover == FailoverSettings(
        synchronous_mode="on",
        maximum_lag_on_failover=1048576,
        promote_backoff=20.0,
        switchover_timeout=60.0,
        switchover_max_lag=0,
    )
    assert config.consensus.managed is True
    assert dict(config.consensus.settings) == {"client_port": 2379, "peer_port": 2380}
    assert config.replication == BackendSection(
        "postgresql", {"port": 5432, "bin_dir": "/usr/lib/postgresql/15/bin"}
    )
    assert config.filesync == FilesyncSection(
        "syncthing",
        {"gui_port": 8384},
        directories=(Path("/opt/manager/resources"), Path("/etc/manager")),
    )
    assert config.services == ServicesSection(
        "supervisor",
        {"socket": "/run/supervisor.sock"},
        active_only=("mgmtworker", "rabbitmq"),
        everywhere=("node-exporter",),
    )
    assert config.api.auth == ApiAuth("admin", "pbkdf2_sha256$600000$c2FsdA$aGFzaA")
    assert config.api.status_requires_auth is True
    assert config.plugins.block == ("consul",)
    assert config.plugins.settings["diskspace"] == {"min_free_mb": 500}


def test_namespace_defaults_to_the_cluster_name() -> None:
    config = load_config(_with(cluster={"name": "blue"}))
    assert (config.cluster.name, config.cluster.namespace) == ("blue", "blue")


def test_null_values_and_empty_sections_take_defaults() -> None:
    config = load_config(_with(timing={"ttl": None}, checks=None, replication=None))
    assert config.timing.ttl == 6.0
    assert config.replication is None


def test_synchronous_mode_accepts_yaml_booleans() -> None:
    for raw, mode in (("off", "off"), ("on", "on"), ("strict", "strict"), ("false", "off")):
        config = load_config(yaml.safe_load(f"failover: {{synchronous_mode: {raw}}}") | MINIMAL)
        assert config.failover.synchronous_mode == mode


def test_ipv6_and_dns_hosts_are_accepted() -> None:
    for host in ("::1", "fe80::1", "manager-1.example.com", "db"):
        assert load_config(_with(node={"name": "n", "host": host})).node.host == host


def test_records_are_immutable() -> None:
    config = load_config(MINIMAL)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        config.timing.ttl = 1  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.consensus.settings["endpoints"] = []  # type: ignore[index]


def test_loading_does_not_change_the_given_mapping() -> None:
    raw = copy.deepcopy(MINIMAL)
    load_config(raw, overrides={"consensus": {"endpoints": ["x"]}})
    assert raw == MINIMAL


def test_api_secret_is_not_in_the_repr() -> None:
    raw = _with(api={"auth": {"username": "admin", "password_hash": "scrypt$c2FsdA$aGFzaA"}})
    assert "aGFzaA" not in repr(load_config(raw))


# -- writing back -------------------------------------------------------------------------


def test_to_mapping_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(FULL_YAML)
    config = load_config(path)
    assert load_config(to_mapping(config)) == config
    assert load_config(yaml.safe_load(dump(config))) == config
    minimal = load_config(MINIMAL)
    assert load_config(to_mapping(minimal)) == minimal


def test_dump_writes_a_private_file(tmp_path: Path) -> None:
    config = load_config(yaml.safe_load(FULL_YAML))
    target = tmp_path / "node.yaml"
    target.write_text("old contents")
    text = dump(config, target)
    assert target.read_text() == text
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert load_config(target) == config
    assert sorted(os.listdir(tmp_path)) == ["node.yaml"]


# -- overrides ----------------------------------------------------------------------------


def test_overrides_from_options_merge_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(FULL_YAML)
    overrides = parse_options("timing.ttl=20;consensus.managed=false;node.api_port=9000")
    config = load_config(path, overrides=overrides)
    assert config.timing.ttl == 20.0
    assert config.timing.loop_wait == 2.0
    assert config.consensus.managed is False
    assert dict(config.consensus.settings) == {"client_port": 2379, "peer_port": 2380}
    assert config.node.api_port == 9000
    assert config.node.name == "node-2"


def test_an_empty_override_restores_the_default(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(FULL_YAML)
    assert load_config(path, overrides=parse_options("node.api_port=")).node.api_port == 8008


def test_overrides_are_validated_too() -> None:
    message = _error(MINIMAL, overrides=parse_options("timing.ttl=ten"))
    assert message == 'config error: timing.ttl must be a number of seconds > 0 (got "ten")'


# -- validation messages ------------------------------------------------------------------

ERRORS: list[tuple[dict[str, Any], str]] = [
    (
        _with(timing={"ttl": "ten"}),
        'config error: timing.ttl must be a number of seconds > 0 (got "ten")',
    ),
    (
        _with(timing={"loop_wait": 0}),
        "config error: timing.loop_wait must be a number of seconds > 0 (got 0)",
    ),
    (
        _with(timing={"retry_timeout": -1}),
        "config error: timing.retry_timeout must be a number of seconds > 0 (got -1)",
    ),
    (
        _with(timing={"safety_margin": True}),
        "config error: timing.safety_margin must be a number of seconds > 0 (got true)",
    ),
    (
        _with(timing={"ttl": float("inf")}),
        "config error: timing.ttl must be a number of seconds > 0 (got Infinity)",
    ),
    (
        _with(timing={"tll": 6}),
        'config error: unknown key "tll" in timing; did you mean "ttl"?',
    ),
    (
        _with(timming={"ttl": 6}),
        'config error: unknown key "timming" at top level; did you mean "timing"?',
    ),
    (
        _with(ttl=6),
        'config error: unknown key "ttl" at top level; "ttl" belongs in the timing section',
    ),
    (
        _with(zzz="blue"),
        'config error: unknown key "zzz" at top level (known keys: api, checks, cluster, '
        "consensus, failover, filesync, logging, node, plugins, replication, services, timing, "
        "tls)",
    ),
    (
        _with(node={"name": "n", "host": "127.0.0.1", "weight": 1}),
        'config error: unknown key "weight" in node '
        "(known keys: api_port, data_dir, dns_names, host, name)",
    ),
    (
        _with(node={"name": "n", "host": "127.0.0.1", "api_prot": 1}),
        'config error: unknown key "api_prot" in node; did you mean "api_port"?',
    ),
    (
        {"consensus": {"backend": "etcd"}},
        "config error: node is required: this node's name and host",
    ),
    (
        {"node": {"name": "n", "host": "127.0.0.1"}},
        "config error: consensus is required: the store that decides who is active, "
        "e.g. backend: etcd",
    ),
    (
        _with(node={"host": "127.0.0.1"}),
        "config error: node.name is required: a node name",
    ),
    (
        _with(node={"name": "n"}),
        "config error: node.host is required: the IP address or DNS name other nodes reach "
        "this one at",
    ),
    (
        _with(node={"name": "node 1", "host": "127.0.0.1"}),
        "config error: node.name must be a node name of 1-63 letters, digits, '-', '_' or '.', "
        'starting with a letter or digit (got "node 1")',
    ),
    (
        _with(node={"name": "x" * 64, "host": "127.0.0.1"}),
        "config error: node.name must be a node name of 1-63 letters, digits, '-', '_' or '.', "
        f'starting with a letter or digit (got "{"x" * 56}...)',
    ),
    (
        _with(node={"name": "..", "host": "127.0.0.1"}),
        "config error: node.name must be a node name of 1-63 letters, digits, '-', '_' or '.', "
        'starting with a letter or digit (got "..")',
    ),
    (
        _with(node={"name": 7, "host": "127.0.0.1"}),
        "config error: node.name must be a node name as a string (got 7; quote it in YAML)",
    ),
    (
        _with(node={"name": "n", "host": "0.0.0.0"}),
        "config error: node.host is the address other nodes reach this one at; 0.0.0.0 is not "
        "reachable (give this node's own IP address)",
    ),
    (
        _with(node={"name": "n", "host": "bad_host!"}),
        'config error: node.host must be an IP address or a DNS name (got "bad_host!")',
    ),
    (
        _with(node={"name": "n", "host": "h", "api_port": 70000}),
        "config error: node.api_port must be a TCP port number 1-65535 (got 70000)",
    ),
    (
        _with(node={"name": "n", "host": "h", "api_port": "8008"}),
        'config error: node.api_port must be a TCP port number 1-65535 (got "8008")',
    ),
    (
        _with(node={"name": "n", "host": "h", "data_dir": "data"}),
        'config error: node.data_dir must be an absolute path (got "data")',
    ),
    (
        _with(cluster={"name": "a/b"}),
        "config error: cluster.name must be a cluster name of 1-63 letters, digits, '-', '_' or "
        "'.', starting with a letter or digit (got \"a/b\")",
    ),
    (
        _with(checks={"check_ttl_multiplier": 0}),
        "config error: checks.check_ttl_multiplier must be a number > 0 (check TTLs are "
        "multiplied by it) (got 0)",
    ),
    (
        _with(checks={"check_fail_fast": "yes please"}),
        'config error: checks.check_fail_fast must be true or false (got "yes please")',
    ),
    (
        _with(failover={"synchronous_mode": "yes"}),
        'config error: failover.synchronous_mode must be one of off, on, strict (got "yes")',
    ),
    (
        _with(failover={"maximum_lag_on_failover": -1}),
        "config error: failover.maximum_lag_on_failover must be a number of bytes >= 0, or null "
        "for no limit (got -1)",
    ),
    (
        _with(failover={"switchover_max_lag": "16MB"}),
        'config error: failover.switchover_max_lag must be a number of bytes >= 0 (got "16MB")',
    ),
    (
        _with(failover={"promote_backof": 5}),
        'config error: unknown key "promote_backof" in failover; did you mean "promote_backoff"?',
    ),
    (
        _with(consensus={"endpoints": []}),
        "config error: consensus.backend is required: the name of a registered consensus "
        "backend (for example etcd)",
    ),
    (
        _with(consensus={"backend": "etcd", "managed": "no"}),
        'config error: consensus.managed must be true or false (got "no")',
    ),
    (
        _with(consensus="etcd"),
        'config error: consensus must be a mapping of keys to values (got "etcd")',
    ),
    (
        _with(replication={"port": 5432}),
        "config error: replication.backend is required: the name of a registered replication "
        "backend (for example etcd)",
    ),
    (
        _with(filesync={"backend": "syncthing", "directories": "/etc/manager"}),
        'config error: filesync.directories must be a list of absolute paths (got "/etc/manager")',
    ),
    (
        _with(filesync={"backend": "syncthing", "directories": ["etc"]}),
        'config error: filesync.directories[0] must be an absolute path (got "etc")',
    ),
    (
        _with(filesync={"backend": "syncthing", "directories": ["/a", "/a/b"]}),
        "config error: filesync.directories[1] (/a/b) overlaps /a: list each tree once",
    ),
    (
        _with(services={"backend": "supervisor", "active_only": ["w", 3]}),
        "config error: services.active_only[1] must be one of service names (got 3)",
    ),
    (
        _with(services={"backend": "supervisor", "active_only": ["w", "w"]}),
        'config error: services.active_only lists "w" twice',
    ),
    (
        _with(services={"backend": "supervisor", "active_only": ["w"], "everywhere": ["w"]}),
        'config error: service "w" is listed in both active_only and everywhere',
    ),
    (
        _with(api={"auth": {"username": "admin", "password_hash": "hunter2"}}),
        "config error: api.auth.password_hash must be a password hash such as "
        '"pbkdf2_sha256$<iterations>$<salt>$<hash>", not a plain password (the value is not '
        "shown)",
    ),
    (
        _with(api={"auth": {"username": "admin", "password": "hunter2"}}),
        'config error: unknown key "password" in api.auth; did you mean "password_hash"?',
    ),
    (
        _with(api={"auth": {"password_hash": "scrypt$x$y"}}),
        "config error: api.auth.username is required: the API user name",
    ),
    (
        _with(api={"status_requires_auth": True}),
        "config error: api.status_requires_auth is true but api.auth (username, password_hash) "
        "is unset",
    ),
    (
        _with(plugins={"block": "consul"}),
        'config error: plugins.block must be a list of plugin names (got "consul")',
    ),
    (
        _with(plugins={"settings": {"diskspace": 5}}),
        "config error: plugins.settings.diskspace must be a mapping of keys to values (got 5)",
    ),
    (
        _with(plugins={"blok": ["consul"]}),
        'config error: unknown key "blok" in plugins; did you mean "block"?',
    ),
]


@pytest.mark.parametrize(("raw", "message"), ERRORS, ids=[m for _, m in ERRORS])
def test_validation_message(raw: dict[str, Any], message: str) -> None:
    assert _error(raw) == message


def test_password_is_never_shown_in_errors() -> None:
    for value in ("hunter2", 12345678):
        raw = _with(api={"auth": {"username": "admin", "password_hash": value}})
        assert str(value) not in _error(raw)


# -- the timing invariant (DESIGN §3 rule 1) ----------------------------------------------


def test_timing_invariant_boundary_is_rejected_and_shows_the_numbers() -> None:
    message = _error(_with(timing={"ttl": 4.5}))
    assert message == (
        "config error: timing is unsafe: loop_wait + 2 * retry_timeout + safety_margin must be "
        "less than ttl, so the active fences itself before a standby can take over "
        "(1 + 2 * 1 + 1.5 = 4.5, ttl = 4.5); raise timing.ttl above 4.5 or lower the others"
    )


def test_timing_just_above_the_boundary_is_accepted() -> None:
    assert load_config(_with(timing={"ttl": 4.51})).timing.ttl == 4.51


@pytest.mark.parametrize(
    ("timing", "ok"),
    [
        ({"ttl": 3, "loop_wait": 0.5, "retry_timeout": 0.5, "safety_margin": 1}, True),
        ({"ttl": 3, "loop_wait": 0.5, "retry_timeout": 0.75, "safety_margin": 1}, False),
        ({"ttl": 30, "loop_wait": 10, "retry_timeout": 5, "safety_margin": 9.9}, True),
        ({"ttl": 30, "loop_wait": 10, "retry_timeout": 5, "safety_margin": 10}, False),
        ({"loop_wait": 3}, False),
    ],
)
def test_timing_invariant(timing: dict[str, float], ok: bool) -> None:
    raw = _with(timing=timing)
    if ok:
        assert load_config(raw).timing == attrs.evolve(load_config(MINIMAL).timing, **timing)
    else:
        assert _error(raw).startswith("config error: timing is unsafe: ")


# -- files --------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    assert _error(path) == (
        f"config error in {path}: cannot read the file: No such file or directory"
    )


def test_errors_in_a_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(_with(timing={"ttl": "ten"})))
    assert _error(str(path)) == (
        f'config error in {path}: timing.ttl must be a number of seconds > 0 (got "ten")'
    )


def test_yaml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("node:\n  name: a\n  host: [127.0.0.1\n")
    message = _error(path)
    assert message.startswith(f"config error in {path}: not valid YAML: ")
    assert "line 4" in message


def test_file_must_hold_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text("- node\n")
    assert _error(path) == (
        f'config error in {path}: the file must hold a mapping of sections (got ["node"])'
    )


# -- node names given outside a file ------------------------------------------------------


def test_validate_node_name() -> None:
    assert validate_node_name("manager-1.dc_2") == "manager-1.dc_2"
    for bad in ("", "-a", "a b", "a/b", "é", "x" * 64):
        with pytest.raises(ConfigError, match="node name must be a node name of 1-63"):
            validate_node_name(bad)


# -- backends checked against a registry --------------------------------------------------


class StrictConsensus(ConsensusBackend):
    """Registered only; the loader calls validate_settings on the class, never instantiates it."""

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        if not settings.get("endpoints"):
            raise ConfigError("endpoints must list at least one URL")


class StrictReplication(ReplicationBackend):
    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        if "port" in settings and not isinstance(settings["port"], int):
            raise ConfigError("port must be a number")


class StrictManagedStore(ManagedStore):
    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        if "client_port" not in settings:
            raise ConfigError("client_port is required")


@pytest.fixture
def registry() -> BackendRegistry:
    registry = BackendRegistry()
    registry.add_consensus("strict", StrictConsensus)
    registry.add_consensus("plain", ConsensusBackend)  # validates nothing
    registry.add_managed_store("strict", StrictManagedStore)
    registry.add_replication("pg", StrictReplication)
    return registry


def test_registered_backends_pass(registry: BackendRegistry) -> None:
    raw = _with(
        consensus={"backend": "strict", "endpoints": ["http://127.0.0.1:2379"]},
        replication={"backend": "pg", "port": 5432},
    )
    assert load_config(raw, registry=registry).consensus.backend == "strict"


def test_unknown_backend_lists_the_registered_ones(registry: BackendRegistry) -> None:
    with pytest.raises(UnknownBackendError) as info:
        load_config(_with(consensus={"backend": "etdc"}), registry=registry)
    assert str(info.value) == (
        "config error: consensus.backend: unknown consensus backend 'etdc'; "
        "registered consensus backends: plain, strict"
    )


def test_unknown_backend_of_another_family(registry: BackendRegistry) -> None:
    raw = _with(consensus={"backend": "plain"}, filesync={"backend": "syncthing"})
    with pytest.raises(UnknownBackendError) as info:
        load_config(raw, registry=registry)
    assert str(info.value) == (
        "config error: filesync.backend: unknown filesync backend 'syncthing'; "
        "registered filesync backends: none"
    )


def test_backend_validate_settings_is_called(registry: BackendRegistry) -> None:
    assert _error(_with(consensus={"backend": "strict"}), registry=registry) == (
        "config error: consensus (strict): endpoints must list at least one URL"
    )
    raw = _with(consensus={"backend": "plain"}, replication={"backend": "pg", "port": "x"})
    assert _error(raw, registry=registry) == (
        "config error: replication (pg): port must be a number"
    )


def test_managed_consensus_is_checked_by_the_managed_store(registry: BackendRegistry) -> None:
    raw = _with(consensus={"backend": "strict", "managed": True, "client_port": 2379})
    assert load_config(raw, registry=registry).consensus.managed is True
    raw = _with(consensus={"backend": "strict", "managed": True})
    assert _error(raw, registry=registry) == (
        "config error: consensus (strict): client_port is required"
    )


def test_managed_needs_a_backend_that_can_run_servers(registry: BackendRegistry) -> None:
    raw = _with(consensus={"backend": "plain", "managed": True})
    assert _error(raw, registry=registry) == (
        "config error: consensus.managed: the plain backend cannot run its own servers "
        "(backends that can: strict); set managed: false and give the settings of an "
        "existing store"
    )
    with pytest.raises(UnknownBackendError, match="unknown consensus backend 'nope'"):
        load_config(_with(consensus={"backend": "nope", "managed": True}), registry=registry)


def test_installed_plugins_registry_rejects_unknown_names() -> None:
    registry = load_plugins().registry
    known = registry.names("consensus")
    assert "memory" in known
    with pytest.raises(UnknownBackendError) as info:
        load_config(_with(consensus={"backend": "no-such-store"}), registry=registry)
    assert str(info.value) == (
        "config error: consensus.backend: unknown consensus backend 'no-such-store'; "
        f"registered consensus backends: {', '.join(known)}"
    )


def test_installed_memory_backend_checks_its_settings() -> None:
    registry = load_plugins().registry
    raw = _with(consensus={"backend": "memory", "store": "unit"})
    assert load_config(raw, registry=registry).consensus.settings == {"store": "unit"}
    message = _error(_with(consensus={"backend": "memory"}), registry=registry)
    assert message.startswith("config error: consensus (memory): memory consensus settings need")


class ExtraPlugin:
    @hookimpl
    def hacore_register_backends(self, registry: BackendRegistry) -> None:
        registry.add_consensus("strict-extra", StrictConsensus)


def test_config_and_plugins_honour_plugins_block() -> None:
    assert MEMORY_PLUGIN in load_plugins().plugin_names()
    raw = _with(
        consensus={"backend": "strict-extra", "endpoints": ["http://127.0.0.1:2379"]},
        plugins={"block": [MEMORY_PLUGIN]},
    )
    config, plugins = load_config_and_plugins(raw, extra=[ExtraPlugin()])
    assert config.plugins.block == (MEMORY_PLUGIN,)
    assert plugins.pm.is_blocked(MEMORY_PLUGIN)
    assert plugins.pm.get_plugin(MEMORY_PLUGIN) is None
    assert "memory" not in plugins.registry.names("consensus")
    assert "strict-extra" in plugins.registry.names("consensus")


def test_config_and_plugins_validates_against_the_loaded_registry() -> None:
    raw = _with(consensus={"backend": "strict-extra"})
    with pytest.raises(ConfigError) as info:
        load_config_and_plugins(raw, extra=[ExtraPlugin()])
    assert str(info.value) == (
        "config error: consensus (strict-extra): endpoints must list at least one URL"
    )


# -- every problem of a file, one line each -----------------------------------------------


def _node_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def _errors(source: Mapping[str, Any] | Path, **kwargs: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(source, **kwargs)
    return str(info.value).splitlines()


def test_every_problem_is_reported_one_line_each(tmp_path: Path) -> None:
    path = _node_yaml(
        tmp_path,
        """
        node: {name: n1, host: 127.0.0.1, api_prot: 8008}
        timing: {ttl: ten, loop_wait: 0}
        failover: {promote_backof: 5}
        consensus: {backend: etcd, endpoints: ["http://127.0.0.1:2379"]}
        services: {backend: systemd, active_only: [w, w]}
        api: {status_requires_auth: yes}
        """,
    )
    at = f"config error in {path}:"
    assert _errors(path) == [
        f'{at} unknown key "api_prot" in node; did you mean "api_port"?',
        f'{at} timing.ttl must be a number of seconds > 0 (got "ten")',
        f"{at} timing.loop_wait must be a number of seconds > 0 (got 0)",
        f'{at} unknown key "promote_backof" in failover; did you mean "promote_backoff"?',
        f'{at} services.active_only lists "w" twice',
        f"{at} api.status_requires_auth is true but api.auth (username, password_hash) is unset",
    ]


def test_missing_sections_are_two_problems_not_more() -> None:
    assert _errors({}) == [
        "config error: node is required: this node's name and host",
        "config error: consensus is required: the store that decides who is active, "
        "e.g. backend: etcd",
    ]


def test_a_bad_value_does_not_bring_more_problems_along() -> None:
    # read as the default, ttl would break the timing rule with loop_wait 2
    assert _errors(_with(timing={"ttl": "ten", "loop_wait": 2})) == [
        'config error: timing.ttl must be a number of seconds > 0 (got "ten")'
    ]
    assert _errors(_with(cluster={"name": "a/b"}, node="n1")) == [
        'config error: node must be a mapping of keys to values (got "n1")',
        "config error: cluster.name must be a cluster name of 1-63 letters, digits, '-', '_' or "
        "'.', starting with a letter or digit (got \"a/b\")",
    ]


def test_problems_of_the_core_and_of_a_backend_together(tmp_path: Path) -> None:
    path = _node_yaml(
        tmp_path,
        """
        node: {name: n1, host: 127.0.0.1, api_prot: 1}
        timing: {ttl: ten}
        consensus: {backend: etcd, managed: true, client_prot: 2379, peer_port: 99999}
        """,
    )
    at = f"config error in {path}:"
    assert _errors(path, registry=load_plugins().registry) == [
        f'{at} unknown key "api_prot" in node; did you mean "api_port"?',
        f'{at} timing.ttl must be a number of seconds > 0 (got "ten")',
        f'{at} consensus (etcd): unknown key "client_prot" in consensus; did you mean '
        '"client_port"?',
        f"{at} consensus (etcd): consensus.peer_port must be a TCP port number 1-65535 (got 99999)",
    ]


def test_managed_etcd_settings_are_checked(tmp_path: Path) -> None:
    registry = load_plugins().registry
    path = _node_yaml(
        tmp_path,
        """
        node: {name: n1, host: 127.0.0.1}
        consensus: {backend: etcd, managed: true, client_prot: 2379, peer_port: 99999}
        """,
    )
    assert _errors(path, registry=registry) == [
        f'config error in {path}: consensus (etcd): unknown key "client_prot" in consensus; '
        'did you mean "client_port"?',
        f"config error in {path}: consensus (etcd): consensus.peer_port must be a TCP port "
        "number 1-65535 (got 99999)",
    ]
    good = _with(consensus={"backend": "etcd", "managed": True, "client_port": 2379})
    assert load_config(good, registry=registry).consensus.settings == {"client_port": 2379}


def test_managed_zookeeper_settings_are_checked(tmp_path: Path) -> None:
    pytest.importorskip("kazoo")
    registry = load_plugins().registry
    path = _node_yaml(
        tmp_path,
        """
        node: {name: n1, host: 127.0.0.1}
        consensus:
          backend: zookeeper
          managed: true
          clinet_port: 2181
          peer_port: 2888
          election_port: 3888
        """,
    )
    # client_port, which clinet_port was meant to be, is not reported missing as well
    assert _errors(path, registry=registry) == [
        f'config error in {path}: consensus (zookeeper): unknown key "clinet_port" in '
        'consensus; did you mean "client_port"?'
    ]
    ports = {"client_port": 2181, "peer_port": 2888, "election_port": 3888}
    good = _with(consensus={"backend": "zookeeper", "managed": True, **ports})
    assert load_config(good, registry=registry).consensus.settings == ports


def test_services_hints_name_the_keys_hacore_reads_there(tmp_path: Path) -> None:
    path = _node_yaml(
        tmp_path,
        """
        node: {name: n1, host: 127.0.0.1}
        consensus: {backend: etcd, endpoints: ["http://127.0.0.1:2379"]}
        services: {backend: systemd, active_only: [worker], everywher: [exporter], unit: x}
        """,
    )
    at = f"config error in {path}: services (systemd):"
    assert _errors(path, registry=load_plugins().registry) == [
        f'{at} unknown key "everywher" in services; did you mean "everywhere"?',
        f'{at} unknown key "unit" in services (known keys: active_only, backend, everywhere, '
        "systemctl, timeout, user)",
    ]


def test_unknown_managed_backend_names_the_file_and_key(
    tmp_path: Path, registry: BackendRegistry
) -> None:
    path = _node_yaml(
        tmp_path,
        """
        node: {name: n1, host: 127.0.0.1}
        consensus: {backend: nope, managed: true}
        """,
    )
    with pytest.raises(UnknownBackendError) as info:
        load_config(path, registry=registry)
    assert str(info.value) == (
        f"config error in {path}: consensus.backend: unknown consensus backend 'nope'; "
        "registered consensus backends: plain, strict"
    )


def test_strict_failover_needs_a_strict_database(tmp_path: Path) -> None:
    pytest.importorskip("psycopg")
    from hacore_plugins.postgresql.backend import PostgresReplication

    class Postgres(PostgresReplication):
        @classmethod
        def validate_settings(cls, settings: Any) -> None:
            """The binaries and the OS user are not what this test is about."""

    registry = BackendRegistry()
    registry.add_consensus("plain", ConsensusBackend)
    registry.add_replication("postgresql", Postgres)
    path = _node_yaml(
        tmp_path,
        """
        node: {name: n1, host: 127.0.0.1}
        failover: {synchronous_mode: strict}
        consensus: {backend: plain}
        replication: {backend: postgresql, synchronous: "off"}
        """,
    )
    assert _errors(path, registry=registry) == [
        f"config error in {path}: replication (postgresql): replication.synchronous is off but "
        "failover.synchronous_mode is strict: a promoted database would accept writes before "
        "any standby has them; set replication.synchronous: strict"
    ]
    raw = yaml.safe_load(path.read_text())
    raw["replication"]["synchronous"] = "strict"
    assert load_config(raw, registry=registry).failover.synchronous_mode == "strict"


def test_config_check_prints_one_line_per_problem(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from hacore.cli import cli

    path = _node_yaml(
        tmp_path,
        """
        node: {name: n1, host: 127.0.0.1}
        timing: {tll: 6}
        consensus: {backend: etcd, managed: true, client_prot: 2379, peer_port: 99999}
        """,
    )
    result = CliRunner().invoke(cli, ["config", "check", "--no-connect", "-c", str(path)])
    assert result.exit_code == 2
    lines = [line.removeprefix("error: ") for line in result.stderr.splitlines()]
    at = f"config error in {path}:"
    assert lines == [
        f'{at} unknown key "tll" in timing; did you mean "ttl"?',
        f'{at} consensus (etcd): unknown key "client_prot" in consensus; did you mean '
        '"client_port"?',
        f"{at} consensus (etcd): consensus.peer_port must be a TCP port number 1-65535 (got 99999)",
    ]


def test_an_unreadable_plugins_section_is_reported_with_the_rest() -> None:
    raw = _with(timing={"ttl": 0}, plugins={"block": "consul"})
    with pytest.raises(ConfigError) as info:
        load_config_and_plugins(raw)
    assert str(info.value).splitlines() == [
        "config error: timing.ttl must be a number of seconds > 0 (got 0)",
        'config error: plugins.block must be a list of plugin names (got "consul")',
    ]
