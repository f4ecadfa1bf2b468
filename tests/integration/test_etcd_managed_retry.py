"""A managed etcd server's readiness is retried soon at first, then less often.

A join's store step waits for this node's new member to catch up and become a voter; a fixed
0.2 s between two attempts cost the join most of that when the member was ready sooner
(issue 15, target 3). The first retries now come after 20 ms, doubling up to 0.2 s.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hacore.testing.procs import free_port
from hacore_plugins.etcd.managed import RETRY_MAX, EtcdManagedStore
from hacore_plugins.etcd.testing import HOST, EtcdHarness

pytestmark = pytest.mark.skipif(
    EtcdHarness.unavailable_reason() is not None, reason=str(EtcdHarness.unavailable_reason())
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[EtcdManagedStore]:
    made = EtcdManagedStore(
        {"client_port": free_port(), "peer_port": free_port()},
        name="retry",
        host=HOST,
        data_dir=tmp_path / "store",
    )
    made.bootstrap()
    yield made
    made.stop()


def test_the_first_retries_come_soon_then_less_often(store: EtcdManagedStore) -> None:
    calls: list[float] = []

    def attempt() -> bool | None:
        calls.append(time.monotonic())
        return True if len(calls) == 8 else None

    assert store._until("testing", attempt, 30.0) is True
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    # three misses used to cost 0.6 s; now 0.02 + 0.04 + 0.08
    assert calls[3] - calls[0] < 0.3, gaps
    assert gaps[0] < 0.1, gaps
    # then no faster than every RETRY_MAX: a slow server is not kept busy
    assert min(gaps[-2:]) >= RETRY_MAX * 0.9, gaps
