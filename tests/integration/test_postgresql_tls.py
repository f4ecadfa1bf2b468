"""The postgresql plugin with TLS: real servers that let members in only with the cluster CA.

A primary on 127.0.0.2 and a standby on 127.0.0.1 get certificates from one CA (``hacore.pki``)
and are given them as ``tls=TlsFiles(...)``, from root's 0700 directories as ``cluster start``
and ``join`` leave them. Clients connect from 127.0.0.1, so the ``hostssl`` rules really
decide. The tests run in file order on the shared pair: streaming, files, refusals, a
certificate renewal, then a failover with the old primary rewound. Every server is stopped by
the pid in its ``postmaster.pid``.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import psycopg
import pytest
from pg_admin import query, stop_by_pid

from hacore.backends.records import TlsFiles
from hacore.backends.replication import ReplicationSource
from hacore.errors import ConfigError, ReplicationError
from hacore.pki import CaMaterial, create_ca, issue_node_certificate
from hacore.testing.procs import free_port, wait_for
from hacore_plugins.postgresql.backend import PostgresReplication
from hacore_plugins.postgresql.settings import default_bin_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(default_bin_dir() is None, reason="no PostgreSQL binaries installed"),
]

PASSWORD = f"repl-{secrets.token_hex(8)}"
PARAMETERS = {"shared_buffers": "16MB", "max_connections": 20, "fsync": "off"}
WAIT = 60.0


# -------------------------------------------------------------------------------------------
# Certificates and servers


@attrs.frozen
class Pki:
    root: Path
    ca: CaMaterial

    def node_files(self, name: str, hosts: list[str], ca: CaMaterial | None = None) -> TlsFiles:
        """Issue (or re-issue) ``name``'s certificate, where ``cluster start``/``join`` put it."""
        issued = issue_node_certificate(ca or self.ca, name, hosts, self.root / f"tls-{name}")
        return TlsFiles(issued.ca_file, issued.cert_file, issued.key_file)


class Nodes:
    """Makes backends under the module's root; stops every server they started."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.made: list[PostgresReplication] = []

    def make(self, name: str, host: str, tls: TlsFiles | None) -> PostgresReplication:
        node = PostgresReplication(
            {"port": free_port(host), "parameters": PARAMETERS},
            node_name=name,
            host=host,
            data_dir=self.root / name,
            tls=tls,
        )
        self.made.append(node)
        return node

    def stop_all(self) -> None:
        for node in self.made:
            stop_by_pid(node)


@attrs.frozen
class Pair:
    pki: Pki
    nodes: Nodes
    primary: PostgresReplication
    standby: PostgresReplication


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    # pytest's temp dirs are 0700 root: the postgres user could not enter them.
    root = Path(tempfile.mkdtemp(prefix="hacore-pgtls-"))
    root.chmod(0o755)
    yield Pki(root, create_ca("pgtls", root / "ca"))
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pair(pki: Pki) -> Iterator[Pair]:
    nodes = Nodes(pki.root)
    try:
        primary = nodes.make("p1", "127.0.0.2", pki.node_files("p1", ["127.0.0.2", "127.0.0.1"]))
        primary.bootstrap(replication_password=PASSWORD, allowed_hosts=[])
        query(primary, "CREATE TABLE items (id serial PRIMARY KEY, note text)")
        standby = nodes.make("s1", "127.0.0.1", pki.node_files("s1", ["127.0.0.1", "localhost"]))
        primary.allow_member("s1", standby.host)
        standby.clone(source_of(primary))
        standby.start()
        wait_following(standby, "p1")
        yield Pair(pki, nodes, primary, standby)
    finally:
        nodes.stop_all()


def source_of(node: PostgresReplication, password: str = PASSWORD) -> ReplicationSource:
    return ReplicationSource(node.node_name, node.host, node.config.port, "replicator", password)


def wait_following(node: PostgresReplication, upstream: str) -> None:
    wait_for(
        lambda: node.status().following == upstream,
        WAIT,
        what=f"{node.node_name} to stream from {upstream}",
    )


def wait_replicated(node: PostgresReplication, note: str) -> None:
    wait_for(
        lambda: bool(query(node, "SELECT 1 FROM items WHERE note = %s", (note,))),
        WAIT,
        what=f"row {note!r} on {node.node_name}",
    )


def walsender_ssl(upstream: PostgresReplication, standby: str) -> tuple[Any, ...]:
    """``(ssl, client_dn, client_serial)`` of the walsender that streams to ``standby``."""

    def only_one() -> list[Any] | None:
        rows = query(
            upstream,
            "SELECT s.ssl, s.client_dn, s.client_serial::text FROM pg_stat_replication r"
            " JOIN pg_stat_ssl s USING (pid)"
            " WHERE r.application_name = %s AND r.state = 'streaming'",
            (standby,),
        )
        return rows if len(rows) == 1 else None

    rows = wait_for(only_one, WAIT, what=f"one walsender for {standby}")
    assert isinstance(rows, list)
    return tuple(rows[0])


def replication_connect(node: PostgresReplication, **options: Any) -> psycopg.Connection[Any]:
    """A physical replication connection, as a WAL receiver or pg_basebackup opens it."""
    settings: dict[str, Any] = {"password": PASSWORD, **options}
    return psycopg.connect(
        host=node.host,
        port=node.config.port,
        user="replicator",
        dbname="postgres",
        replication="true",
        connect_timeout=10,
        **settings,
    )


def client_cert(files: TlsFiles) -> dict[str, str]:
    return {
        "sslmode": "verify-full",
        "sslrootcert": str(files.ca_file),
        "sslcert": str(files.cert_file),
        "sslkey": str(files.key_file),
    }


# -------------------------------------------------------------------------------------------
# Tests


def test_ssl_parameters_belong_to_hacore_when_it_runs_tls(pki: Pki) -> None:
    files = pki.node_files("c1", ["127.0.0.1"])
    settings = {"parameters": {"ssl": "on", "ssl_key_file": "/elsewhere.key"}}
    common: dict[str, Any] = {"node_name": "c1", "host": "127.0.0.1", "data_dir": pki.root / "c1"}
    with pytest.raises(ConfigError, match=r"ssl, ssl_key_file are set by hacore"):
        PostgresReplication(settings, **common, tls=files)
    assert PostgresReplication(settings, **common).tls is None


def test_the_standby_is_cloned_and_streams_over_tls(pair: Pair) -> None:
    primary, standby = pair.primary, pair.standby
    ssl, client_dn, _ = walsender_ssl(primary, "s1")
    assert ssl is True
    assert "CN=s1" in client_dn
    query(primary, "INSERT INTO items (note) VALUES ('over tls')")
    wait_replicated(standby, "over tls")
    assert standby.status().following == "p1"


def test_tls_files_are_the_server_users_and_outside_the_data_directory(pair: Pair) -> None:
    for node in (pair.primary, pair.standby):
        assert node.tls is not None
        layout = node.layout
        tls_dir = layout.tls_dir.stat()
        assert (tls_dir.st_uid, tls_dir.st_mode & 0o777) == (node.user.uid, 0o700)
        key = layout.tls_key.stat()
        assert (key.st_uid, key.st_mode & 0o777) == (node.user.uid, 0o600)
        assert layout.tls_key.read_bytes() == node.tls.key_file.read_bytes()
        assert layout.tls_cert.read_bytes() == node.tls.cert_file.read_bytes()
        assert layout.tls_ca.read_bytes() == node.tls.ca_file.read_bytes()
        settings = dict(
            query(
                node,
                "SELECT name, setting FROM pg_settings WHERE name IN"
                " ('ssl', 'ssl_key_file', 'ssl_cert_file', 'ssl_ca_file')",
            )
        )
        assert settings == {
            "ssl": "on",
            "ssl_key_file": str(layout.tls_key),
            "ssl_cert_file": str(layout.tls_cert),
            "ssl_ca_file": str(layout.tls_ca),
        }
        rules = query(node, "SELECT type, auth_method, options FROM pg_hba_file_rules")
        tcp = [r for r in rules if r[0] != "local"]
        assert tcp and all(r[0] == "hostssl" for r in tcp), rules
        assert all(r[1] == "scram-sha-256" and "clientcert=verify-ca" in r[2] for r in tcp)

        key_pem = node.tls.key_file.read_bytes().strip()
        for path in layout.pgdata.rglob("*"):
            assert path.suffix not in (".key", ".crt"), path
            if path.is_file():
                data = path.read_bytes()
                assert key_pem not in data and b"PRIVATE KEY" not in data, path
    conninfo = query(pair.standby, "SHOW primary_conninfo")[0][0]
    assert "sslmode=verify-full" in conninfo and str(pair.standby.layout.tls_key) in conninfo


def test_members_without_tls_or_a_ca_certificate_are_refused(pair: Pair) -> None:
    primary, files = pair.primary, pair.standby.tls
    assert files is not None
    with replication_connect(primary, **client_cert(files)) as conn:
        # a walsender takes only the simple query protocol
        result = conn.pgconn.exec_(b"IDENTIFY_SYSTEM")
        assert result.status == psycopg.pq.ExecStatus.TUPLES_OK and result.ntuples == 1

    with pytest.raises(psycopg.OperationalError, match=r"no pg_hba\.conf entry.*no encryption"):
        replication_connect(primary, sslmode="disable")
    without_cert = {
        "sslmode": "verify-full",
        "sslrootcert": str(files.ca_file),
        "sslcert": str(pair.pki.root / "absent.crt"),
        "sslkey": str(pair.pki.root / "absent.key"),
    }
    with pytest.raises(psycopg.OperationalError, match="requires a valid client certificate"):
        replication_connect(primary, **without_cert)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        replication_connect(primary, **client_cert(files), password="wrong")

    # Through the plugin: nodes of another CA, with or without the cluster CA, and a plain one.
    stranger_ca = create_ca("stranger", pair.pki.root / "stranger-ca")
    foreign = pair.pki.node_files("x1", ["127.0.0.1"], ca=stranger_ca)
    stranger = pair.nodes.make("x1", "127.0.0.1", foreign)
    primary.allow_member("x1", stranger.host)
    with pytest.raises(ReplicationError, match="is not who it claims"):
        stranger.clone(source_of(primary))
    trusting = pair.nodes.make("x2", "127.0.0.1", attrs.evolve(foreign, ca_file=files.ca_file))
    with pytest.raises(ReplicationError, match="refused this node's certificate"):
        trusting.clone(source_of(primary))
    plain = pair.nodes.make("x3", "127.0.0.1", None)
    with pytest.raises(ReplicationError, match="wants a client certificate from the cluster CA"):
        plain.clone(source_of(primary))
    assert not any(node.is_initialized() for node in (stranger, trusting, plain))


def test_a_renewed_certificate_is_used_after_a_restart(pair: Pair) -> None:
    standby = pair.standby
    _, _, old_serial = walsender_ssl(pair.primary, "s1")
    standby.stop()
    renewed = pair.pki.node_files("s1", ["127.0.0.1", "localhost"])
    assert renewed == standby.tls
    standby.start()
    wait_following(standby, "p1")
    assert standby.layout.tls_cert.read_bytes() == renewed.cert_file.read_bytes()
    assert standby.layout.tls_key.read_bytes() == renewed.key_file.read_bytes()
    wait_for(
        lambda: walsender_ssl(pair.primary, "s1")[2] != old_serial,
        WAIT,
        what="the walsender of s1 to show the renewed certificate",
    )


def test_failover_and_rewind_stay_on_tls(pair: Pair) -> None:
    old, new = pair.primary, pair.standby
    query(old, "INSERT INTO items (note) VALUES ('before failover')")
    wait_replicated(new, "before failover")
    old.fence()
    new.promote(timeout=WAIT)
    query(new, "INSERT INTO items (note) VALUES ('after failover')")
    new.allow_member("p1", old.host)

    old.rewind(source_of(new))
    wait_following(old, "s1")
    wait_replicated(old, "after failover")
    ssl, client_dn, _ = walsender_ssl(new, "p1")
    assert ssl is True and "CN=p1" in client_dn
    assert "sslmode=verify-full" in query(old, "SHOW primary_conninfo")[0][0]
