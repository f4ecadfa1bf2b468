"""The plugin manager and backend registry: selection by name, ownership, blocking, hooks."""

from __future__ import annotations

import pytest

from hacore.backends.records import ClusterView, NodeRole
from hacore.errors import ConfigError, UnknownBackendError
from hacore.plugins.hookspecs import hookimpl
from hacore.plugins.registry import PLUGINS_ENV, BackendRegistry, load_plugins
from hacore.testing.memory import MemoryConsensus, MemoryHarness
from hacore.testing.pytest_plugin import MEMORY_PLUGIN


class FirstPlugin:
    @staticmethod
    @hookimpl
    def hacore_register_backends(registry: BackendRegistry) -> None:
        registry.add_consensus("shared-name", MemoryConsensus)


class SecondPlugin:
    @staticmethod
    @hookimpl
    def hacore_register_backends(registry: BackendRegistry) -> None:
        registry.add_consensus("shared-name", MemoryConsensus)


class LazyHarnessPlugin:
    @staticmethod
    @hookimpl
    def hacore_register_backends(registry: BackendRegistry) -> None:
        registry.add_test_harness("lazy", "hacore_no_such_module_anywhere:Harness")


class RoleWatcher:
    """Implements a hook with a subset of its arguments, in another order."""

    def __init__(self) -> None:
        self.calls: list[tuple[NodeRole, NodeRole]] = []

    @hookimpl
    def hacore_role_changed(self, new: NodeRole, old: NodeRole) -> None:
        self.calls.append((old, new))


def test_memory_backend_is_no_entry_point_but_loads_through_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(PLUGINS_ENV, raising=False)
    plugins = load_plugins()
    assert MEMORY_PLUGIN not in plugins.plugin_names()
    assert "memory" not in plugins.registry.names("consensus")
    assert "memory" not in plugins.registry.names("test_harness")
    monkeypatch.setenv(PLUGINS_ENV, f" {MEMORY_PLUGIN} ,{MEMORY_PLUGIN}")
    plugins = load_plugins()
    assert MEMORY_PLUGIN in plugins.plugin_names()
    assert plugins.registry.consensus("memory") is MemoryConsensus
    assert plugins.registry.get("test_harness", "memory") is MemoryHarness


def test_an_installed_plugin_also_named_in_the_environment_loads_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # hacore_plugins.etcd is an entry point named "etcd": naming its module again must not
    # make pluggy refuse it as registered under a different name.
    monkeypatch.setenv(PLUGINS_ENV, "hacore_plugins.etcd")
    plugins = load_plugins()
    assert "etcd" in plugins.registry.names("consensus")
    names = plugins.plugin_names()
    assert "etcd" in names and "hacore_plugins.etcd" not in names


def test_a_plugin_module_that_does_not_import_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PLUGINS_ENV, "hacore_no_such_module_anywhere")
    with pytest.raises(ConfigError, match="HACORE_PLUGINS names 'hacore_no_such_module_anywhere'"):
        load_plugins()


def test_unknown_backend_name_lists_the_registered_ones() -> None:
    registry = load_plugins().registry
    with pytest.raises(UnknownBackendError) as err:
        registry.consensus("no-such-store")
    message = str(err.value)
    assert "'no-such-store'" in message
    for name in registry.names("consensus"):
        assert name in message
    assert "memory" in message


def test_unknown_backend_in_an_empty_family_says_none() -> None:
    with pytest.raises(UnknownBackendError, match="registered services backends: none"):
        BackendRegistry().services("systemd")


def test_duplicate_registration_names_the_first_owner() -> None:
    with pytest.raises(ValueError, match="'shared-name' is already registered by FirstPlugin"):
        load_plugins([FirstPlugin, SecondPlugin], entry_points=False)


def test_registration_checks_family_and_base_class() -> None:
    registry = BackendRegistry()
    with pytest.raises(ValueError, match="unknown backend family 'storage'"):
        registry.add("storage", "x", MemoryConsensus)
    with pytest.raises(TypeError, match="must subclass ConsensusBackend"):
        registry.add_consensus("x", MemoryHarness)  # type: ignore[arg-type]
    assert registry.names("consensus") == []


def test_block_env_blocks_an_entry_point_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HACORE_BLOCK_PLUGINS", f" {MEMORY_PLUGIN} , somethingelse")
    plugins = load_plugins()
    assert plugins.pm.is_blocked(MEMORY_PLUGIN)
    assert plugins.pm.get_plugin(MEMORY_PLUGIN) is None
    assert "memory" not in plugins.registry.names("consensus")
    with pytest.raises(UnknownBackendError):
        plugins.registry.consensus("memory")


def test_plugin_names_omits_blocked_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HACORE_BLOCK_PLUGINS", f"{MEMORY_PLUGIN},somethingelse")
    names = load_plugins().plugin_names()
    assert MEMORY_PLUGIN not in names
    assert "somethingelse" not in names


def test_block_argument_blocks_an_extra_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HACORE_BLOCK_PLUGINS", raising=False)
    plugins = load_plugins([FirstPlugin], entry_points=False, block=["FirstPlugin"])
    assert plugins.registry.names("consensus") == []
    plugins = load_plugins([FirstPlugin], entry_points=False)
    assert plugins.registry.names("consensus") == ["shared-name"]


def test_hooks_are_called_with_keywords_and_take_any_subset() -> None:
    watcher = RoleWatcher()
    plugins = load_plugins([watcher], entry_points=False)
    plugins.hook.hacore_role_changed(
        config=None, view=ClusterView(leader=None), old=NodeRole.STANDBY, new=NodeRole.ACTIVE
    )
    assert watcher.calls == [(NodeRole.STANDBY, NodeRole.ACTIVE)]
    with pytest.raises(TypeError):
        plugins.hook.hacore_role_changed(None, None, NodeRole.STANDBY, NodeRole.ACTIVE)


def test_test_harnesses_are_imported_only_when_asked_for() -> None:
    registry = load_plugins([LazyHarnessPlugin], entry_points=False).registry
    assert registry.names("test_harness") == ["lazy"]
    with pytest.raises(ModuleNotFoundError, match="hacore_no_such_module_anywhere"):
        registry.get("test_harness", "lazy")


def test_lazy_string_resolves_to_the_class() -> None:
    registry = BackendRegistry()
    registry.add_test_harness("mem", "hacore.testing.memory:MemoryHarness")
    assert registry.get("test_harness", "mem") is MemoryHarness
