"""``hacore agent keeper``: build what the fence keeper guards, then run it.

Here, on the cluster side, because building the replication backend takes the configuration
in force, which includes the options ``cluster start``/``join`` saved in the node's state file;
the keeper itself (:mod:`hacore.agent.keeper`) only needs the backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from hacore.agent import tls_paths
from hacore.agent.keeper import RECORD_FILE, Keeper
from hacore.cluster.operation_state import StateFile
from hacore.cluster.parts import local_parts
from hacore.config.node import NodeConfig, PluginSettings, load_config, load_config_for
from hacore.errors import ConfigError
from hacore.plugins.configured import load_config_and_plugins
from hacore.plugins.registry import (
    ENTRY_POINT_GROUP,
    BackendRegistry,
    HacorePlugins,
    load_plugins,
)


def run_keeper(config_path: Path, agent_pid: int) -> None:
    """``hacore agent keeper``: the node's replication backend, built from the configuration
    in force (node.yaml and the options ``cluster start``/``join`` saved), and the loop."""
    base = load_config(config_path)
    state = StateFile(base.node.data_dir).load()
    overrides = state.overrides if state is not None and state.overrides else None
    config, plugins = keeper_config(config_path, overrides)
    replication = local_parts(config, plugins, tls_paths.tls_files(config)).replication
    Keeper(replication, base.node.data_dir / RECORD_FILE, agent_pid=agent_pid).run()


def backend_names(config: NodeConfig) -> set[str]:
    """The backends ``config`` names, in every family."""
    sections = (config.consensus, config.replication, config.filesync, config.services)
    return {section.backend for section in sections if section is not None}


def keeper_config(
    config_path: Path, overrides: Mapping[str, Any] | None
) -> tuple[NodeConfig, HacorePlugins]:
    """The configuration in force, checked against the plugins it needs, and those plugins.

    The keeper runs none of the plugins' hooks: it only needs its configuration checked and
    its replication backend built. Importing every installed plugin (their client libraries:
    Consul, ZooKeeper, Syncthing...) was a third of its start-up CPU, which on a joining node
    competes with the copy. So when every backend the configuration names is an entry point
    of the same name (as hacore's own plugins are), the other entry points are left out;
    anything else (a third-party backend, a check that fails) loads every plugin, so the
    answer is never other than the agent's.
    """
    named = backend_names(load_config(config_path, overrides=overrides))
    installed = {point.name for point in entry_points(group=ENTRY_POINT_GROUP)}
    if named <= installed:
        loaded: list[HacorePlugins] = []

        def registry(settings: PluginSettings) -> BackendRegistry:
            loaded.append(load_plugins(block={*settings.block, *(installed - named)}))
            return loaded[-1].registry

        try:
            config = load_config_for(config_path, registry, overrides=overrides)
        except ConfigError:
            pass
        else:
            return config, loaded[-1]
    return load_config_and_plugins(config_path, overrides=overrides)
