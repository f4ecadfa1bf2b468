"""``hacore cluster pause`` and ``resume``: maintenance mode (hacore/cluster/pause.py).

While the cluster is paused no agent promotes, demotes, campaigns, fences or restarts
anything, so the active can be restarted, upgraded or reconfigured without a failover.
"""

from __future__ import annotations

import time
from typing import Any

import click

from hacore.api.client import ApiClient
from hacore.api.errors import ApiUnreachableError, UnavailableError
from hacore.cli.common import emit, json_option, reach
from hacore.client.profile import Profile
from hacore.errors import HacoreError

#: seconds between two looks while ``--wait`` waits for every member to report the pause
POLL = 0.5


def _send(profile: Profile, urls: list[str], call: str, **kwargs: Any) -> dict[str, Any]:
    """``call`` on the first of ``urls`` that answers; a refusal is the answer."""
    errors = []
    for url in urls:
        try:
            with profile.client(url, timeout=30.0) as client:
                answer: dict[str, Any] = getattr(ApiClient, call)(client, **kwargs)
                return answer
        except (ApiUnreachableError, UnavailableError) as err:
            errors.append(f"{url}: {err}")
    raise UnavailableError(f"no node of the profile answers ({'; '.join(errors) or 'none'})")


def _leader_first(profile: Profile, data: dict[str, Any]) -> list[str]:
    leader = data.get("leader")
    urls = [
        str(m["api_url"])
        for m in data.get("members", [])
        if m.get("name") == leader and m.get("api_url")
    ]
    return urls + [u for u in profile.urls() if u not in urls]


def _unpaused_members(data: dict[str, Any]) -> list[str]:
    return sorted(
        str(m.get("name"))
        for m in data.get("members", [])
        if m.get("role") != "unknown" and (m.get("extra") or {}).get("paused") is not True
    )


@click.command("pause")
@click.option("--reason", default="", help="Why, shown in every node's status.")
@click.option("--wait", is_flag=True, help="Wait until every running agent reports the pause.")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait.")
@json_option
@click.pass_context
def cluster_pause(
    ctx: click.Context, reason: str, wait: bool, timeout: float, as_json: bool
) -> None:
    """Enter maintenance mode: no agent promotes, demotes, fences or restarts anything.

    \b
    PostgreSQL, the file sync and the services keep running as they are; the active keeps
    its lease while the store answers and does not fence itself when it does not; stopping
    an agent hands nothing over. So the active can be restarted, upgraded or reconfigured
    without a failover (hacore cluster nodes restart --in-place). Nobody takes over from a
    failed active either, until hacore cluster resume. --wait waits until every running
    agent has seen it (each does within one loop_wait).

    \b
    Exit status: 0 paused (or already paused); 1 failed; 3 the cluster cannot be reached;
    4 refused.

    \b
    Example:
      hacore cluster pause --reason "PostgreSQL upgrade" --wait
    """
    profile, data, _ = reach(ctx, need_active=False)
    answer = _send(profile, _leader_first(profile, data), "pause", reason=reason)
    pause = answer.get("pause") or {}
    waiting: list[str] = []
    if wait:
        deadline = time.monotonic() + timeout
        while True:
            _, data, _ = reach(ctx, need_active=False)
            waiting = _unpaused_members(data)
            if not waiting or time.monotonic() > deadline:
                break
            time.sleep(POLL)
        if waiting:
            raise HacoreError(
                f"paused, but {', '.join(waiting)} did not report it within {timeout:g}s"
            )

    def text() -> None:
        said = f"by {pause.get('by')}" + (f" ({pause['reason']})" if pause.get("reason") else "")
        if answer.get("already"):
            click.echo(f"the cluster was already paused {said}; nothing changed")
        else:
            click.echo(f"cluster paused {said}; hacore cluster resume ends it")
        if wait:
            click.echo("every running agent reports the pause")

    emit(as_json, answer, text)


@click.command("resume")
@click.option(
    "--force",
    is_flag=True,
    help="Resume although no node holds the lease (make sure no database writes first).",
)
@json_option
@click.pass_context
def cluster_resume(ctx: click.Context, force: bool, as_json: bool) -> None:
    """Leave maintenance mode: the agents decide again, within one loop.

    \b
    Sent to the node holding the lease: it puts its database back under its self-fencing
    deadline before the pause ends. Refused while no node holds the lease (the active's
    agent is stopped or cut off from the store): start that agent first, it takes the lease
    back while paused. --force resumes anyway; then any database that is writable without
    the lease is fenced by its agent, and the standbys elect a new active.

    \b
    Exit status: 0 resumed (or not paused); 1 failed; 3 the cluster cannot be reached; 4
    refused.

    \b
    Example:
      hacore cluster resume
    """
    profile, data, _ = reach(ctx, need_active=False)
    answer = _send(profile, _leader_first(profile, data), "resume", force=force)

    def text() -> None:
        if answer.get("already"):
            click.echo("the cluster is not paused; nothing changed")
        else:
            click.echo(f"cluster resumed{' (forced)' if force else ''}")

    emit(as_json, answer, text)
