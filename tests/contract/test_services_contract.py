"""The built-in ``process`` and ``supervisor`` services backends against the services
contract suite. (``systemd`` needs a running systemd as PID 1, which the test machines lack;
tests/unit/test_services_systemd.py covers it against a recorded ``systemctl``.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hacore.testing.family_harness import ServicesHarness
from hacore.testing.pytest_plugin import run_family_harness
from hacore.testing.services_contract import ServicesContract
from hacore_plugins.services.testing import ProcessHarness, SupervisorHarness


@pytest.fixture(
    scope="module", params=[ProcessHarness, SupervisorHarness], ids=["process", "supervisor"]
)
def services_harness(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServicesHarness]:
    harness_cls: type[ServicesHarness] = request.param
    yield from run_family_harness(harness_cls, tmp_path_factory.mktemp(harness_cls.backend_name))


class TestServices(ServicesContract):
    pass
