"""The built-in ``syncthing`` filesync backend against the filesync contract suite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hacore.testing.filesync_contract import FilesyncContract
from hacore.testing.pytest_plugin import run_family_harness
from hacore_plugins.syncthing.testing import SyncthingHarness

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def filesync_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SyncthingHarness]:
    yield from run_family_harness(SyncthingHarness, tmp_path_factory.mktemp("syncthing"))


class TestSyncthing(FilesyncContract):
    pass
