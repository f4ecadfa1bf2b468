"""``hacore cluster config show | set | edit``: the cluster-wide settings in the store.

Timing, the failover policy, the check settings and the PostgreSQL parameters must agree on
every node, so they live in the store (hacore/config/cluster_settings.py); every agent
applies a change within one loop (hacore/agent/settings_sync.py). A change is checked here
first (the same one-line messages as ``hacore config check``), then by the active against
its backends, and written with a compare-and-set on the version read: of two concurrent
edits, the second is refused (exit status 4) and changes nothing.
"""

from __future__ import annotations

import difflib
from typing import Any

import click
import yaml

from hacore.cli.common import confirm, emit, json_option, profile_file, yes_option
from hacore.client.profile import active_client, require_profile
from hacore.config.cluster_settings import ClusterWide, from_mapping, with_assignments
from hacore.errors import ConfigError


@click.group("config")
def cluster_config() -> None:
    """The cluster-wide settings (timing, failover, checks, PostgreSQL parameters).

    \b
    They are kept in the store and are the same on every node; node.yaml's values for them
    only seed the cluster (hacore cluster start). Every other setting is node-local and
    stays in node.yaml (docs/configuration.md, "Cluster-wide settings").
    """


def _current(ctx: click.Context) -> tuple[Any, dict[str, Any]]:
    path = profile_file(ctx)
    profile = require_profile(path)
    with active_client(profile) as client:
        return profile, client.cluster_config()


def _yaml(settings: dict[str, Any]) -> str:
    return yaml.safe_dump(settings, sort_keys=False, default_flow_style=False)


def _send(profile: Any, settings: ClusterWide, version: int) -> dict[str, Any]:
    with active_client(profile) as client:
        answer: dict[str, Any] = client.change_cluster_config(settings.to_mapping(), version)
        return answer


def _report(as_json: Any, answer: dict[str, Any]) -> None:
    def text() -> None:
        changed = answer.get("changed") or []
        if not changed:
            click.echo("nothing changed")
            return
        click.echo(f"revision {answer.get('revision')} written: {', '.join(changed)}")
        pending = answer.get("restart_pending") or []
        if pending:
            click.echo(
                f"applied by each agent at its next restart: {', '.join(pending)} "
                "(the rest within one loop)"
            )
        else:
            click.echo("every agent applies it within one loop")

    emit(as_json, answer, text)


@cluster_config.command("show")
@json_option
@click.pass_context
def config_show(ctx: click.Context, as_json: Any) -> None:
    """Print the cluster-wide settings and their revision.

    \b
    Exit status: 0 shown; 3 the cluster cannot be reached.

    \b
    Example:
      hacore cluster config show -o yaml
    """
    _, data = _current(ctx)

    def text() -> None:
        click.echo(f"# revision {data.get('revision')}, changed by {data.get('by') or '?'}")
        click.echo(_yaml(data.get("settings") or {}), nl=False)

    emit(as_json, data, text)


@cluster_config.command("set")
@click.argument("assignments", nargs=-1, required=True, metavar="KEY=VALUE...")
@json_option
@click.pass_context
def config_set(ctx: click.Context, assignments: tuple[str, ...], as_json: Any) -> None:
    """Change cluster-wide settings, each KEY=VALUE (the value read as YAML).

    \b
    KEY is SECTION.NAME with SECTION one of timing, failover, checks, parameters (the
    PostgreSQL parameters; parameters.NAME=null removes one). Every agent applies the
    failover, check and PostgreSQL settings within one loop (PostgreSQL reloads; a
    parameter that needs a restart shows as pending_restart); timing, failsafe_mode and
    minority_mode at each agent's next restart.

    \b
    Exit status: 0 written; 2 an invalid value (nothing changed); 3 the cluster cannot be
    reached; 4 refused (changed meanwhile by someone else: nothing changed).

    \b
    Examples:
      hacore cluster config set failover.maximum_lag_on_failover=16777216
      hacore cluster config set parameters.work_mem=16MB parameters.max_connections=200
    """
    pairs: dict[str, str] = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{item}: expected KEY=VALUE (for example timing.loop_wait=2)")
        pairs[key.strip()] = value
    profile, data = _current(ctx)
    current = from_mapping(data.get("settings"), context="the settings key")
    wanted = with_assignments(current, pairs)
    _report(as_json, _send(profile, wanted, int(data["version"])))


@cluster_config.command("edit")
@yes_option
@json_option
@click.pass_context
def config_edit(ctx: click.Context, yes: bool, as_json: Any) -> None:
    """Edit the cluster-wide settings as YAML in $EDITOR, then write them.

    \b
    The edited text is checked first (an invalid one changes nothing, its problems are
    printed one per line); the changes are shown as a diff and written after you confirm
    (--yes: without asking).

    \b
    Exit status: 0 written (or nothing changed); 2 invalid (nothing changed); 3 the cluster
    cannot be reached; 4 refused (changed meanwhile by someone else: nothing changed).
    """
    profile, data = _current(ctx)
    before = _yaml(data.get("settings") or {})
    header = (
        f"# hacore cluster-wide settings, revision {data.get('revision')}; "
        "save and quit to apply, empty the file to cancel\n"
    )
    edited = click.edit(header + before, extension=".yaml", require_save=False)
    if edited is None or not edited.strip():
        click.echo("nothing changed", err=True)
        return
    try:
        raw = yaml.safe_load(edited)
    except yaml.YAMLError as err:
        raise ConfigError(f"the edited settings are not YAML: {err}") from None
    wanted = from_mapping(raw, context="the edited settings")
    after = _yaml(wanted.to_mapping())
    current = from_mapping(data.get("settings"), context="the settings key")
    if wanted == current:
        click.echo("nothing changed", err=True)
        return
    diff = difflib.unified_diff(
        _yaml(current.to_mapping()).splitlines(keepends=True),
        after.splitlines(keepends=True),
        "stored",
        "edited",
    )
    click.echo("".join(diff), err=bool(as_json), nl=False)
    confirm(yes, "write these cluster-wide settings")
    _report(as_json, _send(profile, wanted, int(data["version"])))
