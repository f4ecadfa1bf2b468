"""The store's rotated secrets hold one copy per member, sealed to its certificate (issue 10):
who is sealed to, that no clear value is stored, that each member opens its own copy and no
other, that the active seals the current values to a member that came later, and that a
record in clear (an older version's, during a rolling upgrade) is still read. The store is
the in-memory one; the certificates are real ones of a real cluster CA. The same against
real agents: tests/integration/test_revocation.py."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from hacore.agent import keys
from hacore.agent import revocation_store as revoke
from hacore.agent.credentials import ReplicationCredentials
from hacore.agent.failsafe import store_key, stored_key
from hacore.agent.revocation_sync import RevocationSync
from hacore.backends.records import TlsFiles
from hacore.cluster.ticket import FAILSAFE_PART, JoinRequest, ticket_parts
from hacore.config.node import NodeConfig, load_config
from hacore.errors import HacoreError
from hacore.pki.ca import CaMaterial, create_ca
from hacore.pki.certs import NodeCertificate, issue_node_certificate
from hacore.pki.sealed_secret import SealError
from hacore.testing.memory import MemoryConsensus, drop_store
from hacore.testing.procs import wait_for


@pytest.fixture
def consensus() -> Iterator[MemoryConsensus]:
    name = f"sealed-{secrets.token_hex(4)}"
    client = MemoryConsensus(
        {"store": name}, namespace="ns", node_name="a", ttl=5, retry_timeout=5.0
    )
    yield client
    client.close()
    drop_store(name)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CaMaterial:
    return create_ca("sealed", tmp_path_factory.mktemp("ca"))


def node(ca: CaMaterial, name: str, where: Path) -> NodeCertificate:
    return issue_node_certificate(ca, name, ["127.0.0.1"], where / name)


def opener(cert: NodeCertificate, name: str | None = None) -> revoke.Opener:
    return revoke.Opener(name or cert.node_name, cert)


def tls(cert: NodeCertificate) -> TlsFiles:
    return TlsFiles(ca_file=cert.ca_file, cert_file=cert.cert_file, key_file=cert.key_file)


def test_only_current_certificates_of_the_cluster_ca_naming_their_node_are_sealed_to(
    consensus: MemoryConsensus, ca: CaMaterial, tmp_path: Path
) -> None:
    a, b = node(ca, "a", tmp_path), node(ca, "b", tmp_path)
    stranger = node(create_ca("other", tmp_path / "other-ca"), "c", tmp_path / "other")
    misnamed = node(ca, "x", tmp_path)
    revoked, removed = node(ca, "e", tmp_path), node(ca, "f", tmp_path)
    for name, cert in [
        ("a", a),
        ("b", b),
        ("c", stranger),
        ("d", misnamed),
        ("e", revoked),
        ("f", removed),
    ]:
        revoke.register_certificate(consensus, name, cert.certificate)
    consensus.put(keys.REMOVED_PREFIX + "f", b"{}")
    revoke.revoke_serials(consensus, ca, [revoked.certificate.serial_number])
    consensus.put(revoke.ISSUED_PREFIX + "ff", b"not json")

    chosen = revoke.recipients(consensus, ca.certificate)
    assert [(r.member, r.fingerprint) for r in chosen] == [
        ("a", a.fingerprint),
        ("b", b.fingerprint),
    ]
    leaving = revoke.recipients(consensus, ca.certificate, leaving=("b",))
    assert [r.member for r in leaving] == ["a"]


def test_the_store_holds_no_clear_value_and_each_member_opens_only_its_copy(
    consensus: MemoryConsensus, ca: CaMaterial, tmp_path: Path
) -> None:
    a, b, c = node(ca, "a", tmp_path), node(ca, "b", tmp_path), node(ca, "c", tmp_path)
    for cert in (a, b):
        revoke.register_certificate(consensus, cert.node_name, cert.certificate)
    to = revoke.recipients(consensus, ca.certificate)
    value = secrets.token_urlsafe(32)
    rotated = revoke.rotate_shared_secret(consensus, revoke.FAILSAFE_KEY, value, to)
    assert rotated.generation == 1

    raw = consensus.get(revoke.FAILSAFE_KEY)
    assert raw is not None
    assert value.encode() not in raw.value
    record = json.loads(raw.value)
    assert record["format"] == revoke.SEALED_FORMAT
    assert sorted(c["member"] for c in record["copies"]) == ["a", "b"]

    for cert in (a, b):
        assert revoke.shared_secret(consensus, revoke.FAILSAFE_KEY, opener(cert)) == rotated
    with pytest.raises(revoke.NoCopyForThisNode):
        revoke.shared_secret(consensus, revoke.FAILSAFE_KEY, opener(c))
    with pytest.raises(HacoreError, match="no node key"):
        revoke.shared_secret(consensus, revoke.FAILSAFE_KEY, None)
    # b's key under a's name: the copy for b's certificate is b's, and says so
    with pytest.raises(SealError):
        revoke.shared_secret(consensus, revoke.FAILSAFE_KEY, opener(b, "a"))
    # a's copy relabelled as b's and given b's fingerprint: b's key does not open it
    copies = record["copies"]
    a_copy = next(c for c in copies if c["member"] == "a")
    forged = {**a_copy, "member": "b", "fingerprint": b.fingerprint}
    record["copies"] = [forged]
    consensus.put(revoke.FAILSAFE_KEY, json.dumps(record).encode())
    with pytest.raises(SealError):
        revoke.shared_secret(consensus, revoke.FAILSAFE_KEY, opener(b))


def test_nothing_to_seal_to_rotates_nothing(consensus: MemoryConsensus) -> None:
    with pytest.raises(HacoreError, match="no member certificate"):
        revoke.rotate_shared_secret(consensus, revoke.FILESYNC_SECRET_KEY, "v", ())
    assert consensus.get(revoke.FILESYNC_SECRET_KEY) is None


def test_a_clear_record_of_an_older_version_is_still_read(
    consensus: MemoryConsensus, ca: CaMaterial, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    a = node(ca, "a", tmp_path)
    old = revoke.ReplicationSecret("replicator", "from-an-older-version", 3)
    consensus.put(revoke.REPLICATION_SECRET_KEY, old.encode())
    revoke._warned_clear.discard(revoke.REPLICATION_SECRET_KEY)
    with caplog.at_level(logging.WARNING):
        assert revoke.replication_secret(consensus, opener(a)) == old
    assert "in clear in the store" in caplog.text
    # the next rotation seals it, one generation on
    revoke.register_certificate(consensus, "a", a.certificate)
    to = revoke.recipients(consensus, ca.certificate)
    for _ in range(2):
        written = revoke._rotate(
            consensus,
            revoke.REPLICATION_SECRET_KEY,
            "sealed-now",
            to,
            {"user": "replicator"},
            lambda g: b"",
        )
    assert written == 5
    assert revoke.replication_secret(consensus, opener(a)) == revoke.ReplicationSecret(
        "replicator", "sealed-now", 5
    )


def test_the_active_seals_the_current_secret_to_a_member_that_came_later(
    consensus: MemoryConsensus, ca: CaMaterial, tmp_path: Path
) -> None:
    a, b = node(ca, "a", tmp_path), node(ca, "b", tmp_path)
    revoke.register_certificate(consensus, "a", a.certificate)
    to = revoke.recipients(consensus, ca.certificate)
    rotated = revoke.rotate_shared_secret(consensus, revoke.FAILSAFE_KEY, "cd" * 32, to)
    password = revoke._rotate(
        consensus,
        revoke.REPLICATION_SECRET_KEY,
        "pw-rotated",
        to,
        {"user": "replicator"},
        lambda g: b"",
    )
    assert password == 1
    with pytest.raises(revoke.NoCopyForThisNode):
        revoke.shared_secret(consensus, revoke.FAILSAFE_KEY, opener(b))

    # b joins: its agent registers its certificate; a's agent, active, seals to it
    taken: list[ReplicationCredentials] = []
    b_data, a_data = tmp_path / "b-data", tmp_path / "a-data"
    b_data.mkdir()
    a_data.mkdir()
    newcomer = RevocationSync("b", consensus, None, tls(b), taken.append, data_dir=b_data)
    active = RevocationSync("a", consensus, None, tls(a), None, lambda: True, data_dir=a_data)
    try:

        def sealed_and_taken() -> bool:
            newcomer.tick()
            active.tick()
            return bool(taken) and (b_data / "failsafe.key").exists()

        wait_for(sealed_and_taken, 20, interval=0.1, what="b's copies sealed and taken")
    finally:
        newcomer.stop()
        active.stop()
    assert taken == [ReplicationCredentials("replicator", "pw-rotated")]
    assert stored_key(b_data) == bytes.fromhex("cd" * 32)
    assert revoke.shared_secret(consensus, revoke.FAILSAFE_KEY, opener(b)) == rotated
    # one generation later, the copies made for the old one are not carried over
    assert revoke.add_copies(consensus, revoke.FAILSAFE_KEY, "x", 7, to) == ()


def _config(tmp_path: Path, name: str) -> NodeConfig:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"node: {{name: {name}, host: 127.0.0.1, data_dir: {tmp_path / name}}}\n"
        "consensus: {backend: etcd, endpoints: ['http://127.0.0.1:2379']}\n"
    )
    return load_config(path)


def test_the_join_ticket_carries_the_rotated_failsafe_key(tmp_path: Path) -> None:
    """The newcomer's store copy comes only once the active has seen its certificate: the
    ticket hands it the key the active uses, so it answers failsafe questions at once."""
    part = next(p for p in ticket_parts() if p.name == FAILSAFE_PART)
    active, joiner = _config(tmp_path, "a"), _config(tmp_path, "b")
    request = JoinRequest.parse(
        {
            "name": "b",
            "host": "127.0.0.1",
            "api_url": "https://127.0.0.1:1",
            "version": "0",
            "empty": True,
            "consensus_backend": "etcd",
            "managed": True,
            "replication_backend": "postgresql",
        }
    )
    assert part.grant(active, request) == {}  # never rotated
    active.node.data_dir.mkdir(parents=True)
    store_key(active.node.data_dir, "ab" * 32)
    granted = part.grant(active, request)
    assert granted == {"key": "ab" * 32}
    part.accept(joiner, json.loads(json.dumps(granted)))
    assert stored_key(joiner.node.data_dir) == bytes.fromhex("ab" * 32)
    with pytest.raises(HacoreError, match="malformed"):
        part.accept(joiner, {"key": "../../etc/passwd"})
