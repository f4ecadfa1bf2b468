"""``hacore cluster nodes list|get|remove|add``: reading the cluster's nodes, and changing
who belongs to it, through the CLI profile from any machine. ``restart`` and ``reinit`` of the
same group are in :mod:`hacore.cli.node_repair`; ``cluster status`` in :mod:`hacore.cli.status`,
``switchover`` and ``failover`` in :mod:`hacore.cli.handover`."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from hacore.api.errors import NotFoundError
from hacore.cli.common import (
    REMOVE_TIMEOUT,
    confirm,
    console,
    emit,
    json_option,
    profile_file,
    reach,
    yes_option,
)
from hacore.client.profile import active_client, require_profile, save_profile
from hacore.client.units import human_bytes

# -------------------------------------------------------------------------------------------
# Reading the cluster
# -------------------------------------------------------------------------------------------


def _state_of(member: dict[str, Any]) -> str:
    if member.get("active"):
        return "active"
    role = str(member.get("role") or "unknown")
    if role == "unknown":
        return "offline"
    return role


def _checks_text(member: dict[str, Any]) -> str:
    checks = member.get("checks") or {}
    parts = []
    for name in sorted(checks):
        ok = checks[name].get("ok") if isinstance(checks[name], dict) else checks[name]
        parts.append(f"{name} {'OK' if ok else 'FAIL'}")
    return ", ".join(parts) or "-"


def _lag_text(member: dict[str, Any]) -> str:
    if member.get("active"):
        return "-"
    lag = member.get("lag_bytes")
    return human_bytes(lag) if isinstance(lag, int) else "?"


def _files_of(member: dict[str, Any]) -> dict[str, Any] | None:
    files = (member.get("extra") or {}).get("files")
    return files if isinstance(files, dict) else None


def _files_text(member: dict[str, Any]) -> str:
    """The file sync column: the active is the source; a standby in sync, or how far along."""
    files = _files_of(member)
    if files is None:
        return "-"
    if member.get("active"):
        return "source"
    if files.get("in_sync"):
        return "in sync"
    need = files.get("need_bytes")
    completion = files.get("completion")
    done = f"{completion:.0f}%" if isinstance(completion, (int, float)) else "?"
    return f"{done}, {human_bytes(need)} to fetch" if isinstance(need, int) else done


def _servers_of(member: dict[str, Any]) -> list[dict[str, Any]]:
    servers = (member.get("extra") or {}).get("servers")
    return [s for s in servers if isinstance(s, dict)] if isinstance(servers, list) else []


def _servers_text(member: dict[str, Any]) -> str:
    """The servers column: "etcd up", or what is wrong ("etcd server down, restarting (3rd
    try)"); "-" when the node runs none (an external store, no file sync engine)."""
    parts = []
    for server in _servers_of(member):
        if server.get("up"):
            parts.append(f"{server.get('name')} up")
        else:
            parts.append(str(server.get("detail") or f"{server.get('name')} DOWN"))
    return "; ".join(parts) or "-"


def _replication_text(member: dict[str, Any]) -> str:
    if member.get("active"):
        return "primary"
    streaming = member.get("streaming")
    if streaming is None:
        return "?"
    return "streaming" if streaming else "not streaming"


def minority_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """A loud line per node that stays active cut off from the store's majority
    (``failover.minority_mode: on``): the cluster may have two histories right now."""
    found = []
    for row in rows:
        minority = row.get("minority") or {}
        if minority.get("salvage_error"):
            found.append(
                f"WARNING: {row['name']} is not rewound because exporting its writes failed: "
                f"{minority['salvage_error']}"
            )
        if minority.get("holding"):
            found.append(
                f"WARNING: {row['name']} cannot reach a majority of the store (for "
                f"{minority.get('cut_off_for')}s) and keeps running as ACTIVE in minority mode: "
                "another node may be active on the other side; when the network heals the "
                "loser's writes since the cut go to a salvage archive (hacore cluster salvage "
                "list), not to the database"
            )
    return found


def pause_banner(pause: dict[str, Any]) -> str:
    why = f" ({pause['reason']})" if pause.get("reason") else ""
    return (
        f"MAINTENANCE MODE: paused by {pause.get('by')}{why}: no failover, no fencing, no "
        "restart until hacore cluster resume"
    )


def _node_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for member in data.get("members", []):
        rows.append(
            {
                "name": member.get("name"),
                "address": member.get("host"),
                "api_url": member.get("api_url"),
                "state": _state_of(member),
                "healthy": member.get("healthy"),
                "replication": _replication_text(member),
                "lag_bytes": None if member.get("active") else member.get("lag_bytes"),
                "files": _files_of(member),
                "servers": _servers_of(member),
                "checks": {
                    n: bool(c.get("ok")) if isinstance(c, dict) else bool(c)
                    for n, c in (member.get("checks") or {}).items()
                },
                "version": member.get("version"),
                # failsafe mode, as the answering node sees itself (None elsewhere, or off)
                "failsafe": member.get("failsafe"),
                # minority mode, as the answering node sees itself (None elsewhere, or off)
                "minority": member.get("minority") or (member.get("extra") or {}).get("minority"),
                # a changed PostgreSQL parameter waits for a server restart
                "pending_restart": bool(
                    member.get("pending_restart")
                    or (member.get("extra") or {}).get("pending_restart")
                ),
            }
        )
    return rows


@click.group("nodes")
def nodes() -> None:
    """List, inspect, add, remove, restart and re-clone the cluster's nodes."""


@nodes.command("list")
@json_option
@click.pass_context
def nodes_list(ctx: click.Context, as_json: bool) -> None:
    """List every node: address, state, replication, lag, and each health check.

    \b
    Asks the active node (found through the CLI profile); when no node is active (during a
    failover) it shows the view of any node that answers and says so. STATE is active,
    standby, offline (its agent stopped publishing), or a transitional state (starting,
    cloning, fenced); REPLICATION is "streaming" when the standby streams from the active
    right now; LAG is how far behind the active it is; FILES is "source" on the active, "in
    sync" on a standby holding the active's files, else how much it has and still fetches
    ("-" without file sync); SERVERS is each server the node's agent runs and supervises
    ("etcd up", or "etcd server down, restarting (2nd try)"; "-" with an external store).
    Changes nothing.

    \b
    Exit status: 0; 3 when no node answers ("error:" line).

    \b
    Example:
      hacore cluster nodes list
    """
    _, data, from_active = reach(ctx, need_active=False)
    rows = _node_rows(data)
    note = None if from_active else f"no active node right now; view of {data.get('node')}"

    def text() -> None:
        table = Table(title=f"cluster {data.get('cluster')}")
        columns = ("name", "address", "state", "replication", "lag", "files", "servers", "checks")
        for column in columns:
            table.add_column(column)
        for row, member in zip(rows, data.get("members", []), strict=True):
            table.add_row(
                str(row["name"]),
                str(row["address"]),
                row["state"],
                row["replication"],
                _lag_text(member),
                _files_text(member),
                _servers_text(member),
                _checks_text(member),
            )
        console.print(table)
        for row in rows:
            failsafe = row.get("failsafe") or {}
            if failsafe.get("holding"):
                click.echo(
                    f"failsafe: the store does not answer; {row['name']} stays active on every "
                    f"member's confirmation for {failsafe.get('deadline_in')}s more"
                )
        for warning in minority_warnings(rows):
            click.echo(warning, err=True)
        waiting = [str(row["name"]) for row in rows if row.get("pending_restart")]
        if waiting:
            click.echo(
                f"pending restart: {', '.join(waiting)} (a PostgreSQL parameter waits for a "
                "server restart: hacore cluster nodes restart NAME)"
            )
        if note:
            click.echo(note)
        if pause:
            click.echo(pause_banner(pause))

    pause = data.get("pause")
    emit(
        as_json,
        {
            "cluster": data.get("cluster"),
            "leader": data.get("leader"),
            "nodes": rows,
            "note": note,
            "paused": bool(data.get("paused")),
            "pause": pause,
        },
        text,
        records="nodes",
    )


@nodes.command("get")
@click.argument("name")
@json_option
@click.pass_context
def nodes_get(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show one node in detail: addresses, state, position, lag and every check's detail.

    \b
    Asks the active node (or any node, during a failover). Changes nothing.

    \b
    Exit status: 0; 3 when no node answers; 4 when the cluster has no node NAME.

    \b
    Example:
      hacore cluster nodes get manager-2
    """
    _, data, _ = reach(ctx, need_active=False)
    member = next((m for m in data.get("members", []) if m.get("name") == name), None)
    if member is None:
        names = ", ".join(str(m.get("name")) for m in data.get("members", [])) or "none"
        raise NotFoundError(f'no node named "{name}" in cluster {data.get("cluster")} ({names})')

    def text() -> None:
        click.echo(f"node:        {member['name']}")
        click.echo(f"state:       {_state_of(member)}")
        click.echo(f"address:     {member.get('host')}")
        click.echo(f"api:         {member.get('api_url')}")
        click.echo(f"healthy:     {member.get('healthy')}")
        click.echo(f"replication: {_replication_text(member)}, lag {_lag_text(member)}")
        click.echo(f"position:    {member.get('position')} (timeline {member.get('timeline')})")
        click.echo(f"version:     hacore {member.get('version')}")
        click.echo(f"servers:     {_servers_text(member)}")
        for check, result in sorted((member.get("checks") or {}).items()):
            ok = result.get("ok") if isinstance(result, dict) else result
            detail = result.get("detail") if isinstance(result, dict) else ""
            click.echo(f"check {check}: {'OK' if ok else 'FAIL'}{f' ({detail})' if detail else ''}")

    emit(as_json, member, text)


@nodes.command("remove")
@click.argument("name")
@yes_option
@json_option
@click.pass_context
def nodes_remove(ctx: click.Context, name: str, yes: bool, as_json: bool) -> None:
    """Remove standby NAME from the cluster for good.

    \b
    On the active node: marks NAME removed (its agent, if alive, steps down to "removed",
    never campaigns again, and stops its database and store server), removes its store
    server from the store (managed store), drops its replication slot and database access,
    and cancels a join still pending under that name. A fresh node may later join under
    the same name (the old node's agent must be stopped). The active itself is refused:
    switch over first. Running it again finishes an interrupted removal.

    \b
    Asks for confirmation on a terminal; --yes confirms in scripts (without a terminal and
    without --yes it is refused).

    \b
    Exit status: 0 removed; 1 not confirmed at the terminal, or failed; 2 no --yes without
    a terminal; 3 no active node answers; 4 refused (the active, an unknown name).

    \b
    Example:
      hacore cluster nodes remove manager-3 --yes
    """
    profile = require_profile(profile_file(ctx))
    confirm(yes, f"remove node {name} from cluster {profile.cluster} for good")
    with active_client(profile) as found:
        url = found.base_url
    with profile.client(url, timeout=REMOVE_TIMEOUT) as client:
        answer = client.remove_node(name)
    path = profile_file(ctx)
    save_profile(path, profile.with_nodes([n for n in profile.nodes if n[0] != name]))

    def text() -> None:
        click.echo(f"node {name} removed from cluster {profile.cluster}")
        if not answer.get("acknowledged", True):
            click.echo("  (it did not acknowledge in time: if it comes back it stays removed)")
        for key, what in _TAKEN_AWAY:
            if key in answer:
                click.echo(f"  {what}: {answer[key]}")

    emit(as_json, answer, text)


#: what a removal answers about the secrets the removed node held (docs/security.md)
_TAKEN_AWAY = (
    ("replication_password", "replication password"),
    ("failsafe_key", "failsafe key"),
    ("filesync_secret", "file-sync secret"),
)


@nodes.command("add")
@click.argument("name")
@click.option(
    "--host-ip", required=True, help="The address the new node has (and joins from): IP or DNS."
)
@click.option(
    "--ttl",
    type=float,
    default=900.0,
    show_default=True,
    help="Seconds the token stays valid.",
)
@click.option(
    "--dns-name",
    "dns_names",
    multiple=True,
    help="A DNS name for the new node's certificate, as its node.dns_names (repeat for more).",
)
@json_option
@click.pass_context
def nodes_add(
    ctx: click.Context,
    name: str,
    host_ip: str,
    ttl: float,
    dns_names: tuple[str, ...],
    as_json: bool,
) -> None:
    """Let node NAME at HOST_IP join: print its join command, with a single-use token.

    \b
    The active issues a token valid for this name and address only, for --ttl seconds, and
    for one join ticket: the new node's operator needs neither the API password nor this
    profile. Run the printed command on the new node (its agent running). Needs the admin
    credentials; changes nothing else. With TLS the new node's certificate is issued now,
    for HOST_IP, loopback and each --dns-name (give the names of its node.dns_names).

    \b
    Exit status: 0 a token was issued; 1 failed; 2 a bad name or address; 3 no active
    node answers; 4 refused.

    \b
    Example:
      hacore cluster nodes add manager-2 --host-ip 10.0.0.2
    """
    from hacore import pki
    from hacore.pki.pem import parse_certificate

    profile = require_profile(profile_file(ctx))
    with active_client(profile) as client:
        body: dict[str, Any] = {"action": "token", "name": name, "host": host_ip, "ttl": ttl}
        if dns_names:
            body["dns_names"] = list(dns_names)
        answer = client.join_ticket(body)
        address = client.base_url.split("://", 1)[-1]
    fingerprint = None
    if profile.ca_certificate:
        cert = parse_certificate(profile.ca_certificate.encode("ascii"), "the profile's CA")
        fingerprint = pki.fingerprint(cert)
    command = (
        f"hacore cluster join {address} --node-name {name} --host-ip {host_ip} "
        f"--token {answer['token']}"
    )
    if fingerprint:
        command += f" --ca-fingerprint {fingerprint}"
    answer = {**answer, "command": command, "ca_fingerprint": fingerprint}

    def text() -> None:
        click.echo(
            f"join token for {name} at {host_ip}, valid {answer.get('expires_in')} s, one use. "
            "On that node run:"
        )
        click.echo(f"  {command}")

    emit(as_json, answer, text)
