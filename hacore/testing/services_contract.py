"""The services contract: what every :class:`~hacore.ServiceBackend` must do.

A backend passes when :class:`ServicesContract` passes against real processes run by its
real service manager. The implementer provides one fixture, ``services_harness``, yielding a
started :class:`ServicesHarness`, and subclasses the suite::

    import pytest
    from hacore.testing.pytest_plugin import run_family_harness
    from hacore.testing.services_contract import ServicesContract
    from my_pkg.testing import MyHarness

    @pytest.fixture(scope="module")
    def services_harness(tmp_path_factory):
        yield from run_family_harness(MyHarness, tmp_path_factory.mktemp("mine"))

    class TestMine(ServicesContract): pass

The harness finds the processes of a service's program *outside* the backend (the process
table, the manager's own tool), so a backend whose ``status`` merely repeats what it was told
fails. What is checked is what the interface promises (``hacore.services``): ``start`` returns
once the service runs and is idempotent (a second one leaves the same process); ``stop`` is
idempotent; ``status`` says whether it runs now; ``start_all`` stops at the first failure;
``stop_all`` stops every service even when one fails; a program that cannot run and a
service the backend does not know are :class:`~hacore.ServiceError`, never a claim that it
runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from hacore import ServiceBackend, ServiceError, ServiceStatus
from hacore.testing.family_harness import ServicesHarness
from hacore.testing.procs import wait_for

#: Seconds a stopped program may take to leave the process table on a loaded machine.
WAIT = 30.0


def _gone(harness: ServicesHarness, name: str) -> None:
    wait_for(lambda: harness.instances(name) == 0, WAIT, what=f"{name}'s program to exit")


def _status(backend: ServiceBackend, name: str) -> ServiceStatus:
    status = backend.status(name)
    assert isinstance(status, ServiceStatus), f"status({name!r}) returned {status!r}"
    assert status.name == name, f"status({name!r}) is about {status.name!r}"
    return status


class ServicesContract:
    """Start, stop, status and their errors on real processes."""

    @pytest.fixture
    def services(self, services_harness: ServicesHarness) -> Iterator[ServiceBackend]:
        """The backend, every runnable service stopped before and after the test."""
        backend = services_harness.make_backend()
        names = list(services_harness.runnable)
        backend.stop_all(names)
        yield backend
        backend.stop_all(names)
        for name in names:
            _gone(services_harness, name)

    # -- one service -----------------------------------------------------------------------

    def test_a_stopped_service_is_reported_stopped(
        self, services: ServiceBackend, services_harness: ServicesHarness
    ) -> None:
        name = services_harness.runnable[0]
        assert services_harness.instances(name) == 0
        assert _status(services, name).running is False

    def test_start_returns_once_it_runs_and_is_idempotent(
        self, services: ServiceBackend, services_harness: ServicesHarness
    ) -> None:
        name = services_harness.runnable[0]
        services.start(name)
        assert services_harness.instances(name) == 1, "start() returned before it ran"
        assert _status(services, name).running is True
        running = services_harness.pids(name)
        services.start(name)
        assert services_harness.pids(name) == running, "a second start() restarted it"
        assert _status(services, name).running is True

    def test_stop_ends_it_and_is_idempotent(
        self, services: ServiceBackend, services_harness: ServicesHarness
    ) -> None:
        name = services_harness.runnable[0]
        services.start(name)
        services.stop(name)
        _gone(services_harness, name)
        assert _status(services, name).running is False
        services.stop(name)
        assert _status(services, name).running is False

    def test_status_sees_a_service_that_died(
        self, services: ServiceBackend, services_harness: ServicesHarness
    ) -> None:
        """``status`` says whether it runs *now*, not what the backend last did."""
        name = services_harness.runnable[0]
        services.start(name)
        services_harness.kill(name)
        _gone(services_harness, name)
        wait_for(
            lambda: _status(services, name).running is False,
            WAIT,
            what=f"status() to see that {name} died",
        )
        services.start(name)
        assert services_harness.instances(name) == 1, "start() after a crash did not run it"

    # -- several ---------------------------------------------------------------------------

    def test_start_all_and_stop_all(
        self, services: ServiceBackend, services_harness: ServicesHarness
    ) -> None:
        names = list(services_harness.runnable)
        services.start_all(names)
        for name in names:
            assert services_harness.instances(name) == 1, f"{name} does not run"
            assert _status(services, name).running is True
        services.stop_all(names)
        for name in names:
            _gone(services_harness, name)
            assert _status(services, name).running is False

    def test_start_all_stops_at_the_first_failure(
        self, services: ServiceBackend, services_harness: ServicesHarness
    ) -> None:
        first, later = services_harness.runnable
        with pytest.raises(ServiceError):
            services.start_all([first, services_harness.unknown, later])
        assert services_harness.instances(first) == 1
        assert services_harness.instances(later) == 0, "start_all went on after a failure"

    def test_stop_all_stops_every_service_even_when_one_fails(
        self, services: ServiceBackend, services_harness: ServicesHarness
    ) -> None:
        first, later = services_harness.runnable
        services.start_all([first, later])
        # the unknown one may be reported; the others must be stopped regardless
        with contextlib.suppress(ServiceError):
            services.stop_all([first, services_harness.unknown, later])
        for name in (first, later):
            _gone(services_harness, name)
            assert _status(services, name).running is False

    # -- errors ----------------------------------------------------------------------------

    def test_a_program_that_exits_at_once_does_not_start(
        self, services: ServiceBackend, services_harness: ServicesHarness
    ) -> None:
        name = services_harness.failing
        if name is None:
            pytest.skip(f"{services_harness.backend_name}: no failing service defined")
        with pytest.raises(ServiceError):
            services.start(name)
        assert _status(services, name).running is False

    def test_an_unknown_service_is_an_error_never_running(
        self, services: ServiceBackend, services_harness: ServicesHarness
    ) -> None:
        name = services_harness.unknown
        with pytest.raises(ServiceError):
            services.start(name)
        try:
            status = services.status(name)
        except ServiceError:
            return
        assert status.running is False, f"an unknown service is reported running: {status}"
