"""The loop's view keeps only member records signed by their own node
(hacore/agent/record_trust.py; issue 10, finding 4)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from hacore import pki
from hacore.agent.record_trust import RecordTrust
from hacore.backends.records import ClusterView, Member, NodeRole, TlsFiles
from hacore.pki import record_identity, revocation


@pytest.fixture
def ca(tmp_path: Path) -> pki.CaMaterial:
    return pki.create_ca("trusttest", tmp_path / "ca")


TRUST_LOGGER = "hacore.agent.record_trust"


def material(ca: pki.CaMaterial, tmp_path: Path, name: str) -> pki.NodeCertificate:
    return pki.ensure_node_certificate(ca, name, ["127.0.0.1"], tmp_path / name)


def signed(node: pki.NodeCertificate, name: str, host: str, **fields: Any) -> Member:
    extra: dict[str, Any] = {"replication": {"host": host, "port": 5432}}
    api = f"https://{host}:8008"
    extra["identity"] = record_identity.sign(node.certificate, node.key, name, host, api, extra)
    return Member(name=name, api_url=api, host=host, extra=extra, **fields)


def trust_of(node: pki.NodeCertificate) -> RecordTrust:
    return RecordTrust(node.node_name, TlsFiles(node.ca_file, node.cert_file, node.key_file))


def test_only_records_signed_by_their_node_are_kept(
    ca: pki.CaMaterial, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    n1, n2 = material(ca, tmp_path, "n1"), material(ca, tmp_path, "n2")
    other_ca = pki.create_ca("trusttest", tmp_path / "other")
    stranger = material(other_ca, tmp_path, "ghost")
    real = signed(n2, "n2", "10.0.0.2", role=NodeRole.STANDBY, healthy=True, position=100)
    forged = (
        # unsigned, under a new name, with a tempting position
        Member(name="ghost", host="10.0.0.9", role=NodeRole.STANDBY, healthy=True, position=10**9),
        # a member's name, signed by another member's key
        signed(n1, "n2", "10.0.0.2", role=NodeRole.STANDBY, healthy=False),
        # a certificate of another CA
        signed(stranger, "ghost", "10.0.0.9", healthy=True),
        # the real record's signature, on a record moved to another host
        Member(name="n2", host="10.0.0.66", api_url=real.api_url, extra=dict(real.extra)),
    )
    view = ClusterView(None, (signed(n1, "n1", "10.0.0.1"), real, *forged))
    trust = trust_of(n1)
    with caplog.at_level(logging.WARNING, logger=TRUST_LOGGER):
        kept = trust.view(view)
        assert [(m.name, m.host) for m in kept.members] == [("n1", "10.0.0.1"), ("n2", "10.0.0.2")]
        assert kept.member("n2") == real and kept.member("n2").healthy  # type: ignore[union-attr]
        # only the trust's own warnings: an earlier test may have left hacore's loggers at INFO
        warned = [r.getMessage() for r in caplog.records if r.name == TRUST_LOGGER]
        assert len(warned) == 4, warned
        assert any("ghost (at 10.0.0.9)" in w and "not signed" in w for w in warned)
        caplog.clear()
        trust.view(view)  # the same records again: judged, not logged again
        assert [r for r in caplog.records if r.name == TRUST_LOGGER] == []


def test_a_revoked_certificate_stops_being_believed(ca: pki.CaMaterial, tmp_path: Path) -> None:
    n1, n2 = material(ca, tmp_path, "n1"), material(ca, tmp_path, "n2")
    view = ClusterView(None, (signed(n1, "n1", "10.0.0.1"), signed(n2, "n2", "10.0.0.2")))
    trust = trust_of(n1)
    assert [m.name for m in trust.view(view).members] == ["n1", "n2"]
    revocation.install_crl(
        revocation.crl_path(n1.ca_file),
        revocation.build_crl(ca, [n2.certificate.serial_number]),
        ca.certificate,
    )
    assert [m.name for m in trust.view(view).members] == ["n1"]


def test_without_tls_material_every_record_is_kept(tmp_path: Path) -> None:
    view = ClusterView(None, (Member(name="n1"), Member(name="n2")))
    assert RecordTrust("n1", None).view(view) is view
    missing = tmp_path / "none"
    files = TlsFiles(missing / "ca.crt", missing / "node.crt", missing / "node.key")
    assert RecordTrust("n1", files).view(view) is view
