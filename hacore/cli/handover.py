"""``hacore cluster switchover`` and ``hacore cluster failover``: handing the active role to
another node, with the lease (switchover) or without one (a manual failover, which may lose
acknowledged writes and says how many)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from hacore.api.client import ApiClient
from hacore.api.errors import ApiUnreachableError, UnavailableError
from hacore.cli.common import confirm, emit, json_option, profile_file, yes_option
from hacore.client.profile import Profile, active_client, members_of, require_profile, save_profile
from hacore.client.units import human_bytes
from hacore.errors import HacoreError

T = TypeVar("T")


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
    old, new, took = switch_over(path, require_profile(path), to, timeout)
    result = {"from": old, "to": new, "seconds": round(took, 3)}
    emit(
        as_json,
        result,
        lambda: click.echo(
            f"switchover done: {new} is the active node (was {old}); took {took:.1f} s"
        ),
    )


def switch_over(
    path: Any, profile: Profile, to: str | None, timeout: float
) -> tuple[str, str, float]:
    """Request a switchover and wait for the new active: (old, new, seconds)."""
    with active_client(profile) as client:
        old = str(client.status().get("node"))
        began = time.monotonic()
        client.switchover(to)
    deadline = began + timeout
    new: str | None = None
    data: dict[str, Any] = {}
    while new is None:
        try:
            # a node busy with the handover may miss one short read: ask again, to the deadline
            with active_client(profile, timeout=2.0) as client:
                name = str(client.status().get("node"))
                if name != old and (to is None or name == to):
                    data = client.cluster()
                    new = name
        except (ApiUnreachableError, UnavailableError):
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
