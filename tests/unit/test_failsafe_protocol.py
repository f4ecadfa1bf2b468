"""Failsafe mode's protocol (hacore/agent/failsafe.py): signatures, a member's refusals and
promises, and an active's round of questions over real HTTP to real API servers.

The members behind the servers are small facades holding a real :class:`Promises`, so the
question, the answer and their signatures go through the same route, transport and code as
between agents.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hacore.agent.failsafe import (
    Answer,
    Ask,
    Confirmations,
    Peer,
    Promises,
    Refusal,
    refusal,
    sign,
    signed,
    signing_key,
)
from hacore.agent.snapshot import NodeSnapshot
from hacore.agent.vocabulary import NodeState
from hacore.api.auth import hash_password
from hacore.api.errors import AuthenticationError
from hacore.api.facade import probe_json
from hacore.api.metrics import SnapshotCollector, render
from hacore.api.server import ApiServer
from hacore.backends.records import Leader
from hacore.config.node import ApiAuth, ApiSettings, load_config
from hacore.errors import ConfigError
from hacore.testing.procs import free_port

HASH = hash_password("the-api-password", iterations=1000)
KEY = signing_key(HASH)
SETTINGS = ApiSettings(auth=ApiAuth("admin", HASH))
TTL = 6.0


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- signatures and the refusal rule ----------------------------------------------------------


def test_signatures_cover_the_whole_body_and_the_key() -> None:
    body = Ask("a", "b", 7, "n0nce").encode()
    assert signed(KEY, body, sign(KEY, body))
    assert not signed(KEY, body.replace(b'"token": 7', b'"token": 8'), sign(KEY, body))
    assert not signed(signing_key(HASH + "x"), body, sign(KEY, body))
    assert not signed(KEY, body, "")


ASK = Ask("a", "b", 7, "n")


@pytest.mark.parametrize(
    ("kw", "why"),
    [
        pytest.param({}, None, id="confirms-the-holder-it-last-read"),
        pytest.param({"enabled": False}, Refusal.OFF, id="off-here"),
        pytest.param({"me": "c"}, Refusal.WRONG_NODE, id="asked-as-another-node"),
        pytest.param({"holds_lease": True}, Refusal.HOLDS_LEASE, id="holds-the-lease"),
        pytest.param({"read": False, "leader": None}, Refusal.NO_VIEW, id="never-read-the-store"),
        pytest.param({"leader": None}, Refusal.NOT_HOLDER, id="store-shows-no-leader"),
        pytest.param({"leader": Leader("c", 8)}, Refusal.NOT_HOLDER, id="another-holder"),
        pytest.param({"leader": Leader("a", 6)}, Refusal.NOT_HOLDER, id="another-token"),
    ],
)
def test_refusal(kw: dict[str, Any], why: Refusal | None) -> None:
    args: dict[str, Any] = {
        "me": "b",
        "enabled": True,
        "holds_lease": False,
        "leader": Leader("a", 7),
        "read": True,
    }
    assert refusal(ASK, **(args | kw)) is why


def test_a_node_never_confirms_itself() -> None:
    ask = Ask("b", "b", 7, "n")
    assert refusal(ask, me="b", enabled=True, holds_lease=False, leader=Leader("b", 7), read=True)


# -- the member's promise ---------------------------------------------------------------------


def test_a_confirmation_is_a_promise_until_now_plus_ttl(tmp_path: Path) -> None:
    clock = Clock()
    promises = Promises("b", TTL, enabled=True, path=tmp_path / "p.json", clock=clock)
    assert promises.live_until() is None
    with promises.campaigning() as may:
        assert may
    answer = promises.answer(ASK, holds_lease=lambda: False, leader=Leader("a", 7), read=True)
    assert answer == Answer("b", "n", True, TTL)
    assert promises.live_until() == 100.0 + TTL
    with promises.campaigning() as may:
        assert not may, "a campaign under a live promise"
    clock.now = 100.0 + TTL - 0.01
    assert promises.live_until() is not None
    clock.now = 100.0 + TTL
    assert promises.live_until() is None
    with promises.campaigning() as may:
        assert may


def test_a_refusal_promises_nothing(tmp_path: Path) -> None:
    promises = Promises("b", TTL, enabled=True, path=tmp_path / "p.json", clock=Clock())
    answer = promises.answer(ASK, holds_lease=lambda: True, leader=Leader("a", 7), read=True)
    assert not answer.confirmed and answer.why == Refusal.HOLDS_LEASE.value
    assert promises.live_until() is None
    assert not (tmp_path / "p.json").exists()


def test_a_restarted_agent_keeps_its_predecessors_promise(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    clock = Clock()
    first = Promises("b", TTL, enabled=True, path=path, clock=clock)
    first.answer(ASK, holds_lease=lambda: False, leader=Leader("a", 7), read=True)
    clock.now += 1.0
    second = Promises("b", TTL, enabled=True, path=path, clock=clock)
    assert second.live_until() == 100.0 + TTL
    assert second.json() == {"promised_to": "a", "expires_in": TTL - 1.0}


def test_a_promise_that_cannot_be_recorded_is_not_given(tmp_path: Path) -> None:
    promises = Promises("b", TTL, enabled=True, path=tmp_path / "no" / "p.json", clock=Clock())
    answer = promises.answer(ASK, holds_lease=lambda: False, leader=Leader("a", 7), read=True)
    assert not answer.confirmed and "cannot record it: cannot write" in answer.why
    assert promises.live_until() is None


def test_an_unreadable_promise_file_holds_back_one_ttl(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text("{not json")
    promises = Promises("b", TTL, enabled=True, path=path, clock=Clock())
    assert promises.live_until() == 100.0 + TTL


# -- the active's round, over real HTTP -------------------------------------------------------


class Member:
    """The ``failsafe`` part of a node's facade, as hacore.cluster.node_service has it."""

    def __init__(self, name: str, tmp: Path, *, leader: Leader | None, key: bytes = KEY) -> None:
        self.name = name
        self.leader = leader
        self.key = key
        self.promises = Promises(name, TTL, enabled=True, path=tmp / f"{name}.json")

    def snapshot(self) -> NodeSnapshot:
        return NodeSnapshot(self.name, "0", NodeState.STANDBY, last_loop_at=time.monotonic())

    def failsafe(self, body: bytes, signature: str) -> tuple[bytes, str]:
        if not signed(self.key, body, signature):
            raise AuthenticationError("not signed with the cluster's key")
        answer = self.promises.answer(
            Ask.decode(body), holds_lease=lambda: False, leader=self.leader, read=True
        )
        out = answer.encode()
        return out, sign(self.key, out)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[dict[str, tuple[Member, ApiServer]]]:
    started: dict[str, tuple[Member, ApiServer]] = {}
    members = {
        "b": Member("b", tmp_path, leader=Leader("a", 7)),
        "c": Member("c", tmp_path, leader=Leader("a", 7)),
    }
    try:
        for name, member in members.items():
            server = ApiServer(member, SETTINGS).start()  # type: ignore[arg-type]
            started[name] = (member, server)
        yield started
    finally:
        for _, server in started.values():
            server.shutdown()


def peers(servers: dict[str, tuple[Member, ApiServer]]) -> list[Peer]:
    return [Peer(name, server.url) for name, (_, server) in sorted(servers.items())]


def asker(key: bytes | None = KEY) -> Confirmations:
    return Confirmations("a", TTL, key=lambda: key, verify=lambda: False)


def test_every_member_confirms_and_the_expiry_is_from_the_send_time(
    servers: dict[str, tuple[Member, ApiServer]],
) -> None:
    confirmations = asker()
    before = time.monotonic()
    result = confirmations.ask(peers(servers), 7, timeout=5.0)
    assert result.complete, result.missing
    assert result.asked == ("b", "c")
    expiry = confirmations.expiry
    assert expiry is not None and before + TTL <= expiry <= result.sent_at + TTL
    for member, _ in servers.values():
        promised = member.promises.live_until()
        # each member's promise starts when the question arrives: never before it was sent
        assert promised is not None and promised >= expiry
    confirmations.close()


def test_one_refusal_leaves_the_expiry_where_it_was(
    servers: dict[str, tuple[Member, ApiServer]],
) -> None:
    confirmations = asker()
    assert confirmations.ask(peers(servers), 7, timeout=5.0).complete
    first = confirmations.expiry
    servers["c"][0].leader = Leader("c", 8)  # c reached the store and saw another holder
    result = confirmations.ask(peers(servers), 7, timeout=5.0)
    assert not result.complete
    assert "refused" in result.missing["c"] and "b" not in result.missing
    assert confirmations.expiry == first
    confirmations.close()


def test_an_unreachable_member_is_no_confirmation(
    servers: dict[str, tuple[Member, ApiServer]],
) -> None:
    confirmations = asker()
    gone = Peer("d", f"http://127.0.0.1:{free_port()}")
    result = confirmations.ask([*peers(servers), gone], 7, timeout=2.0)
    assert not result.complete and set(result.missing) == {"d"}
    assert confirmations.expiry is None
    confirmations.close()


def test_a_wrong_key_is_refused_both_ways(servers: dict[str, tuple[Member, ApiServer]]) -> None:
    forger = asker(signing_key("another cluster's hash"))
    result = forger.ask(peers(servers), 7, timeout=5.0)
    assert not result.complete and set(result.missing) == {"b", "c"}
    assert all("401" in why for why in result.missing.values())
    assert all(m.promises.live_until() is None for m, _ in servers.values())
    forger.close()
    # a member that signs with another key: its "yes" is not believed
    servers["b"][0].key = signing_key("another cluster's hash")
    confirmations = asker()
    result = confirmations.ask(peers(servers), 7, timeout=5.0)
    assert set(result.missing) == {"b"}
    assert confirmations.expiry is None
    confirmations.close()


def test_no_member_and_no_key_never_confirm(servers: dict[str, tuple[Member, ApiServer]]) -> None:
    assert not asker().ask([], 7, timeout=1.0).complete
    assert not asker(None).ask(peers(servers), 7, timeout=1.0).complete


# -- the setting ------------------------------------------------------------------------------

MINIMAL: dict[str, Any] = {
    "node": {"name": "node-1", "host": "127.0.0.1"},
    "consensus": {"backend": "etcd", "endpoints": ["http://127.0.0.1:2379"]},
}


def test_failsafe_mode_is_off_by_default_and_takes_on_off_and_yaml_booleans() -> None:
    assert load_config(MINIMAL).failover.failsafe_mode == "off"
    for raw, mode in (("off", "off"), ("on", "on"), ("true", "on"), ("'off'", "off")):
        config = load_config(yaml.safe_load(f"failover: {{failsafe_mode: {raw}}}") | MINIMAL)
        assert config.failover.failsafe_mode == mode


def test_a_wrong_failsafe_mode_is_refused_with_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"failover\.failsafe_mode.*one of off, on"):
        load_config({"failover": {"failsafe_mode": "sometimes"}} | MINIMAL)


def test_status_json_and_metrics_show_failsafe_only_when_on() -> None:
    on = {"mode": "on", "holding": True, "deadline_in": 2.0, "last_round": None, "promise": None}
    snap = NodeSnapshot("a", "0", NodeState.ACTIVE, failsafe=on)
    assert probe_json(snap, 0.0)["failsafe"] == on
    text = render(SnapshotCollector(lambda: snap)).decode()
    assert 'hacore_failsafe_holding{node="a"} 1.0' in text
    assert 'hacore_failsafe_promised{node="a"} 0.0' in text
    off = NodeSnapshot("a", "0", NodeState.ACTIVE)
    assert probe_json(off, 0.0)["failsafe"] is None
    assert "hacore_failsafe" not in render(SnapshotCollector(lambda: off)).decode()


def test_over_tls_the_round_goes_over_https_verified_by_the_cluster_ca(tmp_path: Path) -> None:
    from hacore import pki
    from hacore.api.server import PlainHttp

    ca = pki.create_ca("failsafe", tmp_path / "ca")
    cert = pki.issue_node_certificate(ca, "b", ["127.0.0.1"], tmp_path / "node")
    member = Member("b", tmp_path, leader=Leader("a", 7))
    server = ApiServer(  # type: ignore[arg-type]
        member,
        SETTINGS,
        ssl_context=pki.ssl_server_context(cert, ca, require_client_cert=False),
        plain=PlainHttp.PROBES,
    ).start()
    try:
        assert server.url.startswith("https://")
        good = Confirmations("a", TTL, key=lambda: KEY, verify=lambda: pki.ssl_client_context(ca))
        assert good.ask([Peer("b", server.url)], 7, timeout=5.0).complete
        good.close()
        other = pki.create_ca("another", tmp_path / "other")
        wrong = Confirmations(
            "a", TTL, key=lambda: KEY, verify=lambda: pki.ssl_client_context(other)
        )
        result = wrong.ask([Peer("b", server.url)], 7, timeout=5.0)
        assert "unreachable" in result.missing["b"], result.missing
        wrong.close()
        plain = asker().ask([Peer("b", server.url.replace("https:", "http:"))], 7, timeout=5.0)
        assert "403" in plain.missing["b"], plain.missing
    finally:
        server.shutdown()
