"""A removal rotates the failsafe key and the file-sync secret (issue 10, finding 4): what
the store holds, how each agent takes it, and what the old values open afterwards. The
store is the in-memory one; the signatures are checked by the real failsafe edge and the
rsync engine's files are the ones its daemon and pulls read. The same against real agents:
tests/integration/test_removal_rotation.py."""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from hacore.agent import revocation_store as revoke
from hacore.agent.errors import NotAuthenticatedError
from hacore.agent.failsafe import KEY_FILE, Ask, sign, signing_key, store_key, stored_key
from hacore.agent.failsafe_edge import FailsafeEdge, failsafe_key
from hacore.agent.hooks import NodeLog
from hacore.agent.lease import LeaseState
from hacore.agent.revocation_sync import RevocationSync
from hacore.agent.wiring import decision_config
from hacore.api.auth import hash_password
from hacore.config.node import NodeConfig, load_config
from hacore.testing.memory import MemoryConsensus, drop_store
from hacore.testing.procs import wait_for
from hacore_plugins.rsync import RsyncFilesync
from hacore_plugins.rsync.backend import PASSWORD_FILE, SECRETS_FILE
from hacore_plugins.rsync.secret import ensure_secret, read_secret


@pytest.fixture
def consensus() -> Iterator[MemoryConsensus]:
    name = f"rotation-{secrets.token_hex(4)}"
    client = MemoryConsensus(
        {"store": name}, namespace="ns", node_name="a", ttl=5, retry_timeout=5.0
    )
    yield client
    client.close()
    drop_store(name)


def test_each_rotation_is_a_new_generation(consensus: MemoryConsensus) -> None:
    assert revoke.shared_secret(consensus, revoke.FAILSAFE_KEY, None) is None
    first = revoke.rotate_shared_secret(consensus, revoke.FAILSAFE_KEY, "aa" * 32, None)
    second = revoke.rotate_shared_secret(consensus, revoke.FAILSAFE_KEY, "bb" * 32, None)
    assert (first.generation, second.generation) == (1, 2)
    assert revoke.shared_secret(consensus, revoke.FAILSAFE_KEY, None) == second
    assert "bb" not in repr(second)


def _config(tmp_path: Path) -> NodeConfig:
    path = tmp_path / "node.yaml"
    path.write_text(
        "node: {name: a, host: 127.0.0.1, data_dir: " + str(tmp_path / "data") + "}\n"
        "consensus: {backend: etcd, endpoints: ['http://127.0.0.1:2379']}\n"
        "api: {auth: {username: admin, password_hash: '" + hash_password("pw", 1000) + "'}}\n"
    )
    return load_config(path)


def test_an_agent_takes_the_rotated_key_and_the_old_one_opens_no_answer(
    consensus: MemoryConsensus, tmp_path: Path
) -> None:
    config = _config(tmp_path)
    data_dir = config.node.data_dir
    data_dir.mkdir(parents=True)
    assert config.api.auth is not None
    old = signing_key(config.api.auth.password_hash)
    assert failsafe_key(config) == old
    dcfg = attrs.evolve(decision_config(config), failsafe_mode=True)
    edge = FailsafeEdge(config, dcfg, LeaseState(), NodeLog(logging.getLogger("test"), "a"))
    question = Ask("b", "a", 7, "nonce").encode()
    edge.answer(question, sign(old, question), None)  # accepted before the rotation

    rotated = revoke.rotate_shared_secret(
        consensus, revoke.FAILSAFE_KEY, secrets.token_hex(32), None
    )
    sync = RevocationSync("a", consensus, None, None, None, data_dir=data_dir)
    try:

        def taken() -> bool:
            sync.tick()
            return stored_key(data_dir) == bytes.fromhex(rotated.value)

        wait_for(taken, 10, interval=0.1, what="the rotated key kept in the data directory")
    finally:
        sync.stop()
    assert (data_dir / "failsafe.key").stat().st_mode & 0o777 == 0o600
    with pytest.raises(NotAuthenticatedError):
        edge.answer(question, sign(old, question), None)
    new = bytes.fromhex(rotated.value)
    body, signature = edge.answer(question, sign(new, question), None)
    assert signature == sign(new, body)


def test_the_rsync_engine_takes_the_rotated_secret(
    consensus: MemoryConsensus, tmp_path: Path
) -> None:
    engine = RsyncFilesync(
        {}, node_name="a", host="127.0.0.1", data_dir=tmp_path, directories=[tmp_path / "files"]
    )
    engine._write_config()
    old = ensure_secret(engine.home)
    assert (engine.home / PASSWORD_FILE).read_text().strip() == old
    rotated = revoke.rotate_shared_secret(
        consensus, revoke.FILESYNC_SECRET_KEY, secrets.token_urlsafe(32), None
    )
    sync = RevocationSync("a", consensus, None, None, None, filesync=engine)
    try:

        def taken() -> bool:
            sync.tick()
            return read_secret(engine.home) == rotated.value

        wait_for(taken, 10, interval=0.1, what="the engine using the rotated secret")
    finally:
        sync.stop()
    # what the daemon checks each connection against, and what this node's pulls send
    assert (engine.home / SECRETS_FILE).read_text() == f"hacore:{rotated.value}\n"
    assert (engine.home / PASSWORD_FILE).read_text().strip() == rotated.value
    assert old not in (engine.home / SECRETS_FILE).read_text()


def test_a_rotated_secret_replaces_a_fixed_rsync_password(tmp_path: Path) -> None:
    """The removed node knew node.yaml's password: the rotated secret wins over it (the
    daemons: tests/integration/test_rsync_filesync.py)."""
    engine = RsyncFilesync(
        {"password": "operator-set"},
        node_name="a",
        host="127.0.0.1",
        data_dir=tmp_path,
        directories=[tmp_path / "files"],
    )
    note = engine.use_secret("other")
    assert note is not None and "filesync.password" in note
    assert (engine.home / SECRETS_FILE).read_text() == "hacore:other\n"


def test_a_key_this_cluster_never_made_is_dropped(
    consensus: MemoryConsensus, tmp_path: Path
) -> None:
    """A data directory used again keeps a key file from another cluster: the store, which
    never rotated, says to sign with the derived key, as every other member does."""
    store_key(tmp_path, "cd" * 32)
    os.utime(tmp_path / KEY_FILE, (time.time() - 60, time.time() - 60))
    sync = RevocationSync("a", consensus, None, None, None, data_dir=tmp_path)
    try:

        def dropped() -> bool:
            sync.tick()
            return not (tmp_path / KEY_FILE).exists()

        wait_for(dropped, 10, interval=0.1, what="the stray key file dropped")
        sync.stop()  # no read from now on: the last one stays the one applied
        # one written after the store was read (a rotation that read missed) is kept
        store_key(tmp_path, "ef" * 32)
        for _ in range(5):
            sync.tick()
        assert stored_key(tmp_path) == bytes.fromhex("ef" * 32)
    finally:
        sync.stop()
