"""``hacore cluster admin-password``: change the cluster's admin password (on the active).

Neither password is ever a command-line argument (``ps`` shows those): each comes from the
environment, a file, or a prompt at the terminal, the new one typed twice.
"""

from __future__ import annotations

import os
import sys

import attrs
import click

from hacore.api.client import ApiClient, find_active
from hacore.cli.common import (
    PASSWORD_ENV,
    emit,
    json_option,
    password_file_option,
    password_from,
    profile_file,
)
from hacore.cli.exit_codes import UsageProblem
from hacore.client.profile import PROBE_TIMEOUT, require_profile, save_profile

NEW_PASSWORD_ENV = "HACORE_NEW_PASSWORD"
NEW_PASSWORD_FILE_ENV = "HACORE_NEW_PASSWORD_FILE"
#: seconds for the active to reseal the CA key twice and rotate the failsafe key
CHANGE_TIMEOUT = 60.0


def _current(password_file: str | None) -> str:
    given = password_from(os.environ.get(PASSWORD_ENV) or None, password_file)
    if given is not None:
        return given
    if sys.stdin.isatty():
        return str(click.prompt("current admin password", hide_input=True))
    raise UsageProblem(
        f"the current admin password is needed: set ${PASSWORD_ENV} or give --password-file "
        "(no terminal to prompt on)"
    )


def _new(new_password_file: str | None) -> str:
    given = password_from(os.environ.get(NEW_PASSWORD_ENV) or None, new_password_file)
    if given is not None:
        return given
    if sys.stdin.isatty():
        return str(click.prompt("new admin password", hide_input=True, confirmation_prompt=True))
    raise UsageProblem(
        f"the new admin password is needed: set ${NEW_PASSWORD_ENV} or give "
        "--new-password-file (no terminal to prompt on)"
    )


@click.command("admin-password")
@password_file_option
@click.option(
    "--new-password-file",
    type=click.Path(dir_okay=False, exists=True),
    envvar=NEW_PASSWORD_FILE_ENV,
    default=None,
    help=f"Read the new password from the first line of this file (also ${NEW_PASSWORD_FILE_ENV}).",
)
@json_option
@click.pass_context
def cluster_admin_password(
    ctx: click.Context, password_file: str | None, new_password_file: str | None, as_json: bool
) -> None:
    """Change the cluster's admin password.

    \b
    The current password comes from $HACORE_PASSWORD or --password-file, else a prompt;
    the new one from $HACORE_NEW_PASSWORD or --new-password-file, else a prompt (typed
    twice). At least 12 characters. The user is the CLI profile's.

    \b
    On the active: the CA key in the store is resealed under the new password (first under
    both, so a crash half-way leaves it readable: run the command again), the failsafe key
    is rotated, and every member takes the new password within seconds. The CLI profile
    is updated when it held the old password.

    \b
    Exit status: 0 changed; 2 a password missing without a terminal, a new one too short
    or the same as the current one; 3 no active node answers; 4 refused (a wrong current
    password, not the active).

    \b
    Example:
      HACORE_PASSWORD=... HACORE_NEW_PASSWORD=... hacore cluster admin-password
    """
    path = profile_file(ctx)
    profile = require_profile(path)
    current = _current(password_file)
    new = _new(new_password_file)
    # looked for with the password given: the profile's may be another (or already stale)
    auth = (profile.username, current)
    with find_active(profile.urls(), auth, timeout=PROBE_TIMEOUT, verify=profile.verify()) as found:
        url = found.base_url
    with ApiClient(url, auth, timeout=CHANGE_TIMEOUT, verify=profile.verify()) as client:
        answer = client.change_admin_password(new)
    profile_note = "the CLI profile holds another password: left as it is"
    if profile.password == current:
        where = save_profile(path, attrs.evolve(profile, password=new))
        profile_note = f"the CLI profile now holds the new password ({where})"
    answer = {**answer, "profile": profile_note}

    def text() -> None:
        click.echo(
            f"the admin password of {profile.username} changed (generation "
            f"{answer.get('generation')})"
        )
        for key in ("ca_key", "failsafe_key", "members", "profile"):
            if key in answer:
                click.echo(f"  {key.replace('_', ' ')}: {answer[key]}")

    emit(as_json, answer, text)
