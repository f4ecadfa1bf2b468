"""``hacore cluster nodes …``, ``cluster status`` and ``cluster switchover``: reading and
steering a formed cluster through the CLI profile, from any machine."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.table import Table

from hacore.api.client import ApiClient
from hacore.api.errors import (
    ApiError,
    ApiUnreachableError,
    ConflictError,
    NotFoundError,
    UnavailableError,
)
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
from hacore.cluster.follow import human_bytes
from hacore.cluster.profile import (
    Profile,
    active_client,
    members_of,
    require_profile,
    save_profile,
)
from hacore.errors import HacoreError

T = TypeVar("T")
#: seconds between two looks at a running restart or reinit
POLL = 0.5
#: print a reinit's copy progress at most this often (seconds)
CLONE_EVERY = 2.0
#: seconds a node under repair may not answer before the command calls it interrupted
SILENT_LIMIT = 30.0


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

    emit(as_json, answer, text)


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
@json_option
@click.pass_context
def nodes_add(ctx: click.Context, name: str, host_ip: str, ttl: float, as_json: bool) -> None:
    """Let node NAME at HOST_IP join: print its join command, with a single-use token.

    \b
    The active issues a token valid for this name and address only, for --ttl seconds, and
    for one join ticket: the new node's operator needs neither the API password nor this
    profile. Run the printed command on the new node (its agent running). Needs the admin
    credentials; changes nothing else.

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
        answer = client.join_ticket({"action": "token", "name": name, "host": host_ip, "ttl": ttl})
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


@click.command("status")
@json_option
@click.pass_context
def cluster_status(ctx: click.Context, as_json: bool) -> None:
    """Show the cluster at a glance: which node is active, and how each node answers.

    \b
    Finds the active node through the CLI profile (skipping standbys and unreachable nodes,
    so it works after a failover), and probes each known node's /status. Changes nothing.

    \b
    Exit status: 0 a node is active; 1 no node is active right now (the table still shows
    what each node says); 3 no node answers at all.

    \b
    Example:
      hacore cluster status
    """
    profile, data, from_active = reach(ctx, need_active=False)
    probes = [_probe(name, url, profile) for name, url in profile.nodes]
    active = data.get("node") if from_active else None
    record = data.get("record") or {}
    warnings = minority_warnings(probes)
    result = {
        "cluster": data.get("cluster"),
        "namespace": data.get("namespace"),
        "hacore_version": record.get("hacore_version"),
        "active": active,
        "store_ok": data.get("store_ok"),
        "store_members": data.get("store_members"),
        "nodes": probes,
        "warnings": warnings,
    }

    def text() -> None:
        click.echo(
            f"cluster:  {result['cluster']} (namespace {result['namespace']}, "
            f"hacore {result['hacore_version']})"
        )
        click.echo(f"active:   {active or 'NONE'}")
        stores = data.get("store_members")
        if stores:
            voting = sum(1 for s in stores if s.get("voting"))
            click.echo(f"store:    {len(stores)} servers ({voting} voting)")
        table = Table()
        for column in ("node", "api", "status", "state", "detail"):
            table.add_column(column)
        for probe in probes:
            table.add_row(
                probe["name"],
                probe["api_url"],
                str(probe["http_status"] or "no answer"),
                str(probe["state"] or "-"),
                str(probe["detail"] or ""),
            )
        console.print(table)
        for warning in warnings:
            click.echo(warning, err=True)

    emit(as_json, result, text)
    if active is None:
        ctx.exit(1)


def _probe(name: str, url: str, profile: Profile) -> dict[str, Any]:
    found: dict[str, Any] = {
        "name": name,
        "api_url": url,
        "http_status": None,
        "state": None,
        "active": False,
        "detail": "",
    }
    try:
        with profile.client(url, timeout=3.0) as client:
            status = client.status()
    except (ApiError, ApiUnreachableError) as err:
        found["detail"] = str(err)
        return found
    found["http_status"] = 200 if status.get("active") else 503
    found["state"] = status.get("state")
    found["active"] = bool(status.get("active"))
    found["minority"] = status.get("minority")
    if status.get("standby_streaming"):
        found["detail"] = f"streaming from {status.get('leader')}"
    return found


@click.command("switchover")
@click.option("--to", "to", default=None, help="The node to make active (default: the best one).")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds to wait.")
@json_option
@click.pass_context
def cluster_switchover(ctx: click.Context, to: str | None, timeout: float, as_json: bool) -> None:
    """Hand the active role to another node (--to NAME, or the most up-to-date standby).

    \b
    Writes a switchover request; the active stops its active-only services, waits (briefly)
    for the target to have every write, fences its database and releases the lease; the
    target promotes. The command waits until the new active's /status answers 200 and
    prints how long it took. Refused when NAME is unknown or already active, or another
    switchover is pending.

    \b
    Exit status: 0 a new node is active; 1 no new active within --timeout; 3 no active
    node answers; 4 refused.

    \b
    Example:
      hacore cluster switchover --to manager-2
    """
    path = profile_file(ctx)
    old, new, took = _switch_over(path, require_profile(path), to, timeout)
    result = {"from": old, "to": new, "seconds": round(took, 3)}
    emit(
        as_json,
        result,
        lambda: click.echo(
            f"switchover done: {new} is the active node (was {old}); took {took:.1f} s"
        ),
    )


def _switch_over(
    path: Any, profile: Profile, to: str | None, timeout: float
) -> tuple[str, str, float]:
    """Request a switchover and wait for the new active: (old, new, seconds)."""
    with active_client(profile) as client:
        old = str(client.status().get("node"))
        began = time.monotonic()
        client.switchover(to)
    deadline = began + timeout
    new: str | None = None
    while new is None:
        try:
            with active_client(profile, timeout=2.0) as client:
                name = str(client.status().get("node"))
                if name != old and (to is None or name == to):
                    new = name
                    data = client.cluster()
        except UnavailableError:
            pass
        if new is None:
            if time.monotonic() > deadline:
                raise HacoreError(
                    f"no new active node within {timeout:g}s (the request may have been "
                    "refused by the active: see its log, and hacore cluster status)"
                )
            time.sleep(0.1)
    took = time.monotonic() - began
    save_profile(path, profile.with_nodes(members_of(data) or profile.nodes, active=new))
    return old, new, took


# -------------------------------------------------------------------------------------------
# Repair: restart, reinit, manual failover
# -------------------------------------------------------------------------------------------


def _member_of(data: dict[str, Any], name: str) -> dict[str, Any]:
    member = next((m for m in data.get("members", []) if m.get("name") == name), None)
    if member is None:
        names = ", ".join(str(m.get("name")) for m in data.get("members", [])) or "none"
        raise NotFoundError(f'no node named "{name}" in cluster {data.get("cluster")} ({names})')
    return dict(member)


def _node_url(profile: Profile, member: dict[str, Any]) -> str:
    url = member.get("api_url") or dict(profile.nodes).get(str(member.get("name")))
    if not url:
        raise HacoreError(f"the API address of {member.get('name')} is unknown")
    return str(url)


def _wait_standby(ctx: click.Context, name: str, timeout: float) -> dict[str, Any]:
    """Until the former active ``name`` streams as a standby (rewound by its agent)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, data, from_active = reach(ctx, need_active=True)
            member = _member_of(data, name)
            if from_active and member.get("role") == "standby" and member.get("streaming"):
                return member
        except (ApiUnreachableError, UnavailableError):
            pass
        if time.monotonic() > deadline:
            raise HacoreError(f"{name} does not stream as a standby within {timeout:g}s")
        time.sleep(POLL)


def _follow_repair(client: ApiClient, name: str, timeout: float, as_json: bool) -> dict[str, Any]:
    """Poll the node's ``operation`` (its restart or reinit) until it ends; print each step
    and a reinit's copy progress."""
    deadline = time.monotonic() + timeout
    said: set[tuple[str, str]] = set()
    last_clone = 0.0
    answered = time.monotonic()
    while True:
        try:
            op = dict(client.cluster().get("operation") or {})
            answered = time.monotonic()
        except (ApiUnreachableError, UnavailableError) as err:
            if time.monotonic() - answered > SILENT_LIMIT:
                raise HacoreError(
                    f"{name}'s agent does not answer any more ({err}): the operation was "
                    f"interrupted; see hacore cluster nodes get {name} once it is back"
                ) from None
            time.sleep(POLL)
            continue
        if op.get("operation") not in ("restart", "reinit"):
            raise HacoreError(
                f"{name}'s agent no longer shows the operation (its service restarted?): it "
                f"was interrupted; see hacore cluster nodes get {name}"
            )
        for step in op.get("steps", []):
            key = (step["name"], step["state"])
            if step["state"] in ("running", "done") and key not in said and not as_json:
                said.add(key)
                detail = f": {step['detail']}" if step.get("detail") else ""
                click.echo(f"  {step['title']} ... {step['state']}{detail}")
        clone = op.get("clone")
        if clone and not as_json and time.monotonic() - last_clone >= CLONE_EVERY:
            last_clone = time.monotonic()
            total = clone["total"] or 1
            click.echo(
                f"  copied {human_bytes(clone['done'])} of {human_bytes(clone['total'])} "
                f"({100 * clone['done'] / total:.0f}%)"
            )
        if op.get("state") == "done":
            return dict(op)
        if op.get("state") == "failed":
            raise HacoreError(f"{name}: {op.get('error')}")
        if time.monotonic() > deadline:
            raise HacoreError(
                f"{name} did not finish within {timeout:g}s (it goes on: see hacore cluster "
                f"nodes get {name})"
            )
        time.sleep(POLL)


@nodes.command("restart")
@click.argument("name")
@click.option(
    "--services",
    is_flag=True,
    help="Restart the managed services too (stopped first, started last).",
)
@click.option(
    "--database/--no-database",
    default=True,
    show_default=True,
    help="Restart the database (--no-database with --services: the services only).",
)
@click.option(
    "--in-place",
    is_flag=True,
    help="On the active: restart without a switchover (only while paused; see below).",
)
@click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds to wait.")
@json_option
@click.pass_context
def nodes_restart(
    ctx: click.Context,
    name: str,
    services: bool,
    database: bool,
    in_place: bool,
    timeout: float,
    as_json: bool,
) -> None:
    """Restart node NAME's database (and with --services its managed services).

    \b
    On a standby: its agent stops the services that run everywhere (last started, first
    stopped), stops the database, starts it again following the active, then starts the
    services in their order, as a job (the agent decides nothing else meanwhile). The command
    waits until the node streams again. On the active: it first switches over to the best
    standby (as hacore cluster switchover), then restarts NAME as a standby. With --in-place,
    while the cluster is paused (hacore cluster pause), the active restarts as the active:
    no switchover, no failover, writes fail only while its database is down; refused when
    the cluster is not paused.

    \b
    Exit status: 0 restarted (streaming again); 1 failed; 3 the node cannot be reached; 4
    refused.

    \b
    Example:
      hacore cluster nodes restart manager-2
    """
    path = profile_file(ctx)
    profile, data, from_active = reach(ctx, need_active=False)
    member = _member_of(data, name)
    switched = None
    if member.get("active") and in_place and not data.get("paused"):
        raise ConflictError(
            f"{name} is the active node: an in-place restart needs maintenance mode; run "
            "hacore cluster pause first (without --in-place the restart switches over first)"
        )
    if member.get("active") and from_active and not in_place:
        if not as_json:
            click.echo(f"{name} is the active node: switching over first")
        old, new, took = _switch_over(path, profile, None, timeout)
        switched = {"from": old, "to": new, "seconds": round(took, 3)}
        if not as_json:
            click.echo(f"  switchover done: {new} is the active node; took {took:.1f} s")
        member = _wait_standby(ctx, name, timeout)
        if not as_json:
            click.echo(f"  {name} streams from {new}")
    with profile.client(_node_url(profile, member), timeout=30.0) as client:
        answer = client.restart_node(
            name,
            database=database,
            services=services,
            in_place=bool(in_place and member.get("active")),
        )
        if not as_json:
            click.echo(f"{name}: {answer.get('started')}")
        began = time.monotonic()
        op = _follow_repair(client, name, timeout, as_json)
    took = time.monotonic() - began
    result = {"node": name, "switchover": switched, "result": op.get("result"), "seconds": took}
    emit(as_json, result, lambda: click.echo(f"{op.get('result')} (took {took:.1f} s)"))


@nodes.command("reinit")
@click.argument("name")
@click.option("--timeout", type=float, default=3600.0, show_default=True, help="Seconds to wait.")
@yes_option
@json_option
@click.pass_context
def nodes_reinit(ctx: click.Context, name: str, timeout: float, yes: bool, as_json: bool) -> None:
    """Re-clone standby NAME from the active, keeping its name.

    \b
    NAME's agent copies the active's database into a temporary directory while the old copy
    keeps running; only a complete copy replaces it (the old one is then deleted), and the
    node streams from the active again. A copy that fails or is interrupted (even by a
    crash) leaves the old data as it was. Prints the copy's progress. Refused on the active
    (switch over first).

    \b
    Asks for confirmation on a terminal; --yes confirms in scripts.

    \b
    Exit status: 0 re-cloned and streaming; 1 not confirmed at the terminal, or failed; 2
    no --yes without a terminal; 3 the node cannot be reached; 4 refused.

    \b
    Example:
      hacore cluster nodes reinit manager-3 --yes
    """
    profile, data, _ = reach(ctx, need_active=False)
    member = _member_of(data, name)
    if member.get("active"):
        raise ConflictError(
            f"{name} is the active node: it is never re-cloned; switch over first "
            "(hacore cluster switchover), then reinit it as a standby"
        )
    confirm(yes, f"replace the database of {name} with a new copy from the active")
    with profile.client(_node_url(profile, member), timeout=30.0) as client:
        answer = client.reinit_node(name)
        if not as_json:
            click.echo(f"{name}: {answer.get('started')}")
        began = time.monotonic()
        op = _follow_repair(client, name, timeout, as_json)
    took = time.monotonic() - began
    result = {"node": name, "result": op.get("result"), "seconds": took, "clone": op.get("clone")}
    emit(as_json, result, lambda: click.echo(f"{op.get('result')} (took {took:.1f} s)"))


def pause_banner(pause: dict[str, Any]) -> str:
    why = f" ({pause['reason']})" if pause.get("reason") else ""
    return (
        f"MAINTENANCE MODE: paused by {pause.get('by')}{why}: no failover, no fencing, no "
        "restart until hacore cluster resume"
    )


def _ask_any(profile: Profile, call: Callable[[ApiClient], T]) -> T:
    """``call`` on the first node of the profile that answers (there may be no active)."""
    errors = []
    for url in profile.urls():
        try:
            with profile.client(url, timeout=10.0) as client:
                return call(client)
        except (ApiUnreachableError, UnavailableError) as err:
            errors.append(str(err))
    raise UnavailableError(f"no node of the profile answers ({'; '.join(errors) or 'none'})")


@click.command("failover")
@click.option("--to", "to", required=True, help="The node to promote.")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait.")
@yes_option
@json_option
@click.pass_context
def cluster_failover(ctx: click.Context, to: str, timeout: float, yes: bool, as_json: bool) -> None:
    """Promote node NAME when no node is active and none qualifies by itself.

    \b
    For a cluster whose active is dead and whose standbys all hold back: every one is past
    maximum_lag_on_failover, or (synchronous mode) the synchronous standby died too. Shows
    what may be lost (how far NAME is behind the last position the old active recorded:
    writes it acknowledged that NAME never received), asks, then lets NAME campaign even so.
    Refused while a node holds the lease: then hacore cluster switchover loses nothing.
    Waits until NAME is the active node.

    \b
    Asks for confirmation on a terminal; --yes confirms in scripts.

    \b
    Exit status: 0 NAME is active; 1 not confirmed at the terminal, or NAME not active
    within --timeout; 2 no --yes without a terminal; 3 no node answers; 4 refused.

    \b
    Example:
      hacore cluster failover --to manager-2
    """
    path = profile_file(ctx)
    profile = require_profile(path)
    preview = _ask_any(profile, lambda c: c.failover(to, dry_run=True))
    lost = preview.get("may_lose_bytes")
    loss = (
        "an unknown amount of acknowledged writes"
        if lost is None
        else f"{human_bytes(lost)} ({lost} bytes) of acknowledged writes"
    )
    summary = (
        f"{to} is at position {preview.get('position')} (timeline {preview.get('timeline')}); "
        f"the last active, {preview.get('last_active')}, recorded position "
        f"{preview.get('last_position')} (timeline {preview.get('last_timeline')}): promoting "
        f"{to} may lose {loss}"
    )
    if not as_json:
        click.echo(summary)
    confirm(yes, f"promote {to} and lose what it does not have")
    began = time.monotonic()
    _ask_any(profile, lambda c: c.failover(to))
    url = dict(profile.nodes).get(to)
    deadline = began + timeout
    while True:
        try:
            if url is not None:
                with profile.client(url, timeout=2.0) as client:
                    if client.status().get("active"):
                        break
            else:
                with active_client(profile, timeout=2.0) as client:
                    if client.status().get("node") == to:
                        break
        except (ApiUnreachableError, UnavailableError):
            pass
        if time.monotonic() > deadline:
            raise HacoreError(
                f"{to} is not active within {timeout:g}s (see hacore cluster explain {to})"
            )
        time.sleep(0.2)
    took = time.monotonic() - began
    save_profile(path, profile.with_nodes(profile.nodes, active=to))
    result = {**preview, "requested": True, "seconds": round(took, 3)}
    emit(
        as_json,
        result,
        lambda: click.echo(f"failover done: {to} is the active node; took {took:.1f} s"),
    )
