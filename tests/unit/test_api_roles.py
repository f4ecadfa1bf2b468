"""API roles, join hosts, the children's environment and the TLS warning, without a cluster
(issue 10, points 5 and 8). A real :class:`ApiServer` on loopback answers every request here;
the cluster-level proofs are in tests/integration/test_security_roles.py."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from click.testing import CliRunner

from hacore.agent.snapshot import NodeSnapshot
from hacore.agent.vocabulary import NodeState
from hacore.api.auth import Authenticator, Role, basic_header, hash_password
from hacore.api.facade import AgentFacade
from hacore.api.server import ApiServer
from hacore.backends.processes import DetachedProcess, child_environment
from hacore.cli import cli
from hacore.client.profile import Profile, load_profile, save_profile
from hacore.cluster.grant import check_join_host
from hacore.config.node import ApiAuth, ApiSettings, ApiUser, load_config
from hacore.errors import ConfigError, HacoreError
from hacore.testing.procs import ServerProcess, free_port, wait_for

ADMIN, PROBE, READER = ("admin", "a-pw"), ("lb", "p-pw"), ("ro", "r-pw")


def _settings(requires: bool = False) -> ApiSettings:
    return ApiSettings(
        auth=ApiAuth(ADMIN[0], hash_password(ADMIN[1], 1000)),
        status_requires_auth=requires,
        users=(
            ApiUser(PROBE[0], hash_password(PROBE[1], 1000), "probe"),
            ApiUser(READER[0], hash_password(READER[1], 1000), "read"),
        ),
    )


class Facade(AgentFacade):
    """The agent side of the routes: records what it was asked to do."""

    def __init__(self) -> None:
        self.done: list[str] = []

    def snapshot(self) -> NodeSnapshot:
        return NodeSnapshot(
            node_name="n1",
            version="9.9.9",
            state=NodeState.ACTIVE,
            is_active=True,
            healthy=True,
            lease_token=42,
            leader="n1",
        )

    def cluster(self) -> dict[str, Any]:
        return {"node": "n1"}

    def start_cluster(self, options: dict[str, Any]) -> dict[str, Any]:
        self.done.append("start")
        return {}

    def join_ticket(self, request: dict[str, Any]) -> dict[str, Any]:
        self.done.append(f"join:{request.get('action', 'ticket')}")
        return {"ticket": True}

    def remove_node(self, name: str) -> dict[str, Any]:
        self.done.append(f"remove:{name}")
        return {}

    def switchover(self, to: str | None) -> dict[str, Any]:
        self.done.append("switchover")
        return {}


@pytest.fixture(params=[False, True], ids=["open-probes", "status-requires-auth"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[Facade, str, bool]]:
    facade = Facade()
    with ApiServer(facade, _settings(request.param)) as server:
        yield facade, server.url, request.param


def _call(url: str, method: str, path: str, auth: tuple[str, str] | None, **kw: Any) -> int:
    with httpx.Client(base_url=url, auth=auth, timeout=10, trust_env=False) as client:
        return client.request(method, path, **kw).status_code


WRITES = [
    ("POST", "/cluster/join", {"action": "ticket"}),
    ("POST", "/cluster/join", {"action": "token"}),
    ("POST", "/cluster/start", {}),
    ("POST", "/switchover", {}),
    ("DELETE", "/nodes/n2", None),
]


def test_probe_user_reads_probes_only(served: tuple[Facade, str, bool]) -> None:
    facade, url, _ = served
    for method, path, body in WRITES:
        assert _call(url, method, path, PROBE, json=body) == 403, (method, path)
    for path in ("/nodes", "/cluster", "/nodes/n1"):
        assert _call(url, "GET", path, PROBE) == 403, path
    assert _call(url, "GET", "/status", PROBE) == 200
    assert _call(url, "GET", "/metrics", PROBE) == 200
    assert facade.done == []


def test_read_only_user_reads_but_changes_nothing(served: tuple[Facade, str, bool]) -> None:
    facade, url, _ = served
    for method, path, body in WRITES:
        assert _call(url, method, path, READER, json=body) == 403, (method, path)
    assert _call(url, "GET", "/cluster", READER) == 200
    assert _call(url, "GET", "/status", READER) == 200
    assert facade.done == []


def test_admin_does_everything(served: tuple[Facade, str, bool]) -> None:
    facade, url, _ = served
    for method, path, body in WRITES:
        assert _call(url, method, path, ADMIN, json=body) == 200, (method, path)
    assert facade.done == ["join:ticket", "join:token", "start", "switchover", "remove:n2"]


def test_probe_body_hides_token_and_version_without_credentials(
    served: tuple[Facade, str, bool],
) -> None:
    _, url, requires = served
    with httpx.Client(base_url=url, timeout=10, trust_env=False) as client:
        anonymous = client.get("/status")
        probe = client.get("/status", auth=PROBE)
    if requires:
        assert anonymous.status_code == 401
        # an authenticated load balancer may see them
        assert probe.json()["lease_token"] == 42 and probe.json()["version"] == "9.9.9"
    else:
        body = anonymous.json()
        assert body["node"] == "n1" and body["leader"] == "n1" and body["active"] is True
        assert "lease_token" not in body and "version" not in body


def test_post_needs_json(served: tuple[Facade, str, bool]) -> None:
    facade, url, _ = served
    form = _call(url, "POST", "/switchover", ADMIN, data={"to": "n2"})
    bare = _call(url, "POST", "/switchover", ADMIN, content=b"{}")
    typed = _call(
        url, "POST", "/switchover", ADMIN, content=b"{}",
        headers={"Content-Type": "application/json; charset=utf-8"},
    )  # fmt: skip
    assert (form, bare, typed) == (415, 415, 200)
    assert facade.done == ["switchover"]


def test_a_join_token_is_no_credential_elsewhere(served: tuple[Facade, str, bool]) -> None:
    facade, url, _ = served
    token = ("hacore-join", "whatever")
    assert _call(url, "POST", "/switchover", token, json={}) == 401
    assert _call(url, "GET", "/nodes", token) == 401
    assert _call(url, "POST", "/cluster/join", token, json={"action": "token"}) == 403
    assert _call(url, "POST", "/cluster/join", token, json={"action": "join"}) == 403
    # the ticket itself goes to the agent, which checks the token against the store
    assert _call(url, "POST", "/cluster/join", token, json={"action": "ticket"}) == 200
    assert facade.done == ["join:ticket"]


def test_authenticator_tells_the_roles_apart() -> None:
    auth = Authenticator(_settings().auth, users=_settings().users)
    assert auth.role(basic_header(*ADMIN)) is Role.ADMIN
    assert auth.role(basic_header(*PROBE)) is Role.PROBE
    assert auth.role(basic_header(*READER)) is Role.READ
    assert auth.role(basic_header(PROBE[0], READER[1])) is None
    assert auth.role(basic_header("nobody", ADMIN[1])) is None
    assert auth.role(basic_header(*READER)) is Role.READ  # remembered, same answer


@pytest.mark.parametrize(
    "host",
    ["all", "ALL", "samehost", "samenet", "10.0.0.0/8", "a b", "a,b", "", ".example.com",
     "host\n", "-bad", "1.2.3.4 all", "x" * 64 + ".com", "1.2.3"],
)  # fmt: skip
def test_join_host_must_be_an_address_or_a_dns_name(host: str) -> None:
    with pytest.raises(HacoreError, match="neither an IP address nor a DNS name"):
        check_join_host(host)


@pytest.mark.parametrize("host", ["10.0.0.2", "::1", "fe80::1", "node-2.example.com", "n2"])
def test_join_host_accepts_addresses_and_names(host: str) -> None:
    assert check_join_host(host)


def _write(tmp_path: Path, api: dict[str, Any], tls: bool = True) -> Path:
    raw = {
        "node": {"name": "n1", "host": "127.0.0.1", "data_dir": str(tmp_path / "d")},
        "consensus": {"backend": "etcd", "endpoints": ["http://127.0.0.1:2379"]},
        "api": api,
        "tls": {"enabled": tls},
    }
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_api_users_in_the_configuration(tmp_path: Path) -> None:
    hashed = hash_password("x", 1000)
    admin = {"username": "admin", "password_hash": hashed}
    users = [{"username": "lb", "password_hash": hashed, "role": "probe"}]
    config = load_config(_write(tmp_path, {"auth": admin, "users": users}))
    assert config.api.users == (ApiUser("lb", hashed, "probe"),)
    bad = [{"username": "admin", "password_hash": hashed, "role": "root"}]
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, {"auth": admin, "users": bad}))
    assert "api.users[0].role" in str(err.value) and "already used" in str(err.value)


def test_config_check_warns_when_tls_is_off(tmp_path: Path) -> None:
    off = CliRunner().invoke(
        cli, ["config", "check", "-c", str(_write(tmp_path, {}, tls=False)), "--no-connect"]
    )
    assert off.exit_code == 0, off.output
    assert "WARNING: tls.enabled is false" in off.output
    on = CliRunner().invoke(
        cli, ["config", "check", "-c", str(_write(tmp_path, {})), "--no-connect"]
    )
    assert on.exit_code == 0 and "WARNING" not in on.output


def test_the_agent_warns_at_start_when_tls_is_off(tmp_path: Path) -> None:
    path = _write(tmp_path, {}, tls=False)
    raw = yaml.safe_load(path.read_text())
    raw["node"]["api_port"] = free_port()
    path.write_text(yaml.safe_dump(raw))
    log = tmp_path / "agent.log"
    agent = ServerProcess(
        "agent", [sys.executable, "-m", "hacore.cli", "agent", "run", "-c", str(path)], log
    )
    agent.start()
    try:
        wait_for(lambda: "WARNING: tls.enabled is false" in log.read_text(), 60, what="the warning")
    finally:
        agent.stop(signal.SIGTERM, timeout=30)


def test_child_environment_is_minimal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HACORE_PASSWORD", "secret")
    monkeypatch.setenv("ETCD_INITIAL_CLUSTER", "evil=http://x")
    monkeypatch.setenv("LC_TIME", "C")
    env = child_environment({"STNOUPGRADE": "1"}, keep_prefixes=("HACORE_",))
    assert "PATH" in env and env["LC_TIME"] == "C" and env["STNOUPGRADE"] == "1"
    assert "HACORE_PASSWORD" not in env and "ETCD_INITIAL_CLUSTER" not in env


def test_a_detached_process_does_not_inherit_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HACORE_TEST_SECRET", "leak")
    out = tmp_path / "env.txt"
    process = DetachedProcess(
        "env dump", log_path=tmp_path / "log", pid_path=tmp_path / "pid",
        executable_name=os.path.basename(sys.executable),
    )  # fmt: skip
    code = f"import os, pathlib; pathlib.Path({str(out)!r}).write_text(repr(dict(os.environ)))"
    process.start([sys.executable, "-c", code], umask=0o077)
    wait_for(lambda: process.pid() is None, 30, what="the child to exit")
    seen = out.read_text()
    assert "HACORE_TEST_SECRET" not in seen and "PATH" in seen
    assert out.stat().st_mode & 0o077 == 0  # created under the umask asked for


def test_the_cli_profile_is_0600_and_closed_again(tmp_path: Path) -> None:
    path = tmp_path / "home" / ".hacore" / "profile.json"
    save_profile(path, Profile("c", "admin", "secret", (("n1", "https://127.0.0.1:8008"),)))
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    path.chmod(0o644)
    loaded = load_profile(path)
    assert loaded is not None and loaded.password == "secret"
    assert path.stat().st_mode & 0o777 == 0o600
