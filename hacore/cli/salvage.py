"""``hacore cluster salvage list|show``: the writes minority mode saved from a losing node.

Each archive lives on the node whose database was rewound (hacore/backends/salvage.py); the
commands ask every member's API (``GET /salvage``), so a node that does not answer is named
rather than silently left out.
"""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from hacore.api.errors import ApiError, ApiUnreachableError, NotFoundError
from hacore.cli.common import console, emit, json_option, reach
from hacore.client.profile import Profile, members_of


@click.group("salvage")
def salvage() -> None:
    """Writes of a losing node that minority mode exported before rewinding it."""


def _targets(profile: Profile, data: dict[str, Any]) -> list[tuple[str, str]]:
    return members_of(data) or [(url, url) for url in profile.urls()]


@salvage.command("list")
@json_option
@click.pass_context
def salvage_list(ctx: click.Context, as_json: bool) -> None:
    """List every salvage archive in the cluster, oldest first.

    \b
    With failover.minority_mode on, a node that kept writing while cut off from the store's
    majority loses on reconnection; before its database is rewound, the transactions it
    committed past the fork from the winner's history are exported to an archive on that
    node. Each row: the archive's ID, the node it is on, the winner, when, the fork point and
    how many transactions and row changes it holds. Changes nothing.

    \b
    Exit status: 0; 3 when no node answers ("error:" line).

    \b
    Example:
      hacore cluster salvage list
    """
    profile, data, _ = reach(ctx, need_active=False)
    archives: list[dict[str, Any]] = []
    unreachable: dict[str, str] = {}
    for name, url in _targets(profile, data):
        try:
            with profile.client(url, timeout=5.0) as client:
                answer = client.salvage_list()
        except (ApiError, ApiUnreachableError) as err:
            unreachable[name] = str(err)
            continue
        archives.extend(a for a in answer.get("archives", []) if isinstance(a, dict))
    archives.sort(key=lambda a: str(a.get("created_at") or a.get("id")))

    def text() -> None:
        table = Table(title="salvage archives")
        for column in ("id", "node", "winner", "created (UTC)", "fork at", "txns", "changes"):
            table.add_column(column, overflow="fold")
        for a in archives:
            table.add_row(
                str(a.get("id")),
                str(a.get("node") or "-"),
                str(a.get("winner") or "-"),
                str(a.get("created_at") or "-"),
                str(a.get("fork_point") or "unknown"),
                str(a.get("transactions", "-")),
                str(a.get("changes", "-")),
            )
        console.print(table)
        for name, why in unreachable.items():
            click.echo(f"{name} did not answer ({why}): its archives are not listed")

    emit(as_json, {"archives": archives, "unreachable": unreachable}, text, records="archives")


@salvage.command("show")
@click.argument("ident", metavar="ID")
@json_option
@click.pass_context
def salvage_show(ctx: click.Context, ident: str, as_json: bool) -> None:
    """Show one salvage archive: every transaction with its row changes.

    \b
    The changes are PostgreSQL's logical decoding (test_decoding) text, one line per row:
    "table public.orders: INSERT: id[integer]:17 ...". Re-apply what matters by hand.
    Changes nothing.

    \b
    Exit status: 0; 3 when no node answers; 4 when no node has the archive ("error:" line).

    \b
    Example:
      hacore cluster salvage show 20261206T231500.000000Z-db1 --json
    """
    profile, data, _ = reach(ctx, need_active=False)
    node = ident.rpartition("Z-")[2]
    targets = sorted(_targets(profile, data), key=lambda t: t[0] != node)
    found: dict[str, Any] | None = None
    last: Exception | None = None
    for _, url in targets:
        try:
            with profile.client(url, timeout=5.0) as client:
                found = client.salvage_show(ident)
            break
        except NotFoundError as err:
            last = err
        except (ApiError, ApiUnreachableError) as err:
            last = err
    if found is None:
        raise NotFoundError(f"no node has salvage archive {ident} ({last})")
    archive = found

    def text() -> None:
        click.echo(
            f"archive {archive.get('id')} on {archive.get('node')}: winner "
            f"{archive.get('winner')}, fork at {archive.get('fork_point') or 'unknown'}, "
            f"created {archive.get('created_at')}"
        )
        click.echo(str(archive.get("note") or ""))
        for tx in archive.get("transactions", []):
            click.echo(
                f"-- transaction {tx.get('xid')} committed {tx.get('committed_at')} "
                f"(WAL {tx.get('commit_lsn')})"
            )
            for change in tx.get("changes", []):
                click.echo(f"   {change}")

    emit(as_json, archive, text)
