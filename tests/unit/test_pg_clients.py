"""``replication.clients``: the networks applications may reach the database from, each
checked with a one-line message, and the pg_hba rows they become (TLS required while TLS is
on; before the members' certificate rows, never matching replication)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hacore.errors import ConfigError
from hacore_plugins.postgresql.backend import PostgresReplication
from hacore_plugins.postgresql.config_files import render_hba
from hacore_plugins.postgresql.settings import (
    ClientNetwork,
    PgSettings,
    default_bin_dir,
    parse_clients,
)


def _settings(clients: object) -> PgSettings:
    return PgSettings(
        bin_dir=Path("/usr/bin"), major=16, os_user="postgres", clients=parse_clients(clients)
    )


def _rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line and not line.startswith("#")]


def test_rows_are_read_with_their_defaults() -> None:
    assert parse_clients(None) == ()
    assert parse_clients([]) == ()
    assert parse_clients(
        [
            {"network": "10.0.0.0/24"},
            "192.168.1.0/24",
            {"network": "fd00::/8", "method": "cert", "user": "app", "database": "appdb"},
            {"network": "10.1.2.3/32", "client_cert": True},
        ]
    ) == (
        ClientNetwork("10.0.0.0/24"),
        ClientNetwork("192.168.1.0/24"),
        ClientNetwork("fd00::/8", method="cert", database="appdb", user="app"),
        ClientNetwork("10.1.2.3/32", client_cert=True),
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            "10.0.0.0/24",
            "postgresql setting 'clients' must be a list of {network: CIDR, method: ...} rows",
        ),
        ([42], "postgresql setting 'clients' row 1 must be a mapping with a 'network' (got 42)"),
        (
            [{"network": "10.0.0.0/24"}, {"method": "scram-sha-256"}],
            "postgresql setting 'clients' row 2 needs 'network', a CIDR such as 10.0.0.0/24",
        ),
        (
            [{"network": "10.0.0.7/24"}],
            "postgresql setting 'clients' row 1: 'network' '10.0.0.7/24' is not a CIDR network: "
            "10.0.0.7/24 has host bits set",
        ),
        (
            [{"network": "db.example.com"}],
            "postgresql setting 'clients' row 1: 'network' 'db.example.com' is not a CIDR "
            "network: 'db.example.com' does not appear to be an IPv4 or IPv6 network",
        ),
        (
            [{"network": "10.0.0.0/24", "method": "md5"}],
            "postgresql setting 'clients' row 1: 'method' must be one of scram-sha-256, cert "
            "(got 'md5')",
        ),
        (
            [{"network": "10.0.0.0/24", "method": "trust"}],
            "postgresql setting 'clients' row 1: 'method' must be one of scram-sha-256, cert "
            "(got 'trust')",
        ),
        (
            [{"network": "10.0.0.0/24", "client_cert": "yes"}],
            "postgresql setting 'clients' row 1: 'client_cert' must be true or false (got 'yes')",
        ),
        (
            [{"network": "10.0.0.0/24", "cidr": "x"}],
            "postgresql setting 'clients' row 1: unknown key(s) cidr; known: client_cert, "
            "database, method, network, user",
        ),
        (
            [{"network": "10.0.0.0/24", "user": "App User"}],
            "postgresql setting 'clients' row 1: 'user' must be 'all' or a lower-case SQL name "
            "(got 'App User')",
        ),
        (
            [{"network": "10.0.0.0/24", "database": "replication"}],
            "postgresql setting 'clients' row 1: 'database' cannot be 'replication': only "
            "members replicate",
        ),
    ],
)
def test_a_bad_row_is_one_clear_line(raw: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_clients(raw)
    assert str(info.value) == message


def test_with_tls_clients_get_hostssl_rows_before_the_member_certificate_rows() -> None:
    settings = _settings(
        [
            {"network": "10.0.0.0/24"},
            {"network": "10.9.0.0/16", "client_cert": True, "user": "app"},
            {"network": "10.8.0.0/16", "method": "cert"},
        ]
    )
    rows = _rows(render_hba(settings, ["10.0.0.5"], tls=True))
    assert rows == [
        ["local", "all", "postgres", "peer", "map=hacore"],
        ["local", "replication", "postgres", "peer", "map=hacore"],
        ["local", "all", "all", "scram-sha-256"],
        ["hostssl", "replication", "replicator", "10.0.0.5/32", "scram-sha-256",
         "clientcert=verify-ca"],
        ["hostssl", "all", "all", "10.0.0.0/24", "scram-sha-256"],
        ["hostssl", "all", "app", "10.9.0.0/16", "scram-sha-256", "clientcert=verify-ca"],
        ["hostssl", "all", "all", "10.8.0.0/16", "cert"],
        ["hostssl", "all", "all", "10.0.0.5/32", "scram-sha-256", "clientcert=verify-ca"],
    ]  # fmt: skip


def test_without_tls_clients_get_plain_host_rows() -> None:
    rows = _rows(render_hba(_settings([{"network": "10.0.0.0/24"}]), ["10.0.0.5"], tls=False))
    assert ["host", "all", "all", "10.0.0.0/24", "scram-sha-256"] in rows
    assert not any(row[0] == "hostssl" for row in rows)


def test_no_clients_leaves_the_member_rows_alone() -> None:
    rows = _rows(render_hba(_settings(None), ["10.0.0.5", "10.0.0.6"], tls=True))
    assert [row[3] for row in rows if row[0] == "hostssl"] == [
        "10.0.0.5/32",
        "10.0.0.6/32",
        "10.0.0.5/32",
        "10.0.0.6/32",
    ]


@pytest.mark.skipif(default_bin_dir() is None, reason="no PostgreSQL binaries installed")
@pytest.mark.parametrize("row", [{"client_cert": True}, {"method": "cert"}])
def test_client_certificates_need_tls(row: dict[str, object], tmp_path: Path) -> None:
    settings = {"clients": [{"network": "10.0.0.0/24", **row}]}
    with pytest.raises(ConfigError) as info:
        PostgresReplication(settings, node_name="n1", host="127.0.0.1", data_dir=tmp_path)
    assert str(info.value) == (
        "postgresql setting 'clients' asks for client certificates (method cert or "
        "client_cert: true), which need tls.enabled: true"
    )
    PostgresReplication(
        {"clients": [{"network": "10.0.0.0/24"}]},
        node_name="n1",
        host="127.0.0.1",
        data_dir=tmp_path,
    )
