"""``hacore agent keeper``: build what the fence keeper guards, then run it.

Here, on the cluster side, because building the replication backend takes the configuration
in force, which includes the options ``cluster start``/``join`` saved in the node's state file;
the keeper itself (:mod:`hacore.agent.keeper`) only needs the backend.
"""

from __future__ import annotations

from pathlib import Path

from hacore.agent import tls_paths
from hacore.agent.keeper import RECORD_FILE, Keeper
from hacore.cluster.operation_state import StateFile
from hacore.cluster.parts import local_parts
from hacore.config.node import load_config
from hacore.plugins.configured import load_config_and_plugins


def run_keeper(config_path: Path, agent_pid: int) -> None:
    """``hacore agent keeper``: the node's replication backend, built from the configuration
    in force (node.yaml and the options ``cluster start``/``join`` saved), and the loop."""
    base, plugins = load_config_and_plugins(config_path)
    state = StateFile(base.node.data_dir).load()
    config = base
    if state is not None and state.overrides:
        config = load_config(config_path, overrides=state.overrides, registry=plugins.registry)
    replication = local_parts(config, plugins, tls_paths.tls_files(config)).replication
    Keeper(replication, base.node.data_dir / RECORD_FILE, agent_pid=agent_pid).run()
