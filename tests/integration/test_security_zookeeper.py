"""A managed ZooKeeper server keeps its data to itself (issue 10, point 8): its directory is
0700 and its snapshots and transaction logs are its owner's only, whatever the agent's umask;
and it does not inherit the agent's environment."""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hacore.testing.procs import free_port, wait_for
from hacore_plugins.zookeeper.backend import ZooKeeperConsensus
from hacore_plugins.zookeeper.managed import ZooKeeperManagedStore
from hacore_plugins.zookeeper.testing import HOST, TEST_JVM_OPTIONS

pytestmark = pytest.mark.slow
SECRET_VAR = "HACORE_TEST_SECRET_FOR_ZOOKEEPER"


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ZooKeeperManagedStore]:
    monkeypatch.setenv(SECRET_VAR, "leak")
    old = os.umask(0o022)  # what an agent under a default unit or shell has
    made = ZooKeeperManagedStore(
        {
            "client_port": free_port(),
            "peer_port": free_port(),
            "election_port": free_port(),
            "jvm_options": list(TEST_JVM_OPTIONS),
        },
        name="m1",
        host=HOST,
        data_dir=tmp_path / "store",
    )
    try:
        made.bootstrap()
        yield made
    finally:
        os.umask(old)
        made.stop()


def test_the_store_directory_and_its_files_are_private(store: ZooKeeperManagedStore) -> None:
    consensus = ZooKeeperConsensus(
        store.client_settings(),
        namespace=f"zk{uuid.uuid4().hex[:8]}",
        node_name="m1",
        ttl=5.0,
        retry_timeout=5.0,
    )
    try:
        for index in range(20):
            assert consensus.put(f"k{index}", b"secret data")
    finally:
        consensus.close()
    data = store.data_dir / "data" / "version-2"
    wait_for(lambda: any(data.glob("log.*")), 60, what="a ZooKeeper transaction log")
    for directory in (store.data_dir, store.data_dir / "data"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    written = [p for p in data.iterdir() if p.name.startswith(("log.", "snapshot."))]
    assert written
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, (path, oct(path.stat().st_mode))
    pid = store._process.pid()
    assert pid is not None
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert SECRET_VAR.encode() not in environ
