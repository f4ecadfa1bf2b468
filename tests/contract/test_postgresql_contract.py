"""The built-in ``postgresql`` replication backend against the replication contract suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hacore.testing.pytest_plugin import run_family_harness
from hacore.testing.replication_contract import ReplicationContract
from hacore_plugins.postgresql.testing import PostgresHarness

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def replication_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresHarness]:
    yield from run_family_harness(PostgresHarness, tmp_path_factory.mktemp("postgresql"))


class TestPostgresql(ReplicationContract):
    pass
