"""``hacore cluster history`` and ``hacore cluster explain``: what happened to the active role,
and why each node does what it does now."""

from __future__ import annotations

import datetime
from typing import Any

import click
from rich.table import Table

from hacore.api.errors import ApiError, ApiUnreachableError
from hacore.cli.common import console, emit, json_option, reach
from hacore.client.profile import Profile, active_client, members_of


def _when(at: Any) -> str:
    if not isinstance(at, int | float) or at <= 0:
        return "-"
    moment = datetime.datetime.fromtimestamp(at, tz=datetime.UTC)
    return moment.strftime("%m-%d %H:%M:%S")


#: short words for the table; ``--json`` has the full sentence (``reason_text``)
_SHORT = {
    "first_start": "first start",
    "switchover": "switchover",
    "manual_failover": "manual failover",
    "stepped_down": "stepped down",
    "lease_expired": "lease expired",
    "restarted": "restarted",
    "lease_lost": "lease lost, won again",
}


def _reason_text(entry: dict[str, Any]) -> str:
    reason = entry.get("reason")
    return _SHORT.get(str(reason), "unknown") if reason else "unknown"


def _position(timeline: Any, position: Any) -> str:
    """``timeline:position`` (position in bytes of WAL), as PostgreSQL users read it."""
    if timeline is None and position is None:
        return "-"
    return f"{timeline if timeline is not None else '?'}:{position}"


@click.command("history")
@json_option
@click.pass_context
def cluster_history(ctx: click.Context, as_json: bool) -> None:
    """List every change of the active node, oldest first.

    \b
    Each promotion is recorded in the store by the new active: when, why (first start,
    planned switchover, the old active stepped down, or its lease expired after a crash or a
    loss of contact with the store), the old and the new node, the fencing token of the new
    leadership, where the new active's timeline started, and the last position of the old
    active as the new one knew it (the status key the old active wrote). Changes nothing.

    \b
    Exit status: 0; 3 when no node answers ("error:" line).

    \b
    Example:
      hacore cluster history
    """
    profile, _, _ = reach(ctx, need_active=False)
    data = _ask_history(profile)
    entries = data.get("history", [])

    def text() -> None:
        table = Table(title="changes of the active node")
        for column in ("time (UTC)", "token", "old", "new", "reason", "old active at"):
            # numbers fold rather than lose digits on a narrow terminal
            table.add_column(column, overflow="fold")
        for entry in entries:
            table.add_row(
                _when(entry.get("promoted_at")),
                str(entry.get("token")),
                str(entry.get("previous") or "-"),
                str(entry.get("node")),
                _reason_text(entry),
                _position(entry.get("previous_timeline"), entry.get("previous_position")),
            )
        console.print(table)
        click.echo(
            "old active at: its last known timeline:position (--json also has where the new "
            "active's timeline starts, and each reason in words)"
        )

    emit(as_json, data, text, records="history")


def _ask_history(profile: Profile) -> dict[str, Any]:
    """From the active when there is one, else from any node (the history is in the store)."""
    try:
        with active_client(profile) as client:
            return client.history()
    except (ApiError, ApiUnreachableError):
        pass
    last: Exception | None = None
    for url in profile.urls():
        try:
            with profile.client(url, timeout=5.0) as client:
                return client.history()
        except (ApiError, ApiUnreachableError) as err:
            last = err
    raise ApiUnreachableError(f"no node of the profile answers ({last})")


@click.command("explain")
@click.argument("node", required=False)
@json_option
@click.pass_context
def cluster_explain(ctx: click.Context, node: str | None, as_json: bool) -> None:
    """Explain each node's last decision, and whether each standby would take over now.

    \b
    Every node answers for itself from its agent's last loop: its state, the last decision
    and the reason for it, and for a standby whether it would campaign if the active died
    now, and if not every reason (each with a code in --json: lag_too_high,
    not_synchronous_standby, failing_checks, database_not_running, database_unknown,
    store_unreachable, failsafe_promise, member_ahead, ...). The answer comes from the same
    decision function the agent runs. NODE limits it to one node. Changes nothing.

    \b
    Exit status: 0; 2 when NODE is unknown; 3 when no node answers ("error:" line).

    \b
    Example:
      hacore cluster explain
      hacore cluster explain db2 --json
    """
    profile, data, _ = reach(ctx, need_active=False)
    targets = members_of(data) or list(profile.nodes)
    if node is not None:
        targets = [(name, url) for name, url in targets if name == node]
        if not targets:
            raise click.UsageError(f'no node named "{node}" in this cluster')
    answers = [_explain_one(profile, name, url) for name, url in targets]

    def text() -> None:
        for answer in answers:
            _print_explanation(answer)

    emit(as_json, {"nodes": answers}, text, records="nodes")


def _explain_one(profile: Profile, name: str, url: str) -> dict[str, Any]:
    try:
        with profile.client(url, timeout=5.0) as client:
            return client.explain(name)
    except (ApiError, ApiUnreachableError) as err:
        return {
            "node": name,
            "state": None,
            "would_take_over": False,
            "reasons": [{"code": "unreachable", "text": f"its agent does not answer: {err}"}],
        }


def _print_explanation(answer: dict[str, Any]) -> None:
    name, state = answer.get("node"), answer.get("state") or "unknown"
    click.echo(f"{name}: {state}")
    decision = answer.get("last_decision")
    if decision:
        click.echo(f"  last decision: {decision.get('action')} -> {decision.get('next_state')}")
        click.echo(f"  because: {decision.get('reason')}")
    if answer.get("active"):
        click.echo("  this node is the active")
    elif answer.get("would_take_over"):
        click.echo("  would take over if the active died now: yes")
    else:
        click.echo("  would take over if the active died now: no, because")
        for reason in answer.get("reasons", []):
            click.echo(f"    - {reason.get('text')} [{reason.get('code')}]")
    for check, detail in (answer.get("failing_checks") or {}).items():
        click.echo(f"  failing check {check}: {detail}")
