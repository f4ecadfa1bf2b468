"""The agent's share of a removal never makes the loop wait on the store (issue 10 review):
its reads run on a thread of their own, and the loop only applies what they fetched."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator

import pytest

from hacore.agent import revocation_store as revoke
from hacore.agent.credentials import ReplicationCredentials
from hacore.agent.revocation_sync import RevocationSync
from hacore.testing.memory import MemoryConsensus, drop_store
from hacore.testing.procs import wait_for

#: how long a read of the frozen store waits before it gives up
RETRY_TIMEOUT = 10.0


@pytest.fixture
def consensus() -> Iterator[MemoryConsensus]:
    name = f"revocations-{secrets.token_hex(4)}"
    client = MemoryConsensus(
        {"store": name}, namespace="ns", node_name="a", ttl=5, retry_timeout=RETRY_TIMEOUT
    )
    yield client
    client.store.thaw()
    client.close()
    drop_store(name)


def test_a_frozen_store_does_not_hold_the_loop_and_a_new_secret_arrives(
    consensus: MemoryConsensus,
) -> None:
    taken: list[ReplicationCredentials] = []
    sync = RevocationSync("a", consensus, None, None, taken.append)
    try:
        consensus.store.freeze()
        for _ in range(3):
            began = time.monotonic()
            sync.tick()
            # a read of the frozen store would wait RETRY_TIMEOUT: the loop must not
            assert time.monotonic() - began < RETRY_TIMEOUT / 2
            time.sleep(0.2)
        consensus.store.thaw()
        writer = MemoryConsensus(
            {"store": consensus.store.name}, namespace="ns", node_name="b", ttl=5, retry_timeout=5
        )
        try:
            secret = revoke.ReplicationSecret("replicator", "s3cret-new", 1)
            assert writer.put(revoke.REPLICATION_SECRET_KEY, secret.encode(), expect_version=0)
        finally:
            writer.close()

        def arrived() -> bool:
            sync.tick()
            return bool(taken)

        wait_for(arrived, 60, interval=0.2, what="the rotated secret applied on a tick")
        assert taken == [ReplicationCredentials("replicator", "s3cret-new")]
    finally:
        sync.stop()


def test_a_removed_node_takes_no_secret(consensus: MemoryConsensus) -> None:
    taken: list[ReplicationCredentials] = []
    secret = revoke.ReplicationSecret("replicator", "for-the-others", 2)
    assert consensus.put(revoke.REPLICATION_SECRET_KEY, secret.encode(), expect_version=0)
    sync = RevocationSync("a", consensus, None, None, taken.append)
    try:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            sync.tick(removed=True)
            time.sleep(0.2)
        assert taken == []
    finally:
        sync.stop()
