"""What the command groups share: the console, the common options, output, and reaching the
cluster through the CLI profile.

Every name here is public on purpose: the command modules import it, and nothing in them
imports another command module.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import click
from rich.console import Console

from hacore.api.errors import ApiError, ApiUnreachableError, AuthenticationError, UnavailableError
from hacore.cli.exit_codes import UsageProblem
from hacore.cli.output import FORMATS, Output, render
from hacore.client.profile import (
    Profile,
    active_client,
    members_of,
    profile_path,
    require_profile,
    save_profile,
)
from hacore.config.node import NodeConfig, load_config

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
    """``-o/--output table|json|yaml|tsv``, and ``--json`` (kept: short for ``-o json``).

    The command receives the choice as ``as_json``, an :class:`Output` that is true for every
    format meant for scripts, so its ``if not as_json`` around progress lines and
    ``emit(as_json, ...)`` need no change.
    """

    @functools.wraps(func)
    def chosen(*args: Any, output: str | None, json_flag: bool, **kwargs: Any) -> Any:
        if json_flag and output not in (None, Output.JSON.value):
            raise click.UsageError(f"--json and -o {output} contradict each other; give one")
        fmt = Output.JSON if json_flag else Output(output or Output.TABLE.value)
        return func(*args, as_json=fmt, **kwargs)

    with_json = click.option(
        "--json", "json_flag", is_flag=True, help="Print JSON for scripts (same as -o json)."
    )(chosen)
    return cast(
        F,
        click.option(
            "-o",
            "--output",
            "output",
            type=click.Choice(FORMATS),
            default=None,
            help="Output format: table (for people, the default), json, yaml, or tsv (tab-"
            "separated: a header and one line per item of a list, else one line per field).",
        )(with_json),
    )


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
            f"/proc); set ${PASSWORD_ENV} or give --password-file instead, or leave it out to "
            "be prompted",
            err=True,
        )


PASSWORD_FILE_ENV = "HACORE_PASSWORD_FILE"


def password_file_option(func: F) -> F:
    return click.option(
        "--password-file",
        type=click.Path(dir_okay=False, exists=True),
        envvar=PASSWORD_FILE_ENV,
        default=None,
        help=f"Read the API password from the first line of this file (also "
        f"${PASSWORD_FILE_ENV}), e.g. a secret a configuration tool put there.",
    )(func)


def password_from(password: str | None, password_file: str | None) -> str | None:
    """The password given by ``--password``/``$HACORE_PASSWORD`` or by ``--password-file``
    (its first line, without the line end); None when neither is given."""
    if password_file is None:
        return password
    if password is not None:
        raise UsageProblem(
            f"the password is given twice (--password or ${PASSWORD_ENV}, and "
            f"--password-file): give one"
        )
    try:
        lines = Path(password_file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UsageProblem(f"cannot read the password file {password_file}: {err}") from None
    if not lines or not lines[0]:
        raise UsageProblem(f"the password file {password_file} is empty (its first line is)")
    return lines[0]


def prompt_password(what: str) -> str | None:
    """The password typed at a terminal, None when there is none to ask."""
    if not sys.stdin.isatty():
        return None
    return str(click.prompt(what, hide_input=True))


def emit(
    as_json: bool | Output, data: Any, text: Callable[[], None], records: str | None = None
) -> None:
    """``data`` in the chosen script format, or ``text()`` for people (``table``);
    ``records``: the key of the command's list, one TSV line per item."""
    if not as_json:
        text()
        return
    fmt = as_json if isinstance(as_json, Output) else Output.JSON
    out = render(fmt, data, records)
    if out:
        click.echo(out)


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
        raise UsageProblem(
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
