"""``hacore cluster nodes restart`` and ``hacore cluster nodes reinit``: repairing one node
through its own agent, which runs the job and shows its steps as the node's ``operation``."""

from __future__ import annotations

import time
from typing import Any

import click

from hacore.api.client import ApiClient
from hacore.api.errors import ApiUnreachableError, ConflictError, NotFoundError, UnavailableError
from hacore.cli.common import confirm, emit, json_option, profile_file, reach, yes_option
from hacore.cli.handover import switch_over
from hacore.client.follow import clone_line
from hacore.client.profile import Profile
from hacore.errors import HacoreError

#: seconds between two looks at a running restart or reinit
POLL = 0.5
#: print a reinit's copy progress (bytes, rate, time left) this often (seconds)
CLONE_EVERY = 1.0
#: seconds a node under repair may not answer before the command calls it interrupted
SILENT_LIMIT = 30.0


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
        if (
            clone
            and clone.get("total")
            and not as_json
            and time.monotonic() - last_clone >= CLONE_EVERY
        ):
            last_clone = time.monotonic()
            click.echo(f"  {clone_line(clone)}")
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


@click.command("restart")
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
        old, new, took = switch_over(path, profile, None, timeout)
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


@click.command("reinit")
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
