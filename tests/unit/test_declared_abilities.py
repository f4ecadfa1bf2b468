"""What a backend class declares instead of hacore guessing it (issue 12 point 4): TLS
support, the settings checks and the replication backend's optional abilities, with defaults
that say "not offered" the way their callers expect."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Collection
from pathlib import Path

import pytest

from hacore.agent import revocation_store as revoke
from hacore.agent.companions import Companions
from hacore.backends.consensus import ConsensusBackend, ManagedStore
from hacore.backends.filesync import FilesyncBackend, SyncState
from hacore.backends.replication import ReplicationBackend
from hacore.backends.services import ServiceBackend
from hacore.errors import FilesyncError, ReplicationError
from hacore.testing.memory import MemoryConsensus, drop_store
from hacore_plugins.consul.backend import ConsulConsensus
from hacore_plugins.etcd.backend import EtcdConsensus
from hacore_plugins.etcd.managed import EtcdManagedStore
from hacore_plugins.postgresql.backend import PostgresReplication
from hacore_plugins.rsync.backend import RsyncFilesync
from hacore_plugins.syncthing.backend import SyncthingFilesync
from hacore_plugins.zookeeper.backend import ZooKeeperConsensus
from hacore_plugins.zookeeper.managed import ZooKeeperManagedStore


class Plain(ReplicationBackend):
    """A database that declares nothing beyond the abstract methods."""


Plain.__abstractmethods__ = frozenset()


def plain() -> ReplicationBackend:
    return Plain({}, node_name="n1", host="10.0.0.1", data_dir=Path("/nonexistent"))


@pytest.mark.parametrize(
    "base", [ConsensusBackend, ManagedStore, ReplicationBackend, FilesyncBackend, ServiceBackend]
)
def test_every_family_declares_the_same_class_level_defaults(base: type) -> None:
    assert base.accepts_tls is False
    base.validate_settings({"anything": 1})
    base.validate_failover({"anything": 1}, None)


def test_the_built_in_plugins_declare_what_they_take() -> None:
    takes_tls = (
        EtcdConsensus,
        EtcdManagedStore,
        ZooKeeperConsensus,
        ZooKeeperManagedStore,
        PostgresReplication,
        RsyncFilesync,
        SyncthingFilesync,  # for its seed over TLS; its own peers are pinned by device ID
    )
    assert all(cls.accepts_tls for cls in takes_tls)
    # Consul's TLS is in its own settings
    assert not ConsulConsensus.accepts_tls
    assert PostgresReplication.rotates_password
    assert not ReplicationBackend.rotates_password


def test_the_optional_abilities_default_to_not_supported() -> None:
    backend = plain()
    assert backend.apply_password("replicator", "s3cret") is False
    backend.remember_password("replicator", "s3cret")
    backend.reload_tls()
    with pytest.raises(ReplicationError, match="cannot rotate its password"):
        backend.rotate_password("replicator", "s3cret")


def test_a_backend_that_cannot_rotate_leaves_the_stored_password_alone() -> None:
    name = f"abilities-{secrets.token_hex(4)}"
    store = MemoryConsensus({"store": name}, namespace="ns", node_name="a", ttl=5, retry_timeout=2)
    try:
        with pytest.raises(ReplicationError, match="cannot rotate its password"):
            revoke.rotate_replication_password(store, plain(), "replicator", None)
        assert store.get(revoke.REPLICATION_SECRET_KEY) is None
    finally:
        store.close()
        drop_store(name)


class _WholeCopy(FilesyncBackend):
    """An engine that can only judge its whole copy: ``state()`` takes no ``peers``."""

    def state(self) -> SyncState:
        return SyncState(in_sync=False, detail="whole copy")


class _Narrowing(FilesyncBackend):
    narrows_to_peers = True

    def state(self, *, peers: Collection[str] | None = None) -> SyncState:
        return SyncState(in_sync=False, detail=f"about {sorted(peers or [])}")

    def wait_in_sync(
        self, timeout: float, *, interval: float = 0.2, peers: Collection[str] | None = None
    ) -> SyncState:
        raise FilesyncError(f"waited for {sorted(peers or [])}")


@pytest.mark.parametrize(
    ("engine", "gap", "waited"),
    [(_WholeCopy, "whole copy", "not in sync"), (_Narrowing, "about ['n2']", "waited for ['n2']")],
)
def test_a_switchover_asks_about_the_target_only_when_the_engine_declares_it(
    engine: type[FilesyncBackend], gap: str, waited: str
) -> None:
    engine.__abstractmethods__ = frozenset()
    fs = engine({}, node_name="n1", host="10.0.0.1", data_dir=Path("/nonexistent"), directories=[])
    companions = Companions(
        "n1",
        fs,
        None,
        active_only=(),
        everywhere=(),
        log=logging.LoggerAdapter(logging.getLogger(__name__)),
    )
    assert companions.files_gap("n2") == gap
    assert waited in (companions.wait_files("n2", 0.0) or "")
