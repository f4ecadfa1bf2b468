"""The active keeps its synchronous standby when a renewal succeeds but the read after it fails.

Found with the minority-mode fault test: an isolated etcd leader can still answer the active's
keepalive while the reads that follow fail. The loop then saw a held lease with no members and
no status key, chose "no synchronous standby" from that empty picture and set
``synchronous_standby_names = ''``: the active acknowledged commits that only it held, and a
standby promoted after the cut lost them. In-process agents on the memory store (the read is
made to fail on the active alone) and real PostgreSQL servers.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from agent_fixtures import AgentCluster, connect, make_root, running_cluster

from hacore.backends.records import ClusterView
from hacore.errors import StoreUnavailableError
from hacore.testing.memory import drop_store, get_store
from hacore_plugins.postgresql.settings import default_bin_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(default_bin_dir() is None, reason="no PostgreSQL binaries installed"),
]

#: Several loops (loop_wait 1 s) of failed reads, well inside the lease (ttl 6 s): long
#: enough for the old code to drop the standby (it did so on the first such loop).
FAILED_READS = 4.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[AgentCluster]:
    store = f"syncread-{uuid.uuid4().hex}"
    yield from running_cluster(make_root(), {"store": store}, backend="memory")
    drop_store(store)


def test_a_failed_read_after_a_renewal_keeps_the_synchronous_standby(
    cluster: AgentCluster,
) -> None:
    active = cluster.wait_converged()
    sync = cluster.sync_standby()
    consensus = active.agent.consensus
    with connect(active) as conn:
        assert conn.execute("SHOW synchronous_standby_names").fetchone()[0] != ""

    renewals = []
    real_renew = consensus.renew

    def renew(lease: object) -> bool:
        held = real_renew(lease)  # type: ignore[arg-type]
        renewals.append(held)
        return held

    def view() -> ClusterView:
        raise StoreUnavailableError("reads fail after the renewal (test)")

    seen: set[str] = set()
    consensus.renew = renew  # type: ignore[method-assign]
    consensus.view = view  # type: ignore[method-assign]
    try:
        end = time.monotonic() + FAILED_READS
        with connect(active) as conn:
            while time.monotonic() < end:
                row = conn.execute(
                    "SELECT current_setting('synchronous_standby_names'), NOT pg_is_in_recovery()"
                ).fetchone()
                assert row is not None
                names, writable = row
                if writable:
                    seen.add(names)
                time.sleep(0.1)
    finally:
        del consensus.view
        del consensus.renew

    assert any(renewals), "the renewals must have gone through for the test to mean anything"
    assert "" not in seen, (
        "the active dropped its synchronous standby while it could not read the store: "
        f"settings seen while writable: {sorted(seen)}"
    )
    assert get_store(cluster.store["store"]).serving()
    cluster.wait_converged()
    assert cluster.sync_standby() == sync
