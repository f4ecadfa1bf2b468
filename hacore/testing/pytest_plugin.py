"""pytest plugin: runs hacore's consensus contract suites against real stores.

Installed with hacore (``pytest11`` entry point), so any project that has hacore installed has
these options and fixtures.

Options
    ``--hacore-backend=NAME[,NAME...]``: the backends to test; default: every test harness
    registered by an installed plugin (``registry.add_test_harness``). An unknown name is a
    usage error that lists the registered ones.

The test-only memory store
    ``hacore.testing.memory`` is no entry point (users never see it among the backends): this
    plugin adds it to ``$HACORE_PLUGINS`` at start, so the test process and every agent it
    starts register the ``memory`` consensus backend, managed store and test harness.

Fixtures
    ``consensus_harness`` (session): the started :class:`~hacore.testing.harness.ConsensusHarness`
    of one backend, parametrized over the selected backends (test ids ``[etcd]``,
    ``[zookeeper]``...). Started once per session and backend in a temporary directory,
    stopped at the end; skipped with the harness's ``unavailable_reason()`` when it has one.
    Each parameter carries ``xdist_group(NAME)``, so ``pytest -n 2 --dist loadgroup`` runs
    each backend on its own worker.

    ``consensus_factory``: ``consensus_factory(node_name, ttl=10.0, retry_timeout=5.0,
    settings=None)`` makes a backend on the harness's store; all backends of one test share a
    namespace unique to that test; all are closed after it.

    ``managed_store_factory``: ``managed_store_factory(name)`` makes a
    :class:`~hacore.backends.consensus.ManagedStore` with its own data directory and ports; all are
    stopped after the test. Skips when the harness has ``supports_managed = False``.

Testing a third-party backend
    Register your harness in your plugin's ``hacore_register_backends`` with
    ``registry.add_test_harness("mine", "my_pkg.testing:MyHarness")``, then a test module
    of two lines runs the whole suite::

        from hacore.testing.contract import ConsensusContract, ManagedStoreContract

        class TestMine(ConsensusContract): pass

    and ``pytest --hacore-backend=mine``. Without registering anything, override the
    harness fixture instead (in the module or your ``conftest.py``); the suite then runs
    against that harness only::

        import pytest
        from hacore.testing.contract import ConsensusContract
        from hacore.testing.pytest_plugin import run_harness
        from my_pkg.testing import MyHarness

        @pytest.fixture(scope="session")
        def consensus_harness(tmp_path_factory):
            yield from run_harness(MyHarness, tmp_path_factory.mktemp("mine"))

        class TestMine(ConsensusContract): pass

Replication, filesync and services backends
    Their suites (:mod:`hacore.testing.replication_contract`, ``filesync_contract``,
    ``services_contract``) need no registration: the test module provides the harness fixture
    (``replication_harness``, ``filesync_harness``, ``services_harness``) with
    :func:`run_family_harness` as its body, and subclasses the suite.
"""

from __future__ import annotations

import functools
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from hacore.backends.consensus import ConsensusBackend, ManagedStore
from hacore.plugins.registry import PLUGINS_ENV, BackendRegistry, env_plugins, load_plugins
from hacore.testing.family_harness import FamilyHarness
from hacore.testing.harness import ConsensusHarness

log = logging.getLogger(__name__)

_selected_key = pytest.StashKey[list[str]]()


@functools.cache
def _registry() -> BackendRegistry:
    return load_plugins().registry


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hacore", "hacore consensus contract suites")
    group.addoption(
        "--hacore-backend",
        default=None,
        metavar="NAMES",
        help="comma-separated consensus backends to run the contract suites against "
        "(default: every registered test harness)",
    )


MEMORY_PLUGIN = "hacore.testing.memory"


def enable_memory_backend() -> None:
    """Make the memory backend loadable here and in the processes started from here."""
    names = env_plugins()
    if MEMORY_PLUGIN not in names:
        os.environ[PLUGINS_ENV] = ",".join([*names, MEMORY_PLUGIN])
        _registry.cache_clear()


def pytest_configure(config: pytest.Config) -> None:
    enable_memory_backend()
    # The suites carry these marks; without the plugins that own them, --strict-markers
    # would reject them.
    if not config.pluginmanager.hasplugin("xdist"):
        config.addinivalue_line("markers", "xdist_group(name): run on one pytest-xdist worker")
    if not config.pluginmanager.hasplugin("timeout"):
        config.addinivalue_line("markers", "timeout(seconds): hard limit (needs pytest-timeout)")
    raw = config.getoption("hacore_backend", None)
    if raw is not None:
        config.stash[_selected_key] = _parse_selection(raw, _registry().names("test_harness"))


def _parse_selection(raw: str, registered: list[str]) -> list[str]:
    names = [name.strip() for name in raw.split(",") if name.strip()]
    unknown = [name for name in names if name not in registered]
    if unknown:
        raise pytest.UsageError(
            f"--hacore-backend: no test harness registered for {', '.join(unknown)}; "
            f"registered: {', '.join(registered) or 'none'}"
        )
    return names


def selected_backends(config: pytest.Config) -> list[str]:
    """The backends this run tests: ``--hacore-backend`` or every registered harness."""
    if _selected_key not in config.stash:
        config.stash[_selected_key] = _registry().names("test_harness")
    return config.stash[_selected_key]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Parametrizing the name (not the harness) leaves an overridden consensus_harness that
    # does not request hacore_backend unparametrized.
    if "hacore_backend" in metafunc.fixturenames:
        metafunc.parametrize(
            "hacore_backend",
            [
                pytest.param(name, id=name, marks=pytest.mark.xdist_group(name))
                for name in selected_backends(metafunc.config)
            ],
            indirect=True,
            scope="session",
        )


def run_harness(harness_cls: type[ConsensusHarness], workdir: Path) -> Iterator[ConsensusHarness]:
    """Body of a session fixture: skip if unavailable, start, yield, always stop."""
    reason = harness_cls.unavailable_reason()
    if reason:
        pytest.skip(f"{harness_cls.backend_name or harness_cls.__name__}: {reason}")
    harness = harness_cls(workdir)
    try:
        harness.start()
        yield harness
    finally:
        harness.stop()


H = TypeVar("H", bound=FamilyHarness)


def run_family_harness(harness_cls: type[H], workdir: Path) -> Iterator[H]:
    """Body of a replication, filesync or services harness fixture: skip if unavailable,
    start, yield, always stop::

        @pytest.fixture(scope="module")
        def replication_harness(tmp_path_factory):
            yield from run_family_harness(MyHarness, tmp_path_factory.mktemp("mine"))
    """
    reason = harness_cls.unavailable_reason()
    if reason:
        pytest.skip(f"{harness_cls.backend_name or harness_cls.__name__}: {reason}")
    harness = harness_cls(workdir)
    try:
        harness.start()
        yield harness
    finally:
        harness.stop()


@pytest.fixture(scope="session")
def hacore_backend(request: pytest.FixtureRequest) -> str:
    """The backend name this test runs against (one of ``--hacore-backend``)."""
    name: str = request.param
    return name


@pytest.fixture(scope="session")
def consensus_harness(
    hacore_backend: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ConsensusHarness]:
    harness_cls = _registry().get("test_harness", hacore_backend)
    yield from run_harness(harness_cls, tmp_path_factory.mktemp(f"hacore-{hacore_backend}"))


#: A behaviour test's store calls get this long: an answer that takes 1.2 s on a loaded
#: 2-core machine is slow, not wrong. Tests of "raises within retry_timeout" pass their own.
BEHAVIOUR_RETRY_TIMEOUT = 5.0


class ConsensusFactory:
    """Makes backends on one harness's store, in a namespace of their own, and closes them."""

    def __init__(self, harness: ConsensusHarness) -> None:
        self.harness = harness
        self.namespace = f"t{uuid.uuid4().hex[:12]}"
        self._made: list[ConsensusBackend] = []

    @property
    def backend_class(self) -> type[ConsensusBackend]:
        return _registry().consensus(self.harness.backend_name)

    def __call__(
        self,
        node_name: str,
        *,
        ttl: float = 10.0,
        retry_timeout: float = BEHAVIOUR_RETRY_TIMEOUT,
        settings: dict[str, Any] | None = None,
        namespace: str | None = None,
    ) -> ConsensusBackend:
        namespace = namespace or self.namespace
        if settings is None:
            backend = self.harness.make_backend(
                node_name, ttl=ttl, retry_timeout=retry_timeout, namespace=namespace
            )
        else:
            backend = self.backend_class(
                settings,
                namespace=namespace,
                node_name=node_name,
                ttl=ttl,
                retry_timeout=retry_timeout,
            )
        self._made.append(backend)
        return backend

    def close_all(self) -> None:
        while self._made:
            backend = self._made.pop()
            try:
                backend.close()
            except Exception:
                log.exception("closing the backend of %s failed", backend.node_name)


@pytest.fixture
def consensus_factory(consensus_harness: ConsensusHarness) -> Iterator[ConsensusFactory]:
    factory = ConsensusFactory(consensus_harness)
    try:
        yield factory
    finally:
        factory.close_all()


class ManagedStoreFactory:
    """Makes managed store servers, each with its own data directory, and stops them."""

    def __init__(self, harness: ConsensusHarness, root: Path) -> None:
        self.harness = harness
        self.root = root
        self._made: list[ManagedStore] = []

    def __call__(self, name: str) -> ManagedStore:
        store = self.harness.make_managed_store(name, self.root / name)
        self._made.append(store)
        return store

    def stop_all(self) -> None:
        while self._made:
            store = self._made.pop()
            try:
                store.stop()
            except Exception:
                log.exception("stopping managed store server %s failed", store.name)


@pytest.fixture
def managed_store_factory(
    consensus_harness: ConsensusHarness, tmp_path: Path
) -> Iterator[ManagedStoreFactory]:
    if not consensus_harness.supports_managed:
        pytest.skip(f"{consensus_harness.backend_name}: no managed store servers")
    factory = ManagedStoreFactory(consensus_harness, tmp_path / "stores")
    try:
        yield factory
    finally:
        factory.stop_all()
