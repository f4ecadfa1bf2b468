"""The plugin manager and the backend registry.

Built-in backends are plugins like any other: they are found through the ``hacore`` entry
point group and add their classes in ``hacore_register_backends``. The configuration then
selects one backend per family by name.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Iterable
from typing import Any

import pluggy

from hacore.backends.consensus import ConsensusBackend, ManagedStore
from hacore.backends.filesync import FilesyncBackend
from hacore.backends.replication import ReplicationBackend
from hacore.backends.services import ServiceBackend
from hacore.errors import ConfigError, UnknownBackendError
from hacore.plugins import hookspecs

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "hacore"
#: Comma-separated plugin names (entry point names) that are not loaded.
BLOCK_ENV = "HACORE_BLOCK_PLUGINS"
#: Comma-separated modules loaded as plugins besides the entry points, named by their dotted
#: path: how a plugin that is not installed (the test-only memory store) reaches an agent.
PLUGINS_ENV = "HACORE_PLUGINS"

FAMILIES: dict[str, type[Any] | None] = {
    "consensus": ConsensusBackend,
    "managed_store": ManagedStore,
    "replication": ReplicationBackend,
    "filesync": FilesyncBackend,
    "services": ServiceBackend,
    # Test harnesses may be given as "module:attribute" so the package needs no test deps.
    "test_harness": None,
}


class BackendRegistry:
    """Backend classes by family and name, filled by ``hacore_register_backends``."""

    def __init__(self) -> None:
        self._backends: dict[str, dict[str, Any]] = {family: {} for family in FAMILIES}
        self._missing: dict[str, dict[str, str]] = {family: {} for family in FAMILIES}
        self._owner: dict[tuple[str, str], str] = {}
        self._current_plugin = "?"

    def add(self, family: str, name: str, backend: Any) -> None:
        if family not in FAMILIES:
            raise ValueError(f"unknown backend family {family!r}; known: {', '.join(FAMILIES)}")
        base = FAMILIES[family]
        if base is not None and not (isinstance(backend, type) and issubclass(backend, base)):
            raise TypeError(f"{family} backend {name!r} must subclass {base.__name__}")
        if name in self._backends[family]:
            owner = self._owner[(family, name)]
            raise ValueError(f"{family} backend {name!r} is already registered by {owner}")
        self._backends[family][name] = backend
        self._owner[(family, name)] = self._current_plugin

    def add_missing(self, family: str, name: str, reason: str) -> None:
        """A backend this plugin provides but cannot load here (its client library is not
        installed): selecting it says ``reason`` instead of "unknown backend"."""
        if family not in FAMILIES:
            raise ValueError(f"unknown backend family {family!r}; known: {', '.join(FAMILIES)}")
        self._missing[family][name] = reason

    def missing(self, family: str) -> dict[str, str]:
        """Backends that are known but not installed, with the reason."""
        return {
            name: why
            for name, why in sorted(self._missing[family].items())
            if name not in self._backends[family]
        }

    def add_consensus(self, name: str, cls: type[ConsensusBackend]) -> None:
        self.add("consensus", name, cls)

    def add_managed_store(self, name: str, cls: type[ManagedStore]) -> None:
        self.add("managed_store", name, cls)

    def add_replication(self, name: str, cls: type[ReplicationBackend]) -> None:
        self.add("replication", name, cls)

    def add_filesync(self, name: str, cls: type[FilesyncBackend]) -> None:
        self.add("filesync", name, cls)

    def add_services(self, name: str, cls: type[ServiceBackend]) -> None:
        self.add("services", name, cls)

    def add_test_harness(self, name: str, harness: Any) -> None:
        self.add("test_harness", name, harness)

    def names(self, family: str) -> list[str]:
        return sorted(self._backends[family])

    def get(self, family: str, name: str) -> Any:
        try:
            backend = self._backends[family][name]
        except KeyError:
            why = self._missing[family].get(name)
            if why is not None:
                raise UnknownBackendError(
                    f"{family} backend {name!r} is not installed here: {why}"
                ) from None
            known = ", ".join(self.names(family)) or "none"
            raise UnknownBackendError(
                f"unknown {family} backend {name!r}; registered {family} backends: {known}"
            ) from None
        if isinstance(backend, str):
            module, _, attr = backend.partition(":")
            backend = getattr(importlib.import_module(module), attr)
        return backend

    def consensus(self, name: str) -> type[ConsensusBackend]:
        cls: type[ConsensusBackend] = self.get("consensus", name)
        return cls

    def managed_store(self, name: str) -> type[ManagedStore]:
        cls: type[ManagedStore] = self.get("managed_store", name)
        return cls

    def replication(self, name: str) -> type[ReplicationBackend]:
        cls: type[ReplicationBackend] = self.get("replication", name)
        return cls

    def filesync(self, name: str) -> type[FilesyncBackend]:
        cls: type[FilesyncBackend] = self.get("filesync", name)
        return cls

    def services(self, name: str) -> type[ServiceBackend]:
        cls: type[ServiceBackend] = self.get("services", name)
        return cls


class HacorePlugins:
    """A pluggy manager with hacore's hooks, the installed plugins and their backends."""

    def __init__(self, pm: pluggy.PluginManager, registry: BackendRegistry) -> None:
        self.pm = pm
        self.registry = registry

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def plugin_names(self) -> list[str]:
        return sorted(name for name, plugin in self.pm.list_name_plugin() if name and plugin)


def blocked_plugins(env: dict[str, str] | None = None) -> set[str]:
    raw = (env if env is not None else os.environ).get(BLOCK_ENV, "")
    return {name.strip() for name in raw.split(",") if name.strip()}


def env_plugins(env: dict[str, str] | None = None) -> list[str]:
    raw = (env if env is not None else os.environ).get(PLUGINS_ENV, "")
    return list(dict.fromkeys(name.strip() for name in raw.split(",") if name.strip()))


def _load_env_plugins(pm: pluggy.PluginManager) -> None:
    for module_name in env_plugins():
        if pm.is_blocked(module_name) or pm.has_plugin(module_name):
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ConfigError(
                f"{PLUGINS_ENV} names {module_name!r}, which does not import ({err})"
            ) from err
        if pm.is_registered(module):
            # installed too: its entry point already registered it under another name
            continue
        pm.register(module, name=module_name)


def load_plugins(
    extra: Iterable[object] = (),
    *,
    entry_points: bool = True,
    block: Iterable[str] = (),
) -> HacorePlugins:
    """Build the plugin manager: entry-point plugins (minus blocked ones), then ``extra``.

    ``entry_points`` covers what the environment installs: the entry points and the modules
    named in ``$HACORE_PLUGINS``. ``block`` adds to the names in ``$HACORE_BLOCK_PLUGINS``.
    """
    pm = pluggy.PluginManager("hacore")
    pm.add_hookspecs(hookspecs)
    blocked = blocked_plugins() | set(block)
    for name in blocked:
        pm.set_blocked(name)
    if entry_points:
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except ImportError as err:
            raise ConfigError(
                f"a hacore plugin failed to import ({err}); block it with {BLOCK_ENV}=NAME"
            ) from err
        _load_env_plugins(pm)
    for plugin in extra:
        # an extra that is also installed (an entry point) is already in: once is enough
        if not pm.is_registered(plugin):
            pm.register(plugin)
    registry = BackendRegistry()
    for name, plugin in pm.list_name_plugin():
        impl = getattr(plugin, "hacore_register_backends", None)
        if impl is None:
            continue
        registry._current_plugin = name or repr(plugin)
        impl(registry=registry)
    registry._current_plugin = "?"
    log.debug("hacore plugins loaded: %s", ", ".join(n for n, _ in pm.list_name_plugin() if n))
    return HacorePlugins(pm, registry)
