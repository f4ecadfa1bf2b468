"""A :class:`~hacore.config.node.NodeConfig` written back as plain data or as ``node.yaml``.

``cluster start`` and ``cluster join`` write the configuration they settled on (with the API
credentials they made), the agent compares two configurations key by key on a reload, and
tests derive one configuration from another; :func:`hacore.config.node.load_config` reads
every result back as the same record.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

import attrs
import yaml

from hacore.atomic_files import write_atomic
from hacore.config.node import BackendSection, NodeConfig
from hacore.config.timing import timing_mapping


def to_mapping(config: NodeConfig) -> dict[str, Any]:
    """Plain data (str, numbers, lists, dicts) that :func:`load_config` reads back as ``config``."""

    def backend(section: BackendSection, **own: Any) -> dict[str, Any]:
        return {"backend": section.backend, **own, **copy.deepcopy(dict(section.settings))}

    data: dict[str, Any] = {
        "cluster": attrs.asdict(config.cluster),
        "node": {**attrs.asdict(config.node), "data_dir": str(config.node.data_dir)},
        "timing": timing_mapping(config.timing),
        "checks": attrs.asdict(config.checks),
        "failover": attrs.asdict(config.failover),
        "consensus": backend(config.consensus, managed=config.consensus.managed),
    }
    if config.replication is not None:
        data["replication"] = backend(config.replication)
    if config.filesync is not None:
        dirs = [str(d) for d in config.filesync.directories]
        data["filesync"] = backend(config.filesync, directories=dirs)
    if config.services is not None:
        data["services"] = backend(
            config.services,
            active_only=list(config.services.active_only),
            everywhere=list(config.services.everywhere),
        )
    api: dict[str, Any] = {"status_requires_auth": config.api.status_requires_auth}
    if config.api.metrics_without_credentials:
        api["metrics_without_credentials"] = True
    if config.api.auth is not None:
        api["auth"] = attrs.asdict(config.api.auth)
    if config.api.users:
        api["users"] = [attrs.asdict(user) for user in config.api.users]
    data["api"] = api
    data["tls"] = attrs.asdict(config.tls)
    data["plugins"] = {
        "block": list(config.plugins.block),
        "settings": copy.deepcopy(dict(config.plugins.settings)),
    }
    log_file = config.logging.file
    data["logging"] = {
        **attrs.asdict(config.logging),
        "file": None if log_file is None else str(log_file),
    }
    return data


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose value differs between two plain mappings (values not returned)."""
    found: list[str] = []
    for key in sorted(set(old) | set(new), key=str):
        where = f"{prefix}.{key}" if prefix else str(key)
        before, after = old.get(key), new.get(key)
        if isinstance(before, Mapping) and isinstance(after, Mapping):
            found += changed_keys(before, after, where)
        elif before != after:
            found.append(where)
    return found


def dump(config: NodeConfig, path: str | os.PathLike[str] | None = None) -> str:
    """The configuration as YAML; written to ``path`` (mode 0600, atomically) when given.

    0600 because the file holds the API password hash.
    """
    text = yaml.safe_dump(to_mapping(config), sort_keys=False, default_flow_style=False)
    if path is not None:
        write_atomic(path, text, 0o600)
    return text
