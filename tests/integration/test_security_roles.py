"""Least privilege on a real cluster (issue 10, points 5 and 8): API roles, single-use join
tokens bound to a name and an address, the joiner's address checked, probes that say nothing
secret, JSON-only POSTs, children without the agent's environment, private directories;
removal rotates the failsafe key and the file-sync secret; ``cluster admin-password``.

Real agents on loopback (``cluster_fixtures``, managed etcd, TLS on): n1 starts the cluster
with a probe user and a read-only user; n2 joins with a join token and no admin password, so
its CLI profile never sees one; n3 joins and is removed. The admin password changes last
(the profile follows it), and n4 joins with the new one.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cluster_fixtures import WAIT, CliCluster, Node, make_root
from rsync_greeting import rsync_greeting

from hacore.agent.failsafe import KEY_FILE, Answer, Ask, sign, signed, signing_key, stored_key
from hacore.agent.failsafe import PATH as FAILSAFE_PATH
from hacore.agent.failsafe import SIGNATURE_HEADER as FAILSAFE_SIGNATURE
from hacore.api.auth import JOIN_TOKEN_USER, hash_password
from hacore.backends.records import TlsFiles
from hacore.testing.procs import free_port, wait_for
from hacore_plugins.rsync import RsyncFilesync

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not all(shutil.which(p) for p in ("rsync", "stunnel4", "openssl")),
        reason="the file sync (rsync over TLS) needs rsync, stunnel4 and openssl",
    ),
]

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
    cluster = CliCluster(make_root(), "etcd")
    try:
        first = cluster.add("n1", env={SECRET_VAR: SECRET_VALUE}, extra=files_of(cluster, "n1"))
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


def files_directory(cluster: CliCluster, name: str) -> Path:
    # the same last name on every node: rsync names its module after it
    return cluster.root / f"{name}-fs" / "shared"


def files_of(cluster: CliCluster, name: str) -> dict[str, Any]:
    """The rsync file sync (removal rotates its secret: test_removal_rotates_...)."""
    directory = files_directory(cluster, name)
    directory.mkdir(parents=True, exist_ok=True)
    return {"filesync": {"backend": "rsync", "directories": [str(directory)], "port": free_port()}}


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
    node = formed.add("n2", extra=files_of(formed, "n2"))
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


# ---- issue 10 part 1: /metrics and the join-token rate limit -------------------------------


def test_metrics_need_credentials_and_carry_no_fencing_token(formed: CliCluster) -> None:
    node = formed.active()
    with _client(node, None) as anonymous:
        refused = anonymous.get("/metrics")
        probes = anonymous.get("/status")
    assert refused.status_code == 401, refused.text
    assert "hacore_" not in refused.text
    assert probes.status_code == 200
    for who in (PROBE, formed.credentials()):
        with _client(node, who) as client:
            scraped = client.get("/metrics")
            token = client.get(f"/nodes/{node.name}") if who != PROBE else None
        assert scraped.status_code == 200 and "hacore_is_active" in scraped.text
        assert "hacore_lease_token" not in scraped.text and "version=" not in scraped.text
        if token is not None:
            # the read role still finds it where teardown reads it
            assert isinstance(token.json()["lease_token"], int) and token.json()["lease_token"]


def _from(address: str, node: Node) -> httpx.Client:
    transport = httpx.HTTPTransport(local_address=address, verify=node.ca_context())
    return httpx.Client(base_url=node.url, transport=transport, timeout=30.0, trust_env=False)


def test_failed_join_tokens_are_limited_per_address(formed: CliCluster) -> None:
    """From an address of its own (127.0.0.77), so the other tests' budget is untouched."""
    node = formed.active()
    guess = "guessed-token-" + "5e" * 8
    with _from("127.0.0.77", node) as client:
        codes = [
            client.post(
                "/cluster/join",
                json=_ticket_body("n8", "127.0.0.77"),
                auth=(JOIN_TOKEN_USER, f"{guess}-{i}"),
            ).status_code
            for i in range(5)
        ]
        assert codes == [401] * 5
        limited = client.post(
            "/cluster/join", json=_ticket_body("n8", "127.0.0.77"), auth=(JOIN_TOKEN_USER, guess)
        )
        assert limited.status_code == 429, limited.text
        assert int(limited.headers["retry-after"]) >= 1
        # a real token for this very name and address is refused too, before it is looked at
        issued = _token(formed, "n8", "127.0.0.77")["token"]
        held = client.post(
            "/cluster/join", json=_ticket_body("n8", "127.0.0.77"), auth=(JOIN_TOKEN_USER, issued)
        )
        assert held.status_code == 429, held.text
    with _from("127.0.0.78", node) as other:
        wrong = other.post(
            "/cluster/join", json=_ticket_body("n8", "127.0.0.78"), auth=(JOIN_TOKEN_USER, guess)
        )
    assert wrong.status_code == 401, wrong.text  # another address has its own budget
    line = "join token from 127.0.0.77 for node 'n8' refused"
    wait_for(lambda: line in node.log_path.read_text(), WAIT, what="the refusal in the log")
    log = node.log_path.read_text()
    assert guess not in log and issued not in log


# ---- issue 10 part 1: removal rotates the failsafe key and the file-sync secret ------------


@pytest.fixture(scope="module")
def rotated(formed: CliCluster, joined: dict[str, Any]) -> dict[str, Any]:
    """n3 joins, then is removed; what its disk held is kept to be tried afterwards."""
    first = formed.nodes["n1"]
    third = formed.add("n3", extra=files_of(formed, "n3"))
    formed.cli(
        *third.join_arguments(first), "--ca-fingerprint", formed.ca_fingerprint,
        "--timeout", str(WAIT),
    )  # fmt: skip
    state = json.loads((third.data_dir / "cluster.json").read_text())
    loot = {
        "failsafe_key": signing_key(state["overrides"]["api"]["auth"]["password_hash"]),
        "rsync_secret": (third.data_dir / "filesync" / "rsync" / "secret").read_text().strip(),
    }
    assert not (third.data_dir / KEY_FILE).exists()  # never rotated: the derived key holds
    answer = formed.cli_json("cluster", "nodes", "remove", "n3", "--yes")
    return {"answer": answer, "loot": loot, "removed": third}


def _question(key: bytes, member: str) -> tuple[bytes, dict[str, str]]:
    body = Ask("n1", member, 1, secrets.token_hex(8)).encode()
    return body, {FAILSAFE_SIGNATURE: sign(key, body), "content-type": "application/json"}


def test_removal_rotates_the_failsafe_key(formed: CliCluster, rotated: dict[str, Any]) -> None:
    assert rotated["answer"]["failsafe_key"] == "rotated (generation 1)", rotated["answer"]
    first, second = formed.nodes["n1"], formed.nodes["n2"]
    new = stored_key(first.data_dir)
    old = rotated["loot"]["failsafe_key"]
    assert new is not None and new != old
    # the remaining members share the new key ...
    wait_for(lambda: stored_key(second.data_dir) == new, WAIT, what="n2 taking the new key")
    with _client(second, None) as client:
        body, headers = _question(old, "n2")
        refused = client.post(FAILSAFE_PATH, content=body, headers=headers)
        body, headers = _question(new, "n2")
        answered = client.post(FAILSAFE_PATH, content=body, headers=headers)
    # ... the removed node's copy opens no answer, and a question from n1 gets one, signed
    assert refused.status_code == 401, refused.text
    assert answered.status_code == 200, answered.text
    assert signed(new, answered.content, answered.headers[FAILSAFE_SIGNATURE])
    assert Answer.decode(answered.content).member == "n2"
    # the removed node follows no secret any more
    assert stored_key(rotated["removed"].data_dir) != new


def _rsync_from(source: Node, client: Node, secret: str, into: Path) -> str:
    """rsync's errors pulling ``source``'s directory over TLS as ``client`` would, with
    ``secret``; "" when it worked."""
    tls = TlsFiles(
        client.data_dir / "pki" / "node" / "ca.crt",
        client.data_dir / "pki" / "node" / "node.crt",
        client.data_dir / "pki" / "node" / "node.key",
    )
    port = source.extra["filesync"]["port"]
    engine = RsyncFilesync(
        {}, node_name="probe", host="127.0.0.1", data_dir=into, directories=[], tls=tls
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSYNC_")}
    env["RSYNC_CONNECT_PROG"] = engine.connect_command("127.0.0.1", port)
    password = into / "password"
    password.write_text(secret + "\n")
    password.chmod(0o600)
    done = subprocess.run(
        ["rsync", "-r", f"--password-file={password}", "--contimeout=20", "--timeout=20",
         f"rsync://hacore@127.0.0.1:{port}/hacore-shared/", f"{into / 'copy'}/"],
        capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    return "" if done.returncode == 0 else done.stderr or f"exit {done.returncode}"


def test_removal_rotates_the_file_sync_secret(
    formed: CliCluster, rotated: dict[str, Any], tmp_path: Path
) -> None:
    assert rotated["answer"]["filesync_secret"] == "rotated (generation 1)", rotated["answer"]
    first, second = formed.nodes["n1"], formed.nodes["n2"]
    old = rotated["loot"]["rsync_secret"]
    new = (first.data_dir / "filesync" / "rsync" / "secret").read_text().strip()
    assert new != old
    # the old secret opens no remaining member's daemon; the control differs in it alone
    for source in (first, second):
        wait_for(
            lambda source=source: (
                "auth failed"
                in _rsync_from(source, second, old, Path(tempfile.mkdtemp(dir=tmp_path)))
            ),
            WAIT,
            what=f"{source.name}'s daemon refusing the old secret",
        )
        assert _rsync_from(source, second, new, Path(tempfile.mkdtemp(dir=tmp_path))) == ""
    # and the members left still sync files with each other
    mark = secrets.token_hex(8)
    (files_directory(formed, "n1") / f"after-{mark}").write_text(mark)
    arrived = files_directory(formed, "n2") / f"after-{mark}"
    wait_for(arrived.exists, WAIT, what="a file written on the active reaching n2")
    assert arrived.read_text() == mark


def _rsync_greeting(client: Node, port: int) -> str:
    pki_dir = client.data_dir / "pki" / "node"
    return rsync_greeting(pki_dir / "ca.crt", pki_dir / "node.crt", pki_dir / "node.key", port)


def test_the_removed_nodes_certificate_completes_no_rsync_handshake(
    formed: CliCluster, rotated: dict[str, Any]
) -> None:
    """Every member's stunnel takes the removal's CRL: the removed node's certificate is
    refused at the handshake, before any secret, while a member's still gets in."""
    removed: Node = rotated["removed"]
    second = formed.nodes["n2"]
    for member in (formed.nodes["n1"], second):
        port = member.extra["filesync"]["port"]
        wait_for(
            lambda port=port: "revoked" in _rsync_greeting(removed, port),
            WAIT,
            what=f"{member.name}'s stunnel refusing the removed node's certificate",
        )
    assert _rsync_greeting(second, formed.nodes["n1"].extra["filesync"]["port"]) == ""


# ---- issue 10: cluster admin-password (last: it changes the profile's password) ------------


NEW_PASSWORD = "a-new-admin-password-" + os.urandom(4).hex()


def _admin_status(node: Node, auth: tuple[str, str]) -> int:
    with _client(node, auth) as client:
        return client.get("/cluster").status_code


def _change(formed: CliCluster, current: str, new: str, code: int) -> str:
    env = {"HACORE_PASSWORD": current, "HACORE_NEW_PASSWORD": new}
    return formed.cli("cluster", "admin-password", code=code, env=env).output


def test_admin_password_refusals_change_nothing(formed: CliCluster) -> None:
    user, old = formed.credentials()
    wrong = _change(formed, "not-the-password", NEW_PASSWORD, 4)
    assert "credentials" in wrong, wrong
    assert "too short" in _change(formed, old, "short", 2)
    assert "is the current one" in _change(formed, old, old, 2)
    # no terminal and no environment: nothing to ask with
    missing = formed.cli("cluster", "admin-password", code=2, env={"HACORE_PASSWORD": old})
    assert "HACORE_NEW_PASSWORD" in missing.output
    assert _admin_status(formed.nodes["n1"], (user, old)) == 200
    assert formed.credentials() == (user, old)


def test_the_old_admin_password_opens_nothing_and_the_new_one_joins(
    formed: CliCluster, joined: dict[str, Any]
) -> None:
    """On the active at once, on the member that was there during the change (n2) within
    seconds, and on a node that joins afterwards; the new password unseals the CA key for
    that join; the CLI profile follows."""
    user, old = formed.credentials()
    first, second = formed.nodes["n1"], formed.nodes["n2"]
    out = formed.cli(
        "cluster", "admin-password", "--json",
        env={"HACORE_PASSWORD": old, "HACORE_NEW_PASSWORD": NEW_PASSWORD},
    )  # fmt: skip
    answer = json.loads(out.stdout)
    assert answer["changed"] is True, answer
    assert answer["ca_key"] == "resealed under the new password", answer
    assert answer["failsafe_key"].startswith("rotated"), answer
    assert "new password" in answer["profile"], answer
    # the profile follows, and a command run with it works
    assert formed.credentials() == (user, NEW_PASSWORD)
    formed.cli("cluster", "profile", "show")
    formed.cli("cluster", "status")
    assert _admin_status(first, (user, old)) == 401
    assert _admin_status(first, (user, NEW_PASSWORD)) == 200
    wait_for(
        lambda: _admin_status(second, (user, old)) == 401, 30, what="n2 refusing the old password"
    )
    assert _admin_status(second, (user, NEW_PASSWORD)) == 200
    # a standby does not change it
    with _client(second, (user, NEW_PASSWORD)) as client:
        refused = client.post(
            "/cluster/admin-password", json={"new_password": "yet-another-long-password"}
        )
    assert refused.status_code != 200 and "active" in refused.text, refused.text
    # the new password unseals the CA key: the active signs a joiner's certificate with it
    fourth = formed.add("n4", extra=files_of(formed, "n4"))
    formed.cli(
        *fourth.join_arguments(first), "--username", user, "--ca-fingerprint",
        formed.ca_fingerprint, "--timeout", str(WAIT), env={"HACORE_PASSWORD": NEW_PASSWORD},
    )  # fmt: skip
    assert _admin_status(fourth, (user, old)) == 401
    assert _admin_status(fourth, (user, NEW_PASSWORD)) == 200
