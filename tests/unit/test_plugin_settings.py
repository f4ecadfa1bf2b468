"""Every built-in plugin reads its settings with the one typed reader
(:func:`hacore.config.check.backend_settings`), so a misspelt key, a wrong type and a value out
of range read the same whichever plugin reports them, and several problems come as one error,
a line each (issue 12 point 4)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest

from hacore.config.check import Section, backend_settings
from hacore.errors import ConfigError
from hacore_plugins.consul.backend import ConsulConsensus
from hacore_plugins.etcd.backend import EtcdConsensus
from hacore_plugins.etcd.managed import EtcdManagedStore
from hacore_plugins.postgresql.backend import PostgresReplication
from hacore_plugins.rsync.backend import RsyncFilesync
from hacore_plugins.services.process import ProcessServices
from hacore_plugins.services.supervisor import SupervisorServices
from hacore_plugins.services.systemd import SystemdServices
from hacore_plugins.syncthing.backend import SyncthingFilesync
from hacore_plugins.zookeeper.backend import ZooKeeperConsensus
from hacore_plugins.zookeeper.managed import ZooKeeperManagedStore

Validate = Callable[[Mapping[str, Any]], None]
ZK_PORTS = {"client_port": 2181, "peer_port": 2888, "election_port": 3888}


def lines(validate: Validate, settings: Mapping[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as err:
        validate(settings)
    return str(err.value).splitlines()


@pytest.mark.parametrize(
    ("validate", "settings", "line"),
    [
        (EtcdConsensus.validate_settings, {"endpoints": ["http://h:1"], "usrname": "u"},
         'unknown key "usrname" in consensus; did you mean "username"?'),
        (EtcdManagedStore.validate_settings, {"client_prot": 2379},
         'unknown key "client_prot" in consensus; did you mean "client_port"?'),
        (ZooKeeperConsensus.validate_settings, {"hosts": ["h:1"], "use_tsl": True},
         'unknown key "use_tsl" in consensus; did you mean "use_tls"?'),
        (ZooKeeperManagedStore.validate_settings, {**ZK_PORTS, "tick_time": 100},
         'unknown key "tick_time" in consensus; did you mean "tick_time_ms"?'),
        (ConsulConsensus.validate_settings, {"endpoints": ["http://h"], "datacentre": "x"},
         'unknown key "datacentre" in consensus; did you mean "datacenter"?'),
        (PostgresReplication.validate_settings, {"stop_timout": 5},
         'unknown key "stop_timout" in replication; did you mean "stop_timeout"?'),
        (RsyncFilesync.validate_settings, {"intervall": 5},
         'unknown key "intervall" in filesync; did you mean "interval"?'),
        (SyncthingFilesync.validate_settings, {"listen_prot": 22000},
         'unknown key "listen_prot" in filesync; did you mean "listen_port"?'),
        (SystemdServices.validate_settings, {"timout": 5},
         'unknown key "timout" in services; did you mean "timeout"?'),
        (SupervisorServices.validate_settings, {"timout": 5},
         'unknown key "timout" in services; did you mean "timeout"?'),
        (ProcessServices.validate_settings,
         {"run_dir": "/r", "commands": {"w": "x"}, "strat_grace": 1},
         'unknown key "strat_grace" in services; did you mean "start_grace"?'),
    ],
)  # fmt: skip
def test_a_misspelt_key_reads_the_same_in_every_plugin(
    validate: Validate, settings: Mapping[str, Any], line: str
) -> None:
    assert line in lines(validate, settings)


@pytest.mark.parametrize(
    ("validate", "settings", "line"),
    [
        (EtcdManagedStore.validate_settings, {"peer_port": 99999},
         "consensus.peer_port must be a TCP port number 1-65535 (got 99999)"),
        (ZooKeeperManagedStore.validate_settings, {**ZK_PORTS, "peer_port": 99999},
         "consensus.peer_port must be a TCP port number 1-65535 (got 99999)"),
        (PostgresReplication.validate_settings, {"port": 99999},
         "replication.port must be a TCP port number 1-65535 (got 99999)"),
        (RsyncFilesync.validate_settings, {"port": 99999},
         "filesync.port must be a TCP port number 1-65535 (got 99999)"),
        (SyncthingFilesync.validate_settings, {"listen_port": 99999},
         "filesync.listen_port must be a TCP port number 1-65535 (got 99999)"),
        (ConsulConsensus.validate_settings, {"endpoints": ["http://h"], "round_up_ttl": "yes"},
         'consensus.round_up_ttl must be true or false (got "yes")'),
        (ZooKeeperConsensus.validate_settings, {"hosts": ["h:1"], "use_tls": "yes"},
         'consensus.use_tls must be true or false (got "yes")'),
        (SystemdServices.validate_settings, {"user": "yes"},
         'services.user must be true or false (got "yes")'),
        (EtcdConsensus.validate_settings,
         {"endpoints": ["http://h:1"], "username": 5, "password": "p"},
         "consensus.username must be a user name (got 5)"),
        (PostgresReplication.validate_settings, {"stop_timeout": 0},
         "replication.stop_timeout must be a number of seconds > 0 (got 0)"),
        (SupervisorServices.validate_settings, {"timeout": 0},
         "services.timeout must be a number of seconds > 0 (got 0)"),
    ],
)  # fmt: skip
def test_a_wrong_type_or_range_reads_the_same_in_every_plugin(
    validate: Validate, settings: Mapping[str, Any], line: str
) -> None:
    assert line in lines(validate, settings)


def test_several_problems_are_one_error_a_line_each() -> None:
    assert lines(
        RsyncFilesync.validate_settings, {"prot": 1, "interval": 0, "io_timeout": "x"}
    ) == [
        'unknown key "prot" in filesync; did you mean "port"?',
        "filesync.interval must be a number of seconds >= 0.1 (got 0)",
        'filesync.io_timeout must be a number of seconds >= 1 (got "x")',
    ]
    assert lines(ConsulConsensus.validate_settings, {"endpoints": [], "lock_delay": 61}) == [
        "consensus.endpoints must list at least one agent URL, "
        "e.g. endpoints: [http://127.0.0.1:8500]",
        "consensus.lock_delay must be a number of seconds 0-60 (got 61)",
    ]


def test_numbers_written_as_text_stay_valid_where_they_always_were() -> None:
    RsyncFilesync.validate_settings({"port": "8873", "interval": "2.5", "io_timeout": 30.0})
    SyncthingFilesync.validate_settings({"listen_port": "22001", "rescan_interval": "60"})
    # a section that never read text as a number still wants a number
    assert lines(EtcdManagedStore.validate_settings, {"client_port": "2379"}) == [
        'consensus.client_port must be a TCP port number 1-65535 (got "2379")'
    ]


def test_the_syncthing_seed_port_is_checked_only_when_the_seed_runs() -> None:
    SyncthingFilesync.validate_settings({"listen_port": 22001})  # valid before the seed existed
    assert lines(SyncthingFilesync.validate_settings, {"listen_port": 22001, "seed": True}) == [
        "filesync.seed_port 22001 is already api_port or listen_port"
    ]


def test_the_reader_getters() -> None:
    sec = backend_settings(
        "filesync",
        {"rate": 0.5, "name": "", "path": "rel", "count": "7", "big": 11},
        ("rate", "name", "path", "count", "big", "absent"),
        numbers_as_text=True,
    )
    assert sec.number("rate", 1.0, low=0.1, high=1) == 0.5
    assert sec.optional_string("name") is None
    assert sec.optional_string("absent") is None
    assert sec.optional_path("absent") is None
    assert sec.integer("count", 1, low=1, what="a count") == 7
    assert sec.integer("big", 1, low=1, high=10, what="a count") == 1
    sec.optional_path("path")
    sec.reject_unknown()  # done once by backend_settings: not reported twice
    with pytest.raises(ConfigError) as err:
        sec.done()
    assert str(err.value).splitlines() == [
        "filesync.big must be a count 1-10 (got 11)",
        'filesync.path must be an absolute path (got "rel")',
    ]
    assert isinstance(sec, Section)
