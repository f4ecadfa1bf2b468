"""``hacore cluster teardown`` and ``hacore node uninstall``: taking a cluster down in the
seed's order, and removing what hacore put on a machine."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hacore.cli.common import REMOVE_TIMEOUT, config_option, emit, json_option, profile_file
from hacore.cli.exit_codes import UsageProblem
from hacore.client.profile import require_profile

#: seconds a node gets to stop its servers and end its service
NODE_TIMEOUT = 180.0


@click.command("teardown")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (for scripts).")
@json_option
@click.pass_context
def cluster_teardown(ctx: click.Context, yes: bool, as_json: bool) -> None:
    """Take the whole cluster down: the standbys first, the active last, with no failover.

    \b
    In order: standbys that do not answer are dropped from the store and the membership
    (without their acknowledgement, while the store still has its quorum); each standby that
    answers is removed as "nodes remove" does (it stops its database and store server) and
    its agent service exits; then the active, the last node left, stops cleanly (database
    fenced, lease released with nobody to take it, store server stopped) and its service
    exits. No standby is promoted at any point: the command stops, leaving the active
    running, if the active or its fencing token changed under it. Every node keeps its data
    on disk: run "hacore node uninstall" on each machine to remove it.

    \b
    Asks for confirmation on a terminal; --yes skips it (required without a terminal).

    \b
    Exit status: 0 torn down; 1 failed half-way (run it again: each step is idempotent);
    2 not confirmed (no --yes without a terminal); 3 the cluster cannot be reached; 4
    refused.

    \b
    Example:
      hacore cluster teardown --yes
    """
    from hacore.cluster.teardown import plan_teardown, run_teardown

    profile = require_profile(profile_file(ctx))
    plan = plan_teardown(profile)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageProblem("cluster teardown needs --yes when not run at a terminal")
        click.confirm(f"Tear down cluster {plan.cluster}: {plan.describe()}?", abort=True, err=True)

    def say(line: str) -> None:
        if not as_json:
            click.echo(line)

    say(f"tearing down cluster {plan.cluster}: {plan.describe()}")
    result = run_teardown(
        profile, plan, say, remove_timeout=REMOVE_TIMEOUT, node_timeout=NODE_TIMEOUT
    )
    result["plan"] = plan.to_json()
    emit(
        as_json,
        result,
        lambda: click.echo(
            f"cluster {plan.cluster} torn down; no change of active during it. Run "
            "hacore node uninstall on each machine to remove its data."
        ),
    )


@click.group("node")
def node() -> None:
    """This machine's hacore node: remove what hacore installed here."""


@node.command("uninstall")
@config_option
@click.option("-f", "--force", is_flag=True, help="Uninstall a node that is still a member.")
@click.option(
    "--systemd-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the agent's unit file was installed (default /etc/systemd/system).",
)
@click.option(
    "--profile",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The CLI profile to remove if it is this cluster's (default $HACORE_PROFILE, else "
    "~/.hacore/profile.json).",
)
@json_option
@click.pass_context
def node_uninstall(
    ctx: click.Context,
    config_path: str,
    force: bool,
    systemd_dir: Path | None,
    profile: Path | None,
    as_json: bool,
) -> None:
    """Remove what hacore created on this machine for the node of CONFIG.

    \b
    Stops and disables the systemd units "hacore agent unit" made for this configuration,
    stops the agent service, the fence keeper, the database, the store server and the file
    sync server, and any other process still running from the data directory; then deletes
    the unit files, what hacore wrote in the data directory (database, store and file sync
    data, pki, state files) and the CLI profile if it is this cluster's. Ends with no
    process running and no port of the node bound.

    \b
    Never deleted: node.yaml, log files it names outside the data directory, the
    directories file sync mirrors, anything in the data directory hacore did not create
    (listed as "left"), the data directory itself unless the agent service created it, and
    never a parent directory.

    \b
    Refused while the node is a member of a cluster: remove it first (hacore cluster nodes
    remove NAME) or tear the cluster down (hacore cluster teardown); -f forces (an active
    node then hands over to a standby, as any clean stop does).

    \b
    Exit status: 0 uninstalled; 1 failed, or something still runs or listens afterwards;
    2 invalid node.yaml; 4 refused (the node is still a member).

    \b
    Example:
      hacore node uninstall -c /etc/hacore/node.yaml
    """
    from hacore.cluster import uninstall as un

    def say(line: str) -> None:
        if not as_json:
            click.echo(line)

    report = un.uninstall(
        Path(config_path),
        force=force,
        say=say,
        systemd_dir=systemd_dir or un.SYSTEMD_DIR,
        profile=profile,
    )

    def text() -> None:
        if report.still_running:
            click.echo(f"still running: {'; '.join(report.still_running)}")
        if report.listening:
            click.echo(f"still listening: ports {', '.join(map(str, report.listening))}")
        if not report.still_running and not report.listening:
            click.echo(f"node {report.node} uninstalled: nothing runs, no port of it is bound")

    emit(as_json, report.to_json(), text)
    if report.still_running or report.listening:
        ctx.exit(1)
