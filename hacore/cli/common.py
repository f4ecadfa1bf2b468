"""What the command groups share: the console, the common options, output, and reaching the
cluster through the CLI profile.

Every name here is public on purpose: the command modules import it, and nothing in them
imports another command module.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from hacore.api.errors import ApiError, ApiUnreachableError, AuthenticationError, UnavailableError
from hacore.cluster.profile import (
    Profile,
    active_client,
    members_of,
    profile_path,
    require_profile,
    save_profile,
)
from hacore.config.node import NodeConfig, load_config
from hacore.errors import HacoreError

console = Console()
F = TypeVar("F", bound=Callable[..., Any])

CONFIG_ENV = "HACORE_CONFIG"
DEFAULT_CONFIG = "/etc/hacore/node.yaml"
#: seconds for the local agent to accept a start or join (a join waits for the active)
ACCEPT_TIMEOUT = 180.0
#: seconds for the active to carry out a removal (it waits for the node to acknowledge)
REMOVE_TIMEOUT = 120.0


def config_option(func: F) -> F:
    return click.option(
        "-c",
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        envvar=CONFIG_ENV,
        default=DEFAULT_CONFIG,
        show_default=True,
        help=f"This node's configuration (also ${CONFIG_ENV}).",
    )(func)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(func)


def profile_file(ctx: click.Context) -> Path:
    path = ctx.find_object(Path)
    return path if path is not None else profile_path()


def local_config(config_path: str) -> NodeConfig:
    return load_config(config_path)


PASSWORD_ENV = "HACORE_PASSWORD"


def warn_password_argument(ctx: click.Context) -> None:
    """``--password`` on the command line is visible to every local user (``ps``)."""
    source = ctx.get_parameter_source("password")
    if source is click.core.ParameterSource.COMMANDLINE:
        click.echo(
            "warning: --password on the command line is visible to other local users (ps, "
            f"/proc); set ${PASSWORD_ENV} instead, or leave it out to be prompted",
            err=True,
        )


def prompt_password(what: str) -> str | None:
    """The password typed at a terminal, None when there is none to ask."""
    if not sys.stdin.isatty():
        return None
    return str(click.prompt(what, hide_input=True))


def emit(as_json: bool, data: Any, text: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
    else:
        text()


def echo_progress(as_json: bool) -> Callable[[str], None] | None:
    return None if as_json else click.echo


def yes_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--yes", "-y", "yes", is_flag=True, help="Do not ask for confirmation (for scripts)."
    )(func)


def confirm(yes: bool, what: str) -> None:
    """Ask on a terminal before a destructive command; ``--yes`` answers for scripts.

    Without a terminal to ask on and without ``--yes`` the command is refused (an unattended
    script must say it means it), naming the option.
    """
    if yes:
        return
    if not sys.stdin.isatty():
        raise HacoreError(
            f"{what}: refused without confirmation; there is no terminal to ask on, so pass "
            "--yes to confirm"
        )
    click.confirm(f"{what}. Continue?", default=False, abort=True)


def reach(ctx: click.Context, *, need_active: bool) -> tuple[Profile, dict[str, Any], bool]:
    """The cluster view from the active (or, unless ``need_active``, from any node that
    answers); refreshes the profile's node list. The bool says whether it came from the
    active."""
    path = profile_file(ctx)
    profile = require_profile(path)
    try:
        with active_client(profile) as client:
            data = client.cluster()
        from_active = True
    except UnavailableError as err:
        if need_active:
            raise UnavailableError(
                f"{err}; is the cluster failing over? try again shortly"
            ) from None
        data = any_view(profile, err)
        from_active = False
    members = members_of(data)
    if from_active and members:
        refreshed = profile.with_nodes(members, active=data.get("node"))
        if refreshed != profile:
            save_profile(path, refreshed)
            profile = refreshed
    return profile, data, from_active


def any_view(profile: Profile, why: Exception) -> dict[str, Any]:
    for url in profile.urls():
        try:
            with profile.client(url, timeout=5.0) as client:
                return client.cluster()
        except AuthenticationError:
            raise
        except (ApiError, ApiUnreachableError):
            continue
    raise UnavailableError(f"no node of the profile answers ({why})")
