"""The ``hacore`` command line: the top-level group, with every command group attached here.

Errors hacore raises on purpose (:class:`~hacore.errors.HacoreError`) are printed as one line
prefixed with ``error:`` (a configuration error, one line per problem) and exit with the
status :mod:`hacore.cli.exit_codes` gives their kind; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import logging
from typing import Any

import click

from hacore import __version__
from hacore.cli import (
    admin_password,
    agent,
    cluster,
    cluster_config,
    cluster_join,
    config,
    demo,
    handover,
    haproxy,
    history,
    node,
    node_repair,
    nodes,
    pause,
    plugins,
    profiles,
    salvage,
    snapshot,
    status,
)
from hacore.cli.exit_codes import exit_code_for
from hacore.config.logging_setup import TEXT_FORMAT
from hacore.errors import ConfigError, HacoreError


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HacoreError as err:
            # A configuration error holds one problem per line; others may carry a log tail.
            lines = str(err).splitlines() if isinstance(err, ConfigError) else [str(err)]
            for line in lines:
                click.echo(f"error: {line}", err=True)
            ctx.exit(exit_code_for(err))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hacore")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """hacore: active/hot-standby high availability for a manager server.

    One node is active; the others are hot standbys that mirror its PostgreSQL database and
    files. When the active fails its health checks, a standby takes over by itself.

    \b
    Commands that report take -o/--output table|json|yaml|tsv (--json: -o json).
    Exit status, the same for every command:
      0  done
      1  the operation failed (or the answer is no: cluster status without an active)
      2  usage or configuration error: fix the command line or the file
      3  the cluster (or its store) cannot be reached, or cannot do it now: try again later
      4  refused by the cluster (a conflict with its state, an unknown node, wrong
         credentials); nothing changed
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format=TEXT_FORMAT)
    if verbose < 2:
        # kazoo logs every refused connection attempt; hacore reports the outcome itself
        logging.getLogger("kazoo").setLevel(logging.ERROR)


def _attach() -> None:
    """Every command, in one place: which group it belongs to is read here, not in its module."""
    for command in (
        cluster.cluster_start,
        cluster_join.cluster_join,
        cluster.cluster_ca,
        nodes.nodes,
        status.cluster_status,
        handover.cluster_switchover,
        handover.cluster_failover,
        history.cluster_history,
        history.cluster_explain,
        haproxy.cluster_haproxy_config,
        salvage.salvage,
        node.cluster_teardown,
        pause.cluster_pause,
        pause.cluster_resume,
        cluster_config.cluster_config,
        profiles.profile,
        admin_password.cluster_admin_password,
    ):
        cluster.cluster.add_command(command)
    for command in (node_repair.nodes_restart, node_repair.nodes_reinit):
        nodes.nodes.add_command(command)
    for group in (agent.agent, cluster.cluster, node.node, plugins.plugins, config.config):
        cli.add_command(group)
    cli.add_command(demo.demo)
    cli.add_command(snapshot.snapshot)


_attach()


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="hacore")


__all__ = ["cli", "main"]
