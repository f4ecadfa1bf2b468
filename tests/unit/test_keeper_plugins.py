"""The fence keeper loads only the plugins of the backends its configuration names.

Importing every installed plugin (Consul, ZooKeeper, Syncthing... client libraries) was a third
of the keeper's start-up CPU, which on a joining node competed with the copy (issue 15,
target 3). The configuration it ends with must be the one the agent checks with every plugin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from hacore.cluster.keeper_entry import keeper_config
from hacore.errors import ConfigError
from hacore.plugins.configured import load_config_and_plugins
from hacore.plugins.registry import HacorePlugins, env_plugins


def write(tmp_path: Path, **sections: Any) -> Path:
    raw = {
        "cluster": {"name": "k"},
        "node": {"name": "k1", "host": "127.0.0.1", "data_dir": str(tmp_path / "data")},
        "consensus": {"backend": "etcd", "managed": True},
        "replication": {"backend": "postgresql"},
        **sections,
    }
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def entry_point_plugins(plugins: HacorePlugins) -> list[str]:
    """The plugins loaded, less those ``$HACORE_PLUGINS`` names (the tests' own)."""
    return sorted(set(plugins.plugin_names()) - set(env_plugins()))


def test_only_the_named_backends_plugins_load(tmp_path: Path) -> None:
    path = write(tmp_path)
    config, plugins = keeper_config(path, None)
    assert entry_point_plugins(plugins) == ["etcd", "postgresql"]
    assert config == load_config_and_plugins(path)[0]
    assert plugins.registry.replication("postgresql").__name__ == "PostgresReplication"


def test_the_saved_options_choose_the_plugins_too(tmp_path: Path) -> None:
    path = write(tmp_path, filesync={"backend": "rsync", "directories": [str(tmp_path)]})
    config, plugins = keeper_config(path, {"replication": {"port": 6543}})
    assert entry_point_plugins(plugins) == ["etcd", "postgresql", "rsync"]
    assert config.replication is not None and config.replication.settings["port"] == 6543


def test_a_backend_no_plugin_is_named_after_loads_every_plugin(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        services={
            "backend": "process",
            "commands": {"w": "sleep 1"},
            "run_dir": str(tmp_path / "run"),
        },
    )
    config, plugins = keeper_config(path, None)
    everything = load_config_and_plugins(path)
    assert entry_point_plugins(plugins) == entry_point_plugins(everything[1])
    assert len(entry_point_plugins(plugins)) > 3
    assert config == everything[0]


def test_a_wrong_configuration_says_what_the_agent_says(tmp_path: Path) -> None:
    path = write(tmp_path, replication={"backend": "postgresql", "port": "not a port"})
    with pytest.raises(ConfigError) as agent:
        load_config_and_plugins(path)
    with pytest.raises(ConfigError) as keeper:
        keeper_config(path, None)
    assert str(keeper.value) == str(agent.value)
