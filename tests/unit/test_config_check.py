"""The typed readers behind node.yaml and the backends' own settings, and the managed stores'
settings read through them: every problem is found, and each is one line naming the key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hacore.config.check import Problems, Section, backend_settings
from hacore.errors import ConfigError, UnknownBackendError
from hacore_plugins.etcd.managed import EtcdManagedStore
from hacore_plugins.etcd.settings import EtcdManagedSettings
from hacore_plugins.postgresql.settings import check_synchronous


def _problems(read: Callable[[], object]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        read()
    return str(info.value).splitlines()


# -- the readers --------------------------------------------------------------------------


def test_one_problem_keeps_its_class_and_several_are_one_line_each() -> None:
    problems = Problems()
    problems.raise_if_any()
    problems.add(UnknownBackendError("a"))
    with pytest.raises(UnknownBackendError):
        problems.raise_if_any()
    problems.add(ConfigError("b"))
    with pytest.raises(ConfigError) as info:
        problems.raise_if_any()
    assert type(info.value) is ConfigError
    assert str(info.value) == "a\nb"


def test_readers_record_a_problem_and_go_on() -> None:
    raw = {"a": 0, "b": "7", "c": 70000, "d": 12, "e": 3}
    sec = Section("config error in x.yaml", "s", raw)
    assert sec.integer("a", low=1, what="a count") == 1
    assert sec.integer("b", 5, low=1, what="a count") == 5
    assert sec.port("c", 80) == 80
    assert sec.integer("d", low=1, high=10, what="a number of ms") == 1
    assert sec.integer("e", low=1, high=10, what="a number of ms") == 3
    assert sec.port("f") == 1
    assert not sec.clean
    assert _problems(sec.done) == [
        "config error in x.yaml: s.a must be a count >= 1 (got 0)",
        'config error in x.yaml: s.b must be a count (got "7")',
        "config error in x.yaml: s.c must be a TCP port number 1-65535 (got 70000)",
        "config error in x.yaml: s.d must be a number of ms 1-10 (got 12)",
        "config error in x.yaml: s.f is required: a TCP port number",
    ]


def test_a_section_that_is_not_a_mapping_is_one_problem() -> None:
    sec = Section("", "node", ["a"], ("name",))
    assert sec.name("name") == ""
    assert _problems(sec.done) == ['node must be a mapping of keys to values (got ["a"])']


def test_every_unknown_key_is_reported() -> None:
    sec = Section("", "timing", {"tll": 1, "zzz": 2, "ttl": 3}, ("ttl", "loop_wait"))
    sec.reject_unknown()
    assert _problems(sec.done) == [
        'unknown key "tll" in timing; did you mean "ttl"?',
        'unknown key "zzz" in timing (known keys: loop_wait, ttl)',
    ]


def test_a_misspelt_required_key_is_not_also_missing() -> None:
    sec = Section("", "auth", {"usernme": "a"}, ("username",))
    sec.reject_unknown()
    assert sec.string("username", what="a user name") == ""
    assert _problems(sec.done) == ['unknown key "usernme" in auth; did you mean "username"?']


def test_backend_keys_are_hinted_with_the_keys_hacore_reads_in_that_section() -> None:
    sec = backend_settings("consensus", {"manged": True, "zzz": 1}, ("client_port",))
    sec.reject_unknown()
    assert _problems(sec.done) == [
        'unknown key "manged" in consensus; did you mean "managed"?',
        'unknown key "zzz" in consensus (known keys: backend, client_port, managed)',
    ]


# -- the managed etcd member --------------------------------------------------------------


def test_managed_etcd_defaults() -> None:
    assert EtcdManagedSettings.parse({}) == EtcdManagedSettings(
        2379, 2380, 100, 1000, 60.0, "/usr/bin/etcd"
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"client_port": 2379, "peer_port": 2379},
            "consensus.client_port and consensus.peer_port are both 2379: etcd needs a port for "
            "clients and another for its peers",
        ),
        (
            {"heartbeat_interval": 300},
            "consensus.election_timeout (1000 ms) must be at least 5 times "
            "consensus.heartbeat_interval (300 ms): etcd refuses to start otherwise",
        ),
        (
            {"election_timeout": 60000},
            "consensus.election_timeout must be a number of milliseconds 1-50000 (got 60000)",
        ),
        (
            {"heartbeat_interval": "100"},
            'consensus.heartbeat_interval must be a number of milliseconds (got "100")',
        ),
        ({"start_timeout": 0}, "consensus.start_timeout must be a number of seconds > 0 (got 0)"),
        ({"etcd_binary": 3}, "consensus.etcd_binary must be the path of the etcd program (got 3)"),
        ({"peer_port": 99999}, "consensus.peer_port must be a TCP port number 1-65535 (got 99999)"),
        (
            {"client_prot": 2379},
            'unknown key "client_prot" in consensus; did you mean "client_port"?',
        ),
    ],
)
def test_managed_etcd_settings(settings: dict[str, Any], message: str) -> None:
    assert _problems(lambda: EtcdManagedStore.validate_settings(settings)) == [message]


def test_the_etcd_member_reads_its_settings_with_the_same_checks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"consensus\.peer_port must be a TCP port number"):
        EtcdManagedStore({"peer_port": 99999}, name="n1", host="127.0.0.1", data_dir=tmp_path)
    store = EtcdManagedStore({"client_port": 12379}, name="n1", host="::1", data_dir=tmp_path)
    assert (store.client_url, store.peer_url) == ("http://[::1]:12379", "http://[::1]:2380")


# -- the managed ZooKeeper server ---------------------------------------------------------

ZK_PORTS = {"client_port": 2181, "peer_port": 2888, "election_port": 3888}


@pytest.mark.parametrize(
    ("settings", "messages"),
    [
        (
            {},
            [
                "consensus.client_port is required: a TCP port number",
                "consensus.peer_port is required: a TCP port number",
                "consensus.election_port is required: a TCP port number",
            ],
        ),
        (
            {**ZK_PORTS, "peer_port": 2181},
            [
                "consensus.client_port, consensus.peer_port and consensus.election_port must all "
                "differ (got 2181, 2181, 3888)"
            ],
        ),
        (
            {**ZK_PORTS, "tick_time_ms": 20, "server_id": 0, "jvm_options": "-Xmx1g"},
            [
                "consensus.server_id must be a ZooKeeper server id >= 1 (got 0)",
                'consensus.jvm_options must be a list of JVM options (got "-Xmx1g")',
                "consensus.tick_time_ms must be a number of milliseconds 50-10000 (got 20)",
            ],
        ),
    ],
)
def test_managed_zookeeper_settings(settings: dict[str, Any], messages: list[str]) -> None:
    pytest.importorskip("kazoo")
    from hacore_plugins.zookeeper.managed import ZooKeeperManagedStore

    assert _problems(lambda: ZooKeeperManagedStore.validate_settings(settings)) == messages


def test_managed_zookeeper_settings_read() -> None:
    pytest.importorskip("kazoo")
    from hacore_plugins.zookeeper.settings import ManagedSettings

    parsed = ManagedSettings.parse({**ZK_PORTS, "server_id": 2, "jvm_options": []})
    assert parsed == ManagedSettings(2181, 2888, 3888, server_id=2, jvm_options=())


# -- the database's synchronous mode against failover.synchronous_mode --------------------


@pytest.mark.parametrize(
    ("synchronous", "mode"),
    [(None, "off"), (None, "on"), ("strict", "strict"), (True, "on"), (False, "off")],
)
def test_synchronous_modes_that_agree(synchronous: object, mode: str) -> None:
    settings = {} if synchronous is None else {"synchronous": synchronous}
    check_synchronous(settings, mode)


def test_a_bad_synchronous_value_is_reported_once() -> None:
    check_synchronous({"synchronous": "maybe"}, "strict")


@pytest.mark.parametrize(
    ("synchronous", "mode", "message"),
    [
        (
            None,
            "strict",
            "replication.synchronous is off (not set) but failover.synchronous_mode is strict: "
            "a promoted database would accept writes before any standby has them; set "
            "replication.synchronous: strict",
        ),
        (
            "on",
            "strict",
            "replication.synchronous is on but failover.synchronous_mode is strict: a promoted "
            "database would accept writes before any standby has them; set "
            "replication.synchronous: strict",
        ),
        (
            "strict",
            "off",
            "replication.synchronous is strict but failover.synchronous_mode is off: the "
            "database would hold every commit while no standby is synchronous, which the agent "
            "expects only in strict mode; set failover.synchronous_mode: strict too",
        ),
        (
            True,
            "off",
            "replication.synchronous is on but failover.synchronous_mode is off: the agent "
            "picks synchronous standbys by failover.synchronous_mode: give both one value",
        ),
    ],
)
def test_synchronous_modes_that_disagree(synchronous: object, mode: str, message: str) -> None:
    settings = {} if synchronous is None else {"synchronous": synchronous}
    assert _problems(lambda: check_synchronous(settings, mode)) == [message]
