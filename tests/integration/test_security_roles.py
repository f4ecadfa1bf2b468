"""Least privilege on a real cluster (issue 10, points 5 and 8): API roles, single-use join
tokens bound to a name and an address, the joiner's address checked, probes that say nothing
secret, JSON-only POSTs, children without the agent's environment, private directories.

Two real agents on loopback (``cluster_fixtures``, managed etcd, TLS on): n1 starts the
cluster with a probe user and a read-only user; n2 joins with a join token and no admin
password, so its CLI profile never sees one.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cluster_fixtures import WAIT, CliCluster, Node, make_root

from hacore.api.auth import JOIN_TOKEN_USER, hash_password
from hacore.testing.procs import wait_for

pytestmark = pytest.mark.slow

SECRET_VAR = "HACORE_TEST_SECRET_FOR_CHILDREN"
SECRET_VALUE = "do-not-leak-" + "7f3a" * 4
PROBE = ("lb", "probe-password")
READER = ("monitor", "read-password")
USERS = [
    {"username": PROBE[0], "password_hash": hash_password(PROBE[1], 1000), "role": "probe"},
    {"username": READER[0], "password_hash": hash_password(READER[1], 1000), "role": "read"},
]


@pytest.fixture(scope="module")
def formed() -> Iterator[CliCluster]:
    import shutil

    cluster = CliCluster(make_root(), "etcd")
    try:
        first = cluster.add("n1", env={SECRET_VAR: SECRET_VALUE})
        out = cluster.cli(
            "cluster", "start", "-c", str(first.config_path), "--timeout", str(WAIT),
            "--options", json.dumps({"api": {"users": USERS}}),
        )  # fmt: skip
        cluster.outputs["start"] = out.output
        found = re.search(r"cluster CA fingerprint \(SHA-256\): ([0-9A-F:]+)", out.output)
        assert found, out.output
        cluster.ca_fingerprint = found.group(1)
        yield cluster
    finally:
        cluster.cleanup()
        if not os.environ.get("HACORE_KEEP_TEST_DIRS"):
            shutil.rmtree(cluster.root, ignore_errors=True)


def _client(node: Node, auth: tuple[str, str] | None) -> httpx.Client:
    return httpx.Client(
        base_url=node.url, auth=auth, verify=node.ca_context(), timeout=30.0, trust_env=False
    )


def _ticket_body(name: str, host: str = "127.0.0.1") -> dict[str, Any]:
    """A well-formed ticket request (its store identity is never used: every one here is
    refused before anything changes)."""
    return {
        "action": "ticket",
        "name": name,
        "host": host,
        "api_url": f"https://{host}:1",
        "version": "0",
        "empty": True,
        "not_empty": "",
        "consensus_backend": "etcd",
        "managed": True,
        "replication_backend": "postgresql",
        "store_identity": None,
    }


def _token(formed: CliCluster, name: str, host: str) -> dict[str, Any]:
    data = formed.cli_json("cluster", "nodes", "add", name, "--host-ip", host)
    assert isinstance(data, dict)
    return data


# ---- join tokens ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def joined(formed: CliCluster) -> dict[str, Any]:
    """n2 joins with a token, from a profile that holds no credentials at all."""
    issued = _token(formed, "n2", "127.0.0.1")
    assert issued["name"] == "n2" and issued["host"] == "127.0.0.1"
    assert 0 < issued["expires_in"] <= 900
    assert "--token" in issued["command"] and formed.ca_fingerprint in issued["command"]
    node = formed.add("n2")
    lone = formed.root / "n2-profile.json"
    result = formed.cli(
        "cluster", "--profile", str(lone), "join", formed.nodes["n1"].address,
        "-c", str(node.config_path), "--node-name", "n2", "--host-ip", "127.0.0.1",
        "--token", issued["token"], "--ca-fingerprint", formed.ca_fingerprint,
        "--timeout", str(WAIT),
    )  # fmt: skip
    assert "joined" in result.output or "streaming" in result.output, result.output
    assert "no CLI profile written" in result.output
    assert not lone.exists()
    return issued


def test_a_node_joins_with_a_single_use_token(formed: CliCluster, joined: dict[str, Any]) -> None:
    def streams() -> bool:
        row = formed.view().get("n2")
        return bool(row) and row.get("state") in ("standby", "streaming")

    wait_for(streams, WAIT, what="n2 streaming after a token join")
    # the ticket handed the probe and read-only users over: n2 knows them too
    with _client(formed.nodes["n2"], READER) as client:
        assert client.get("/nodes").status_code == 200


def test_a_used_token_is_refused(formed: CliCluster, joined: dict[str, Any]) -> None:
    with _client(formed.nodes["n1"], (JOIN_TOKEN_USER, joined["token"])) as client:
        again = client.post("/cluster/join", json=_ticket_body("n2"))
        other = client.post("/cluster/join", json=_ticket_body("n9"))
    assert again.status_code == 401, again.text
    assert other.status_code == 401, other.text
    assert "used" in again.json()["error"]


def test_a_token_works_for_its_name_and_address_only(
    formed: CliCluster, joined: dict[str, Any]
) -> None:
    for_n3 = _token(formed, "n3", "127.0.0.1")["token"]
    elsewhere = _token(formed, "n4", "127.0.0.3")["token"]
    with _client(formed.nodes["n1"], (JOIN_TOKEN_USER, for_n3)) as client:
        wrong_name = client.post("/cluster/join", json=_ticket_body("n5"))
        wrong_host = client.post("/cluster/join", json=_ticket_body("n3", "127.0.0.4"))
        mint = client.post("/cluster/join", json={"action": "token", "name": "n6", "host": "x"})
        steer = client.post("/switchover", json={})
    with _client(formed.nodes["n1"], (JOIN_TOKEN_USER, elsewhere)) as client:
        # n4's token asks from 127.0.0.1, not from the 127.0.0.3 it was issued for
        wrong_address = client.post("/cluster/join", json=_ticket_body("n4", "127.0.0.3"))
    for resp in (wrong_name, wrong_host, wrong_address, steer):
        assert resp.status_code == 401, resp.text
    assert mint.status_code == 403, mint.text


@pytest.mark.parametrize(
    "host", ["all", "samehost", "samenet", "10.0.0.0/8", "a b", "a,b", "1.2.3.4 all"]
)
def test_a_host_that_is_not_an_address_is_refused(formed: CliCluster, host: str) -> None:
    with _client(formed.nodes["n1"], formed.credentials()) as client:
        resp = client.post("/cluster/join", json=_ticket_body("n7", host))
    assert resp.status_code == 400, resp.text
    assert "neither an IP address nor a DNS name" in resp.json()["error"]
    refused = formed.cli("cluster", "nodes", "add", "n7", "--host-ip", host, code=2)
    assert "pg_hba keywords" in refused.output


# ---- roles ---------------------------------------------------------------------------------


WRITES = [
    ("POST", "/cluster/join", _ticket_body("n8")),
    ("POST", "/cluster/join", {"action": "token", "name": "n8", "host": "127.0.0.1"}),
    ("POST", "/switchover", {}),
    ("DELETE", "/nodes/n2", None),
]


@pytest.mark.parametrize("who", [PROBE, READER], ids=["probe", "read"])
def test_probe_and_read_only_users_change_nothing(formed: CliCluster, who: tuple[str, str]) -> None:
    with _client(formed.nodes["n1"], who) as client:
        for method, path, body in WRITES:
            resp = client.request(method, path, json=body)
            assert resp.status_code == 403, (method, path, resp.text)
            assert "role" in resp.json()["error"]
        status = client.get("/status")
        assert status.status_code == 200
        assert client.get("/metrics").status_code == 200
        views = [client.get(path).status_code for path in ("/nodes", "/cluster", "/nodes/n1")]
    assert views == ([403] * 3 if who == PROBE else [200] * 3)
    assert formed.active().name == "n1"


def test_the_admin_still_does_everything(formed: CliCluster) -> None:
    with _client(formed.nodes["n1"], formed.credentials()) as client:
        assert client.get("/nodes").status_code == 200
        issued = client.post("/cluster/join", json={"action": "token", "name": "n8", "host": "h8"})
    assert issued.status_code == 200 and issued.json()["token"]


# ---- point 8 -------------------------------------------------------------------------------


def test_probes_without_credentials_hide_the_fencing_token_and_version(
    formed: CliCluster,
) -> None:
    body = formed.nodes["n1"].probe()
    assert body is not None and body["http_status"] == 200
    assert body["node"] == "n1" and body["leader"] == "n1" and body["active"] is True
    assert "lease_token" not in body and "version" not in body


def test_a_post_in_another_format_is_refused(formed: CliCluster) -> None:
    with _client(formed.nodes["n1"], formed.credentials()) as client:
        form = client.post("/switchover", data={"to": "n2"})
        plain = client.post("/switchover", content=b"{}", headers={"content-type": "text/plain"})
    assert form.status_code == 415 and plain.status_code == 415
    assert "application/json" in form.json()["error"]
    assert formed.active().name == "n1"


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def test_children_do_not_get_the_agents_environment(formed: CliCluster) -> None:
    node = formed.nodes["n1"]
    assert node.proc is not None
    agent_pid = node.proc.pid
    assert agent_pid is not None
    agent_env = _environ(agent_pid)
    assert agent_env.get(SECRET_VAR) == SECRET_VALUE  # the test would prove nothing otherwise
    children = {"postgres": node.postmaster(), "etcd": node.store_server(), "keeper": node.keeper()}
    for what, pid in children.items():
        assert pid is not None, f"no {what} process"
        env = _environ(pid)
        assert SECRET_VAR not in env, f"{what} (pid {pid}) inherited {SECRET_VAR}"
        assert "PATH" in env, what


def test_data_directories_and_the_profile_are_private(formed: CliCluster) -> None:
    node = formed.nodes["n1"]
    for path in (node.data_dir / "store", node.pgdata):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    profile = formed.profile
    assert stat.S_IMODE(profile.stat().st_mode) == 0o600
    profile.chmod(0o644)  # copied carelessly: the next command closes it again
    formed.cli("cluster", "status")
    assert stat.S_IMODE(profile.stat().st_mode) == 0o600


def test_password_argument_warns_and_the_environment_is_used(formed: CliCluster) -> None:
    node = formed.nodes["n1"]
    args = ["cluster", "join", "127.0.0.1:1", "-c", str(node.config_path), "--node-name", "n9"]
    shown = formed.cli(*args, "--username", "admin", "--password", "x", code=1)
    assert "--password on the command line is visible" in shown.output
    quiet = formed.cli(*args, "--username", "admin", code=1, env={"HACORE_PASSWORD": "x"})
    assert "visible" not in quiet.output
    # both get as far as the local agent (which, being a member, has no bootstrap token)
    assert "no bootstrap token" in shown.output and "no bootstrap token" in quiet.output
