"""A node's configuration together with the plugins it allows, checked against them.

Here rather than in :mod:`hacore.config`: the configuration does not know about plugins (it
checks backend names against whatever registry it is given), and choosing and loading the
plugins is this layer's job.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from hacore.config.node import NodeConfig, PluginSettings, load_config_for
from hacore.plugins.registry import BackendRegistry, HacorePlugins, load_plugins


def load_config_and_plugins(
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    overrides: Mapping[str, Any] | None = None,
    extra: Iterable[object] = (),
) -> tuple[NodeConfig, HacorePlugins]:
    """The configuration and the plugins it allows (``plugins.block``), checked against them."""
    loaded: list[HacorePlugins] = []

    def registry(plugins: PluginSettings) -> BackendRegistry:
        loaded.append(load_plugins(extra, block=plugins.block))
        return loaded[-1].registry

    config = load_config_for(source, registry, overrides=overrides)
    return config, loaded[-1]
