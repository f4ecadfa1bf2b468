"""The text of the configuration files the plugin writes.

The data directory's ``postgresql.conf`` only gains one relative ``include`` line, identical on
every node, so it may travel with clones and rewinds. Everything node-local is rendered into
``node/postgresql.conf`` from the settings and the node state, and any copy of a managed
parameter that reached ``postgresql.auto.conf`` (``ALTER SYSTEM`` on some node, then a clone)
is stripped before each start, because that file is read last and would win.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from psycopg.conninfo import make_conninfo

from hacore_plugins.postgresql.layout import INCLUDE_LINE, Layout
from hacore_plugins.postgresql.settings import (
    MANAGED_PARAMETERS,
    SUPERUSER,
    ClientNetwork,
    PgSettings,
)
from hacore_plugins.postgresql.state import NodeState, Upstream
from hacore_plugins.postgresql.tls_files import HBA_CLIENT_CERT, server_parameters, tool_options

HEADER = "# Managed by hacore: regenerated from its settings; edits here are overwritten.\n"
UNUSED_HBA = (
    "# Not used: hacore keeps this node's access rules in ../node/pg_hba.conf (hba_file).\n"
)
_MARK = "# hacore:"
#: Strict mode with no standby to name: a name no walsender has (node names have no spaces).
#: Not '*', which any replication client, even a pg_basebackup in progress, would satisfy.
NO_STANDBY = 'ANY 1 ("hacore: no standby")'


def quote(value: str) -> str:
    """A postgresql.conf string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def slot_name(node_name: str) -> str:
    """A replication slot name (a-z, 0-9, _) that tells which node it serves."""
    clean = "".join(c if c.isalnum() and c.isascii() else "_" for c in node_name.lower())
    if clean != node_name:
        # Two names that differ only in case or punctuation must not share a slot.
        clean = f"{clean[:48]}_{hashlib.sha1(node_name.encode()).hexdigest()[:6]}"
    return f"hacore_{clean}"[:63]


def primary_conninfo(
    layout: Layout, upstream: Upstream, application_name: str, *, tls: bool = False
) -> str:
    secure: dict[str, Any] = tool_options(layout) if tls else {}
    return make_conninfo(
        host=upstream.host,
        port=upstream.port,
        user=upstream.user,
        passfile=str(layout.pgpass),
        application_name=application_name,
        connect_timeout=5,
        keepalives_idle=10,
        keepalives_interval=5,
        keepalives_count=3,
        **secure,
    )


def render_node_conf(
    settings: PgSettings,
    layout: Layout,
    *,
    node_name: str,
    host: str,
    state: NodeState,
    tls: bool = False,
) -> str:
    lines = [HEADER, "# Cluster-wide parameters (the same on every node).\n"]
    lines += [f"{key} = {quote(value)}\n" for key, value in settings.server_parameters().items()]
    lines.append("\n# This node's identity: never copied from another node.\n")
    identity = {
        "port": str(settings.port),
        "listen_addresses": settings.listen_addresses or host,
        "unix_socket_directories": str(layout.run_dir),
        "hba_file": str(layout.hba),
        "ident_file": str(layout.ident),
        "cluster_name": node_name,
    }
    lines += [f"{key} = {quote(value)}\n" for key, value in identity.items()]
    if tls:
        lines.append("\n# This node's TLS material (the server user's copies).\n")
        lines += [f"{k} = {quote(v)}\n" for k, v in server_parameters(layout).items()]
    lines.append("\n# This node's role.\n")
    conninfo = ""
    slot = ""
    if state.upstream is not None:
        conninfo = primary_conninfo(layout, state.upstream, node_name, tls=tls)
        slot = slot_name(node_name)
    role = {
        "primary_conninfo": conninfo,
        "primary_slot_name": slot,
        "synchronous_standby_names": sync_names(settings, state),
    }
    lines += [f"{key} = {quote(value)}\n" for key, value in role.items()]
    return "".join(lines)


def sync_names(settings: PgSettings, state: NodeState) -> str:
    if state.sync_names is not None:
        return state.sync_names
    # Strict: no commit is acknowledged until a named standby confirms it, from the first one.
    return NO_STANDBY if settings.strict else ""


def copy_application_name(node_name: str) -> str:
    """What a clone's connections call themselves: never a node name (those have no spaces),
    so a copy in progress can never count as a synchronous standby."""
    return f"hacore clone of {node_name}"[:63]


def quorum(names: Iterable[str]) -> str:
    return "ANY 1 (" + ", ".join(f'"{name}"' for name in names) + ")"


def _cidr(host: str) -> str:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    return f"{address}/{address.max_prefixlen}"


def render_hba(settings: PgSettings, hosts: Iterable[str], *, tls: bool = False) -> str:
    """Local rows, each member host's replication row, the application networks' rows
    (``clients``), then each member host's other rows: plain ``host`` rows without TLS,
    ``hostssl`` rows that also want a client certificate from the cluster CA with it.

    The local ``replication`` row lets an operator take a ``pg_basebackup`` on the node over
    the Unix socket ("all" does not match replication connections). It is ``peer`` like the
    superuser's own row: only the OS users of the ident map get in, and no password exists
    that could leak.

    PostgreSQL uses the first row that matches, so the client rows come before the members'
    certificate rows: an application on a member host (or a load balancer there) that is in
    a listed network authenticates as that row says, without a node certificate. They never
    match a replication connection ("all" does not), which stays for members alone."""
    rows = [
        ("local", "all", SUPERUSER, "", "peer map=hacore"),
        ("local", "replication", SUPERUSER, "", "peer map=hacore"),
        ("local", "all", "all", "", "scram-sha-256"),
    ]
    kind, method = (
        ("hostssl", f"scram-sha-256 {HBA_CLIENT_CERT}") if tls else ("host", "scram-sha-256")
    )
    members = [_cidr(host) for host in hosts]
    rows += [(kind, "replication", settings.replication_user, m, method) for m in members]
    rows += [_client_row(client, kind, tls=tls) for client in settings.clients]
    rows += [(kind, "all", "all", m, method) for m in members]
    body = "".join(f"{a:<6} {b:<12} {c:<16} {d:<40} {e}\n" for a, b, c, d, e in rows)
    return HEADER + body


def _client_row(client: ClientNetwork, kind: str, *, tls: bool) -> tuple[str, str, str, str, str]:
    method = client.method
    if tls and client.client_cert and method != "cert":
        method += f" {HBA_CLIENT_CERT}"
    return (kind, client.database, client.user, client.network, method)


def render_ident(os_users: Iterable[str]) -> str:
    users = dict.fromkeys(os_users)
    return HEADER + "".join(f"hacore {user} {SUPERUSER}\n" for user in users)


def _pgpass_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def render_pgpass(entries: Mapping[tuple[str, int, str], str]) -> str:
    return "".join(
        f"{_pgpass_field(host)}:{port}:*:{_pgpass_field(user)}:{_pgpass_field(password)}\n"
        for (host, port, user), password in sorted(entries.items())
    )


def parse_pgpass(text: str) -> dict[tuple[str, int, str], str]:
    entries: dict[tuple[str, int, str], str] = {}
    for line in text.splitlines():
        fields = _split_pgpass(line)
        if len(fields) == 5 and fields[1].isdigit():
            entries[(fields[0], int(fields[1]), fields[3])] = fields[4]
    return entries


def _split_pgpass(line: str) -> list[str]:
    fields, current, escaped = [], [], False
    for char in line:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    return fields


def with_include(main_conf: str) -> str:
    """The data directory's postgresql.conf, ending with our include line (exactly once)."""
    kept = [line for line in main_conf.splitlines() if _MARK not in line]
    while kept and not kept[-1].strip():
        kept.pop()
    return "\n".join([*kept, "", INCLUDE_LINE]) + "\n"


def without_managed(auto_conf: str, also: Iterable[str] = ()) -> str:
    """``postgresql.auto.conf`` minus the parameters hacore owns (and those in ``also``)."""
    owned = MANAGED_PARAMETERS | frozenset(also)
    kept = []
    for line in auto_conf.splitlines():
        key = line.split("=", 1)[0].strip().lower()
        if "=" in line and not line.lstrip().startswith("#") and key in owned:
            continue
        kept.append(line)
    return "\n".join(kept) + "\n"
