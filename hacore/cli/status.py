"""``hacore cluster status``: the cluster at a glance, from the active's view and each
node's own probe."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from hacore.api.errors import ApiError, ApiUnreachableError
from hacore.cli.common import console, emit, json_option, reach
from hacore.cli.nodes import minority_warnings
from hacore.client.profile import Profile


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
