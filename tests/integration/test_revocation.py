"""Removing a node takes away what it held (issue 10, finding 4; docs/security.md).

A real three-node cluster (managed etcd, TLS) formed through the CLI; a standby is removed.
Then the removed node's certificate and key, and the replication password it knew, are
tried against the cluster as an attacker holding its disk would: a PostgreSQL replication
connection, an etcd request, the publication of a member record. Each is refused, and each
refusal is shown to come from the revocation (the certificate) or the rotation (the
password) by a control that differs in that one thing and is accepted. The cluster left
still streams (also after its standby reconnects with the rotated password), switches over,
fails over and takes writes. No node's disk holds the CA key (it is sealed in the store), and
a member record written straight into the store by someone else is no member to the agents.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import re
import secrets
import shutil
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from cluster_fixtures import WAIT, CliCluster, Node, etcdctl, formed_cluster
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hacore import __version__
from hacore.agent.failsafe import stored_key
from hacore.pki import pem
from hacore.pki.sealed_secret import SealError, unseal
from hacore.testing.procs import wait_for
from hacore_plugins.postgresql.config_files import parse_pgpass
from hacore_plugins.postgresql.settings import default_bin_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(default_bin_dir() is None, reason="no PostgreSQL binaries installed"),
]


@pytest.fixture(scope="module")
def trio() -> Iterator[CliCluster]:
    yield from formed_cluster("etcd")


def stolen(node: Node, into: Path) -> dict[str, Any]:
    """What a copy of ``node``'s disk holds: its TLS material and its replication password."""
    shutil.copytree(node.data_dir / "pki" / "node", into)
    state = json.loads((node.data_dir / "cluster.json").read_text())
    return {
        "ca": into / "ca.crt",
        "cert": into / "node.crt",
        "key": into / "node.key",
        "password": replication_password(node),
        "api_auth": state["overrides"]["api"]["auth"],
    }


def replication_password(node: Node) -> str:
    entries = parse_pgpass((node.data_dir / "replication" / "node" / "pgpass").read_text())
    passwords = {password for (_, _, user), password in entries.items() if user == "replicator"}
    assert len(passwords) == 1, f"{node.name}'s passfile: {sorted(entries)}"
    return passwords.pop()


def own_material(node: Node) -> dict[str, Any]:
    pki = node.data_dir / "pki" / "node"
    return {"ca": pki / "ca.crt", "cert": pki / "node.crt", "key": pki / "node.key"}


def replication_login(active: Node, material: dict[str, Any], password: str) -> str | None:
    """A physical replication connection to ``active``; None when accepted, else the error."""
    try:
        conn = psycopg.connect(
            host="127.0.0.1",
            port=active.pg_port,
            user="replicator",
            password=password,
            dbname="replication",
            replication="true",
            sslmode="verify-full",
            sslrootcert=str(material["ca"]),
            sslcert=str(material["cert"]),
            sslkey=str(material["key"]),
            connect_timeout=10,
            autocommit=True,
        )
    except psycopg.OperationalError as err:
        return str(err)
    try:
        conn.execute("IDENTIFY_SYSTEM")
    finally:
        conn.close()
    return None


def etcd_put(node: Node, material: dict[str, Any], key: str, value: bytes) -> str | None:
    """An etcd v3 put on ``node``'s store server with ``material``; None when it is done."""
    context = ssl.create_default_context(cafile=str(material["ca"]))
    context.load_cert_chain(str(material["cert"]), str(material["key"]))
    body = {
        "key": base64.b64encode(key.encode()).decode(),
        "value": base64.b64encode(value).decode(),
    }
    url = f"https://127.0.0.1:{node.store['client_port']}/v3/kv/put"
    try:
        with httpx.Client(verify=context, trust_env=False, timeout=10) as client:
            answer = client.post(url, json=body)
    except (httpx.HTTPError, ssl.SSLError, OSError) as err:
        return f"{type(err).__name__}: {err}"
    if answer.status_code != 200:
        return f"HTTP {answer.status_code}: {answer.text}"
    return None


def etcd_delete(node: Node, material: dict[str, Any], key: str) -> None:
    context = ssl.create_default_context(cafile=str(material["ca"]))
    context.load_cert_chain(str(material["cert"]), str(material["key"]))
    url = f"https://127.0.0.1:{node.store['client_port']}/v3/kv/deleterange"
    with httpx.Client(verify=context, trust_env=False, timeout=10) as client:
        answer = client.post(url, json={"key": base64.b64encode(key.encode()).decode()})
    assert answer.status_code == 200, answer.text


def member_key(cluster: CliCluster, name: str) -> str:
    """Where ``name``'s member record lives in the store (as the agents publish it)."""
    return f"/hacore/{cluster.namespace}/members/{name}"


@pytest.fixture(scope="module")
def removed(trio: CliCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    active = trio.active()
    victim = next(n for n in trio.nodes.values() if n is not active)
    loot = stolen(victim, tmp_path_factory.mktemp("loot") / "pki")
    out = trio.cli("cluster", "nodes", "remove", victim.name, "--yes", "--json").stdout
    answer = json.loads(out)
    wait_for(
        lambda: victim.probe() is None or victim.probe()["state"] == "removed",
        WAIT,
        what=f"{victim.name} to step down",
    )
    victim.cleanup()  # the attacker is someone else with the disk; the node itself is gone
    rest = [n for n in trio.nodes.values() if n is not victim]
    return {"active": active, "victim": victim, "rest": rest, "loot": loot, "answer": answer}


def test_removal_reports_the_revocation_and_the_rotation(removed: dict[str, Any]) -> None:
    answer = removed["answer"]
    assert answer["revoked_certificates"], answer
    assert answer["replication_password"].startswith("rotated"), answer


def raw_secret(node: Node, cluster: CliCluster, key: str) -> bytes:
    """The store's record under ``key`` as etcd holds it (``etcdctl get``), not decoded by
    any hacore code."""
    out = etcdctl(node, "get", f"/hacore/{cluster.namespace}/{key}", "-w", "json")
    kvs = json.loads(out).get("kvs") or []
    assert kvs, f"no {key} in the store"
    return base64.b64decode(kvs[0]["value"])


def test_the_store_holds_the_rotated_secrets_sealed_to_each_remaining_member_only(
    trio: CliCluster, removed: dict[str, Any]
) -> None:
    """No rotated value is in the store in clear (a removed node still connected to a store
    server, or a copy of the store, would read it); each remaining member took the new values
    from its own sealed copy; none is sealed to the removed node, whose key opens none."""
    active, victim, rest, loot = (removed[k] for k in ("active", "victim", "rest", "loot"))
    # the active keeps no passfile of its own (it clones from no one)
    standbys = [n for n in rest if n is not active]
    for node in standbys:
        wait_for(
            lambda node=node: replication_password(node) != loot["password"],
            WAIT,
            what=f"{node.name}'s passfile to get the rotated replication password",
        )
    passwords = {replication_password(n) for n in standbys}
    assert len(passwords) == 1, passwords
    password = passwords.pop()
    failsafe = stored_key(active.data_dir)
    assert failsafe is not None
    for node in rest:
        wait_for(
            lambda node=node: stored_key(node.data_dir) == failsafe,
            WAIT,
            what=f"{node.name} to take the rotated failsafe key",
        )
    fingerprints = {
        n.name: pem.fingerprint(pem.read_certificate(own_material(n)["cert"])) for n in rest
    }
    loot_key = pem.read_key(loot["key"])
    loot_fingerprint = pem.fingerprint(pem.read_certificate(loot["cert"]))
    for key, value in [("secrets/replication", password), ("secrets/failsafe", failsafe.hex())]:
        data = raw_secret(active, trio, key)
        assert value.encode() not in data, key
        assert base64.b64encode(value.encode()) not in data, key
        record = json.loads(data)
        assert record["format"] == "sealed-v1", (key, sorted(record))
        copies = record["copies"]
        assert {c["fingerprint"]: c["member"] for c in copies} == {
            fp: name for name, fp in fingerprints.items()
        }, key
        assert victim.name not in {c["member"] for c in copies}
        assert loot_fingerprint not in {c["fingerprint"] for c in copies}
        for copy in copies:
            for member in (copy["member"], victim.name):
                with pytest.raises(SealError):
                    unseal(
                        copy,
                        loot_key,
                        store_key=key,
                        generation=record["generation"],
                        member=member,
                    )


def test_the_removed_nodes_replication_login_is_refused(removed: dict[str, Any]) -> None:
    active, loot = removed["active"], removed["loot"]
    standby = next(n for n in removed["rest"] if n is not active)
    # the members take the rotated password from the store within a round or two
    new_password = str(
        wait_for(
            lambda: (pw := replication_password(standby)) != loot["password"] and pw,
            WAIT,
            what=f"{standby.name}'s passfile to get the rotated replication password",
        )
    )
    # everything the removed node held: refused
    assert replication_login(active, loot, loot["password"]) is not None
    # its certificate alone, with the current password: refused (revocation)
    refused = wait_for(
        lambda: replication_login(active, loot, new_password),
        WAIT,
        what="the active to refuse the removed node's certificate",
    )
    assert "revoked" in refused, refused
    # a member's certificate with the removed node's password: refused (rotation)
    refused = replication_login(active, own_material(standby), loot["password"])
    assert refused is not None and "password authentication failed" in refused, refused
    # control: a member's certificate and the current password get in
    assert replication_login(active, own_material(standby), new_password) is None


def test_the_removed_nodes_certificate_opens_no_store_server(removed: dict[str, Any]) -> None:
    trio_nodes, loot = removed["rest"], removed["loot"]
    for node in trio_nodes:
        # a member's own certificate writes: the store is up and the request is right
        assert etcd_put(node, own_material(node), "revocation-test/control", b"x") is None
        refused = wait_for(
            lambda node=node: etcd_put(node, loot, "revocation-test/removed", b"x"),
            WAIT,
            what=f"{node.name}'s etcd to refuse the removed node's certificate",
        )
        assert "revocation-test" not in refused, refused


def test_the_removed_node_cannot_publish_a_member_record(
    trio: CliCluster, removed: dict[str, Any]
) -> None:
    victim, loot = removed["victim"], removed["loot"]
    record = json.dumps({"name": victim.name, "host": "127.0.0.1", "role": "standby"}).encode()
    for node in removed["rest"]:
        assert etcd_put(node, loot, member_key(trio, victim.name), record) is not None
    listed = trio.view()
    assert victim.name not in listed, listed


def test_what_the_removed_node_holds_opens_no_agent_api_operation(
    trio: CliCluster, removed: dict[str, Any]
) -> None:
    """The agent API authenticates callers by password, not by certificate: the removed
    node's certificate gives nothing, and what it holds of the admin credential is the
    password's hash, which is no password (the failsafe key, rotated by the removal, signs
    failsafe questions)."""
    active, loot = removed["active"], removed["loot"]
    auth = loot["api_auth"]
    context = ssl.create_default_context(cafile=str(loot["ca"]))
    context.load_cert_chain(str(loot["cert"]), str(loot["key"]))
    with httpx.Client(base_url=active.url, verify=context, trust_env=False, timeout=30) as client:
        body = {"action": "ticket", "name": "comeback", "host": "127.0.0.1"}
        for credential in (None, (auth["username"], auth["password_hash"])):
            answer = client.post("/cluster/join", json=body, auth=credential)
            assert answer.status_code == 401, answer.text
        # control: the admin's password, which the node never held, is accepted
        assert client.get("/cluster", auth=trio.credentials()).status_code == 200


def test_a_record_not_signed_by_its_node_opens_nothing(
    trio: CliCluster, removed: dict[str, Any]
) -> None:
    """Store access alone (here a member's certificate) does not let a host in: a record for
    a node named ``intruder``, and one re-using a member's name with another host, are not
    believed, so no ``pg_hba`` row is made for their hosts."""
    active, loot = removed["active"], removed["loot"]
    writer = next(n for n in removed["rest"] if n is not active)
    material = own_material(writer)
    other = next(n for n in removed["rest"] if n is not writer)
    forged = {
        "intruder": {"name": "intruder", "host": "127.0.0.77", "role": "standby"},
        # a member's name, another host, and the removed node's (revoked) certificate
        other.name + "-twin": {"name": other.name, "host": "127.0.0.78", "role": "standby"},
    }
    try:
        for key, record in forged.items():
            identity = {"certificate": loot["cert"].read_text(), "signature": ""}
            record["extra"] = {"identity": identity}
            data = json.dumps(record).encode()
            assert etcd_put(writer, material, member_key(trio, key), data) is None
        log = active.root / f"{active.name}.log"
        wait_for(
            lambda: all(
                f"leaving a record of {name}" in log.read_text()
                for name in ("intruder", other.name)
            ),
            WAIT,
            what="the active to judge the forged record",
        )
        # what a believed record gets takes one round after this judgement: give it five
        time.sleep(5 * 1.0)
    finally:
        # (the records' unsigned role and health still reach the decisions: docs/security.md)
        for key in forged:
            etcd_delete(writer, material, member_key(trio, key))
    hba = (active.data_dir / "replication" / "node" / "pg_hba.conf").read_text()
    assert "127.0.0.77" not in hba and "127.0.0.78" not in hba, hba


def test_a_forged_record_is_no_member_and_changes_no_decision(
    trio: CliCluster, removed: dict[str, Any]
) -> None:
    """Store access alone (here a member's certificate) does not add a member to the
    agents' view: an unsigned record of a healthy candidate far ahead of everyone
    (``ghost``) is listed by no node, and a switchover asked to it leaves the active in
    place (without the check, the active stepped down for it); a record re-using a
    standby's name, unhealthy and of unknown role, does not replace the standby's own."""
    active = removed["active"]
    writer = next(n for n in removed["rest"] if n is not active)
    material = own_material(writer)
    ghost = {
        "name": "ghost",
        "host": "127.0.0.79",
        "api_url": "https://127.0.0.79:1",
        "role": "standby",
        "healthy": True,
        "candidate": True,
        "position": 2**60,
        "version": __version__,
    }
    twin = {"name": writer.name, "host": "127.0.0.1", "role": "unknown", "healthy": False}
    forged = {"ghost": ghost, writer.name + "-twin": twin}
    auth = trio.credentials()
    roles = {
        node.name: {m["name"]: m["role"] for m in node.cluster(auth)["members"]}
        for node in removed["rest"]
    }
    switchover_key = f"/hacore/{trio.namespace}/switchover"
    log = active.root / f"{active.name}.log"
    try:
        for key, record in forged.items():
            data = json.dumps(record).encode()
            assert etcd_put(writer, material, member_key(trio, key), data) is None
        wait_for(
            lambda: all(
                f"leaving a record of {name}" in (n.root / f"{n.name}.log").read_text()
                for name in ("ghost", writer.name)
                for n in removed["rest"]
            ),
            WAIT,
            what="every member to judge the forged records",
        )
        with httpx.Client(
            base_url=active.url, verify=active.ca_context(), trust_env=False, timeout=30
        ) as client:
            answer = client.post("/switchover", json={"to": "ghost"}, auth=auth)
            assert answer.status_code == 200, answer.text  # the store has a key members/ghost

            def decided() -> str | None:
                if "planned switchover to ghost" in log.read_text():
                    return "planned switchover to ghost (stepped down)"
                explained = client.get(f"/nodes/{active.name}/explain", auth=auth).json()
                reason = str((explained.get("last_decision") or {}).get("reason"))
                return reason if "ghost" in reason else None

            outcome = wait_for(decided, WAIT, what="the active to decide on the switchover")
        assert "switchover to ghost waits: it is not a member" in str(outcome), outcome
        assert is_active(active)
        for node in removed["rest"]:
            members = {m["name"]: m for m in node.cluster(auth)["members"]}
            assert "ghost" not in members, (node.name, members)
            assert members[writer.name]["role"] == roles[node.name][writer.name] != "unknown"
    finally:
        etcd_delete(writer, material, switchover_key)
        for key in forged:
            etcd_delete(writer, material, member_key(trio, key))


_PEM_KEY = re.compile(
    rb"-----BEGIN (?:EC |RSA )?PRIVATE KEY-----[A-Za-z0-9+/=\s\\]+"
    rb"-----END (?:EC |RSA )?PRIVATE KEY-----"
)


def clear_private_keys(root: Path) -> list[tuple[Path, Any]]:
    """Every unencrypted PEM private key in any file under ``root`` (configuration, state,
    logs, the database and store files too), with the file it was found in."""
    found: list[tuple[Path, Any]] = []
    for path in root.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        try:
            data = path.read_bytes()
        except OSError:
            continue
        for block in _PEM_KEY.findall(data):
            # JSON (a state file, the store's files) keeps the line breaks as \n
            pem_block = block.replace(b"\\n", b"\n")
            found.append((path, serialization.load_pem_private_key(pem_block, password=None)))
    return found


def test_no_member_nor_the_removed_disk_holds_the_ca_key(
    trio: CliCluster, removed: dict[str, Any], tmp_path: Path
) -> None:
    """After a start, two joins and a removal, the CA key is on no node's disk in usable
    form (only sealed, in the store); the removed node's disk holds nothing that signs a
    certificate the members accept."""
    active, victim = removed["active"], removed["victim"]
    ca_cert = x509.load_pem_x509_certificate(active.ca_file.read_bytes())
    for node in trio.nodes.values():
        assert not (node.data_dir / "pki" / "ca" / "ca.key").exists(), node.name
        keys = clear_private_keys(node.data_dir)
        assert keys, f"the scan of {node.name} found not even its node key"
        holding = [p for p, k in keys if k.public_key() == ca_cert.public_key()]
        assert holding == [], (node.name, holding)
    # every key the removed disk holds, made into a CA: what it signs opens no store server
    distinct = {
        k.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ): (p, k)
        for p, k in clear_private_keys(victim.data_dir)
    }
    for index, (path, key) in enumerate(distinct.values()):
        forged = mint(ca_cert, key, tmp_path / f"{index}-{path.name}")
        for node in removed["rest"]:
            refused = etcd_put(node, forged, "revocation-test/minted", b"x")
            assert refused is not None and "revocation-test" not in refused, (path, refused)
    # control: the members' own certificates still write
    for node in removed["rest"]:
        assert etcd_put(node, own_material(node), "revocation-test/control", b"x") is None


def streaming(active: Node) -> set[str]:
    with active.connect() as conn:
        rows = conn.execute(
            "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'"
        ).fetchall()
    return {r[0] for r in rows}


def test_the_cluster_left_streams_switches_over_fails_over_and_writes(
    trio: CliCluster, removed: dict[str, Any]
) -> None:
    active = removed["active"]
    standby = next(n for n in removed["rest"] if n is not active)
    wait_for(lambda: standby.name in streaming(active), WAIT, what="the standby streaming")
    # the standby's next login must use the rotated password: cut its stream
    with active.connect() as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_replication WHERE application_name = %s",
            (standby.name,),
        )
    wait_for(lambda: standby.name in streaming(active), WAIT, what="the standby to reconnect")
    trio.cli("cluster", "switchover", "--to", standby.name, "--timeout", str(WAIT))
    wait_for(lambda: is_active(standby), WAIT, what=f"{standby.name} to be active")
    wait_for(lambda: active.name in streaming(standby), WAIT, what="the old active to follow")
    with standby.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS after_removal (id int)")
        conn.execute("INSERT INTO after_removal VALUES (1)")
    wait_for(
        lambda: _count(active) == 1, WAIT, what="the write to reach the old active, now standby"
    )
    # and a failover: the new active's host dies (its store server stays, or two store
    # members would have no quorum); the old active takes over and takes writes
    standby.crash()
    wait_for(lambda: is_active(active), WAIT, what=f"{active.name} to take over")
    with active.connect() as conn:
        conn.execute("INSERT INTO after_removal VALUES (2)")
    assert _count(active) == 2


def test_a_node_joining_after_the_rotation_gets_the_current_secrets_and_can_lead(
    trio: CliCluster, removed: dict[str, Any]
) -> None:
    """A node that joins after the removal: its ticket carries the rotated replication
    password, the active's agent seals the rotated secrets to its new certificate, and once
    switched over to, the old active follows it with the rotated password."""
    active, loot = removed["active"], removed["loot"]
    wait_for(lambda: is_active(active), WAIT, what=f"{active.name} active")
    # the rotated password, as a standby that took it before the crash kept it
    standby = next(n for n in removed["rest"] if n is not active)
    password = replication_password(standby)
    assert password != loot["password"]
    late = trio.add("n4")
    trio.cli(
        *late.join_arguments(active), "--ca-fingerprint", trio.ca_fingerprint,
        "--timeout", str(WAIT),
    )  # fmt: skip
    assert replication_password(late) == password
    mine = pem.fingerprint(pem.read_certificate(own_material(late)["cert"]))
    for key in ("secrets/replication", "secrets/failsafe"):
        wait_for(
            lambda key=key: (
                mine
                in {c["fingerprint"] for c in json.loads(raw_secret(active, trio, key))["copies"]}
            ),
            WAIT,
            what=f"{key} sealed to {late.name}",
        )
    wait_for(
        lambda: stored_key(late.data_dir) == stored_key(active.data_dir),
        WAIT,
        what=f"{late.name} to take the rotated failsafe key from its copy",
    )
    wait_for(lambda: late.name in streaming(active), WAIT, what=f"{late.name} streaming")
    wait_for(
        lambda: (late.probe() or {}).get("state") == "standby",
        WAIT,
        what=f"{late.name}'s agent to answer as a standby",
    )
    # the exit status is not asserted: on a loaded machine the CLI, following the handover,
    # can give up on the new active's API (2 s) after the switchover is done; whether it
    # happened is what the probe says
    trio.cli("cluster", "switchover", "--to", late.name, "--timeout", str(WAIT), code=None)
    wait_for(lambda: is_active(late), WAIT, what=f"{late.name} to be active")
    wait_for(lambda: active.name in streaming(late), WAIT, what="the old active to follow")
    refused = replication_login(late, own_material(active), loot["password"])
    assert refused is not None and "password authentication failed" in refused, refused
    assert replication_login(late, own_material(active), password) is None
    mark = secrets.token_hex(4)
    with late.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS after_late_join (mark text)")
        conn.execute("INSERT INTO after_late_join VALUES (%s)", (mark,))
    wait_for(lambda: _has(active, mark), WAIT, what="the write to reach the old active")


def is_active(node: Node) -> bool:
    """The node's own probe says it is the active (``cluster status`` fails while none is)."""
    body = node.probe()
    return body is not None and body.get("state") == "active"


def _count(node: Node) -> int:
    try:
        with node.connect() as conn:
            row = conn.execute("SELECT count(*) FROM after_removal").fetchone()
    except psycopg.Error:
        return -1
    return int(row[0]) if row else 0


def _has(node: Node, mark: str) -> bool:
    try:
        with node.connect() as conn:
            row = conn.execute("SELECT 1 FROM after_late_join WHERE mark = %s", (mark,)).fetchone()
    except psycopg.Error:
        return False
    return row is not None


def mint(ca_cert: x509.Certificate, signer: Any, into: Path) -> dict[str, Any]:
    """A node certificate for ``intruder`` under the CA's name, signed by ``signer``, with a
    fresh key: what a removed disk's keys could make of themselves."""
    into.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "intruder")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(signer, hashes.SHA256())
    )
    (into / "node.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (into / "node.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (into / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return {"ca": into / "ca.crt", "cert": into / "node.crt", "key": into / "node.key"}
