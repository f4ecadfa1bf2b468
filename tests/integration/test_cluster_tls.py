"""The cluster's internal CA and TLS, end to end: real agents, real etcd and PostgreSQL.

One cluster (``cluster start --json`` on n1, n2 and n3 joined with the fingerprint it printed)
serves every test of this module, in file order: the material each node holds, the joins that
must be refused without copying any key, what plain HTTP still gets, secrets in the logs,
and last the failover, after which a client that trusts nothing but the CA certificate
reaches the new active.
"""

from __future__ import annotations

import json
import re
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cluster_fixtures import WAIT, CliCluster, Node, formed_cluster, tree

from hacore import pki
from hacore.testing.procs import wait_for
from hacore_plugins.postgresql.settings import default_bin_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(default_bin_dir() is None, reason="no PostgreSQL binaries installed"),
]

PROBE_PATHS = ("/status", "/api/v3.1/status", "/standby", "/health", "/liveness", "/readiness")


@pytest.fixture(scope="module")
def formed() -> Iterator[CliCluster]:
    yield from formed_cluster("etcd", start_json=True)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def ca_only_client(ca_file: Path) -> ssl.SSLContext:
    """What any client of the cluster builds from the CA certificate alone."""
    context = ssl.create_default_context(cafile=str(ca_file))
    assert context.check_hostname and context.verify_mode is ssl.CERT_REQUIRED
    return context


def cluster_state(formed: CliCluster, active: Node) -> tuple[Any, ...]:
    data = active.cluster(formed.credentials())
    return (
        sorted(m["name"] for m in data["members"]),
        sorted((m["name"], m["voting"]) for m in data["store_members"]),
        data["joining"],
        data["removed"],
    )


def test_start_prints_the_fingerprint_every_member_holds_the_same_ca(formed: CliCluster) -> None:
    start = json.loads(formed.outputs["start"])
    n1 = formed.nodes["n1"]
    ca = pki.load_ca_certificate(n1.ca_file)
    assert start["ca_fingerprint"] == pki.fingerprint(ca)
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", start["ca_fingerprint"])
    assert start["api_url"].startswith("https://")
    for node in formed.nodes.values():
        assert pki.load_ca_certificate(node.ca_file) == ca
        assert pki.load_ca_certificate(node.data_dir / "pki" / "ca") == ca
        # no member keeps the CA key: it is sealed in the store (docs/security.md)
        assert not (node.data_dir / "pki" / "ca" / "ca.key").exists()
        cert = pki.load_node_certificate(node.data_dir / "pki" / "node")
        assert pki.issued_by(cert.certificate, ca)
        assert cert.node_name == node.name
        assert {"127.0.0.1", "localhost"} <= set(cert.hosts)
    # every node signed its own certificate: each has a key of its own
    keys = {(n.data_dir / "pki" / "node" / "node.key").read_bytes() for n in formed.nodes.values()}
    assert len(keys) == 3
    # the profile pins the CA, and every member URL it keeps is HTTPS
    profile = json.loads(formed.profile.read_text())
    assert (
        pki.fingerprint(pki.pem.parse_certificate(profile["ca_certificate"].encode(), "p"))
        == (start["ca_fingerprint"])
    )
    assert all(n["api_url"].startswith("https://") for n in profile["nodes"])
    # cluster ca, on any member: the same fingerprint and certificate
    n2 = formed.nodes["n2"]
    shown = formed.cli_json("cluster", "ca", "-c", str(n2.config_path))
    assert shown["fingerprint"] == start["ca_fingerprint"]
    assert shown["ca_certificate"] == n1.ca_file.read_text()
    human = formed.cli("cluster", "ca", "-c", str(n2.config_path)).output
    assert start["ca_fingerprint"] in human and "BEGIN CERTIFICATE" in human


def test_key_files_are_0600_in_0700_directories(formed: CliCluster) -> None:
    for node in formed.nodes.values():
        pki_dir = node.data_dir / "pki"
        for directory in (pki_dir / "ca", pki_dir / "node"):
            assert mode(directory) == 0o700, directory
        assert mode(pki_dir / "node" / "node.key") == 0o600
        assert mode(pki_dir / "node" / "node.crt") == 0o644
        # the node key stays out of cluster.json: it lives in pki/node only
        key_body = (pki_dir / "node" / "node.key").read_text().splitlines()[1]
        assert key_body not in (node.data_dir / "cluster.json").read_text()


def test_the_api_serves_https_and_plain_http_only_the_probes(formed: CliCluster) -> None:
    n1, n2 = formed.nodes["n1"], formed.nodes["n2"]
    auth = formed.credentials()
    context = ca_only_client(n1.ca_file)
    resp = httpx.get(f"{n1.url}/cluster", auth=auth, verify=context, timeout=10)
    assert resp.status_code == 200 and resp.json()["leader"] == "n1"
    for node in (n1, n2):
        for path in PROBE_PATHS:
            plain = httpx.get(node.plain_url + path, timeout=10)
            assert plain.status_code in (200, 503), (node.name, path, plain.text)
            assert plain.json()["node"] == node.name
            secure = httpx.get(node.url + path, verify=context, timeout=10)
            assert secure.status_code == plain.status_code
    refused = [
        ("GET", "/cluster"),
        ("GET", "/nodes"),
        ("GET", "/metrics"),
        ("GET", "/cluster/ca"),
        ("POST", "/switchover"),
        ("POST", "/cluster/join"),
        ("DELETE", "/nodes/n2"),
    ]
    for method, path in refused:
        resp = httpx.request(method, n1.plain_url + path, auth=auth, json={}, timeout=10)
        assert resp.status_code == 403, (method, path, resp.text)
        assert f"use {n1.url}{path}" in resp.json()["error"]
    # nothing changed by those refused requests
    assert formed.active() is n1
    # a client that trusts another CA gets no answer at all
    other = pki.create_ca("other", formed.root / "other-ca")
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{n1.url}/status", verify=pki.ssl_client_context(other), timeout=10)
    # the CA certificate is public over HTTPS, without credentials
    ca = httpx.get(f"{n2.url}/cluster/ca", verify=context, timeout=10).json()
    assert ca["ca_certificate"] == n1.ca_file.read_text()
    assert ca["cluster"] == "clitest"


def test_refused_joins_copy_no_key_and_change_nothing(formed: CliCluster) -> None:
    active = formed.nodes["n1"]
    before = cluster_state(formed, active)
    assert before[2] == []
    fresh = formed.add("fresh")
    plain = formed.add("plain", extra={"tls": {"enabled": False}})
    empty_profile = formed.root / "empty-profile.json"
    other_ca = pki.create_ca("clitest", formed.root / "impostor-ca")
    wrong_fp = pki.fingerprint(other_ca.certificate)

    def refused(node: Node, *extra: str, profile: Path | None = None, password: str = "") -> str:
        files = tree(node.data_dir)
        env = {"HACORE_PROFILE": str(profile or formed.profile)}
        if password:  # from the environment: --password would add a warning (it shows in ps)
            env["HACORE_PASSWORD"] = password
        args = ["cluster", "join", active.address, "-c", str(node.config_path)]
        result = formed.cli(*args, "--node-name", node.name, *extra, code=4, env=env)
        message = result.stderr.strip()
        assert message.startswith("error: ") and "\n" not in message, message
        assert tree(node.data_dir) == files, f"{node.name}'s data directory changed"
        assert not (node.data_dir / "pki").exists()
        assert not list(node.data_dir.rglob("ca.key")), "a CA key was copied"
        assert not (node.data_dir / "cluster.json").exists()
        assert node.probe()["state"] == "empty"
        assert cluster_state(formed, active) == before
        return message

    fp = ("--ca-fingerprint", formed.ca_fingerprint)
    message = refused(fresh, *fp, "--username", "admin", password="wrong")
    assert "refused the API credentials" in message
    message = refused(fresh, "--ca-fingerprint", wrong_fp)
    assert f"not the expected {wrong_fp}" in message and "nothing was changed" in message
    other_file = other_ca.cert_file
    assert other_file is not None
    message = refused(fresh, "--ca-file", str(other_file))
    assert "is not trusted" in message
    username, password = formed.credentials()
    message = refused(fresh, "--username", username, password=password, profile=empty_profile)
    assert "--ca-fingerprint" in message and "hacore cluster ca" in message
    message = refused(plain, *fp)
    assert "tls.enabled: false" in message and "must agree" in message
    for node in (fresh, plain):
        node.cleanup()
        del formed.nodes[node.name]


def test_no_secret_in_any_agent_log(formed: CliCluster) -> None:
    secrets = {"API password": formed.credentials()[1]}
    for node in formed.nodes.values():
        for key in (node.data_dir / "pki/node/node.key",):
            for number, line in enumerate(key.read_text().splitlines()):
                if not line.startswith("-----"):
                    secrets[f"{key} line {number}"] = line
        state = json.loads((node.data_dir / "cluster.json").read_text())
        secrets["replication password"] = state["replication_password"]
    logs = sorted(formed.root.glob("*.log"))
    assert {"n1.log", "n2.log", "n3.log", "fresh.log"} <= {p.name for p in logs}
    for log in logs:
        text = log.read_text(errors="replace")
        assert "fingerprint" in text or log.name in ("fresh.log", "plain.log")
        for what, secret in secrets.items():
            assert secret not in text, f"{what} in {log.name}"


def test_replication_and_store_traffic_of_the_formed_cluster_use_tls(formed: CliCluster) -> None:
    """What the cluster itself sends between members is encrypted, not only the API: each
    standby's WAL stream (``pg_stat_ssl`` of the walsenders on the active) and every store
    member's peer and client URLs, which a client reaches only with a CA-issued certificate."""
    active = formed.active()
    standbys = {n.name for n in formed.nodes.values() if n is not active}

    def streams() -> list[tuple[str, bool, str | None]] | None:
        with active.connect() as conn:
            rows = conn.execute(
                "SELECT r.application_name, s.ssl, s.version FROM pg_stat_replication r"
                " JOIN pg_stat_ssl s USING (pid) WHERE r.state = 'streaming'"
            ).fetchall()
        return rows if {row[0] for row in rows} == standbys else None

    rows = wait_for(streams, WAIT, interval=0.5, what="both standbys streaming")
    for name, ssl_on, version in rows:
        assert ssl_on, f"{name} streams WAL in clear text"
        assert version in ("TLSv1.2", "TLSv1.3"), (name, version)

    node_dir = active.data_dir / "pki" / "node"
    member_context = active.ca_context()
    member_context.load_cert_chain(node_dir / "node.crt", node_dir / "node.key")
    url = f"https://127.0.0.1:{active.store['client_port']}/v3/cluster/member/list"
    with httpx.Client(verify=member_context, timeout=10) as client:
        members = client.post(url, json={}).json()["members"]
    assert len(members) == 3, members
    for member in members:
        for address in member["peerURLs"] + member["clientURLs"]:
            assert address.startswith("https://"), (member["name"], address)
    # without a certificate of the cluster's CA, the store lets no client in
    with pytest.raises(httpx.TransportError):
        httpx.post(url, json={}, verify=active.ca_context(), timeout=10)
    plain = f"http://127.0.0.1:{active.store['client_port']}/v3/cluster/member/list"
    try:
        answer = httpx.post(plain, json={}, timeout=10)
    except httpx.TransportError:
        pass
    else:
        assert answer.status_code >= 400 and "members" not in answer.text, answer.text


def test_a_client_pinned_to_the_ca_reaches_the_new_active_after_a_failover(
    formed: CliCluster,
) -> None:
    old = formed.active()
    survivors = [n for n in formed.nodes.values() if n is not old]
    ca_file = formed.root / "ca.crt"
    ca_file.write_text(old.ca_file.read_text())  # all a client keeps: the CA certificate
    context = ca_only_client(ca_file)
    urls = [n.url for n in formed.nodes.values()]
    auth = formed.credentials()

    def active_over_tls() -> tuple[str, dict[str, Any]] | None:
        for url in urls:
            try:
                resp = httpx.get(f"{url}/status", verify=context, timeout=3)
            except httpx.TransportError as err:
                assert "CERTIFICATE_VERIFY_FAILED" not in str(err), err
                continue
            if resp.status_code == 200:
                return url, resp.json()
        return None

    found = wait_for(active_over_tls, WAIT, interval=0.5, what="the active over TLS")
    assert found is not None and found[0] == old.url
    old_cert = ssl.get_server_certificate(("127.0.0.1", old.api_port))
    old.crash()

    def new_active() -> tuple[str, dict[str, Any]] | None:
        answer = active_over_tls()
        return answer if answer is not None and answer[0] != old.url else None

    url, status = wait_for(new_active, WAIT, interval=0.5, what="a new active over TLS")
    assert status["active"] is True and status["node"] in {n.name for n in survivors}
    new = formed.nodes[status["node"]]
    # another node, another certificate, the same CA: nothing new on the client's side
    assert ssl.get_server_certificate(("127.0.0.1", new.api_port)) != old_cert
    with httpx.Client(verify=context, auth=auth, timeout=10) as client:
        view = client.get(f"{url}/cluster").json()
    assert view["leader"] == new.name
    # the CLI, with the CA from its profile only, finds it too
    assert formed.cli_json("cluster", "status")["active"] == new.name
