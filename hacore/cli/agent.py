"""``hacore agent``: run this node's agent service, print its systemd unit, the fence keeper."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from hacore.cli.common import config_option
from hacore.config.node import load_config


@click.group()
def agent() -> None:
    """The per-node agent service."""


@agent.command("run")
@config_option
def agent_run(config_path: str) -> None:
    """Run this node's agent service in the foreground until SIGTERM or SIGINT.

    \b
    Before the node belongs to a cluster the service only serves the REST API on
    node.host:node.api_port: /status answers 503 and it waits for "hacore cluster start" or
    "hacore cluster join", which the local CLI authenticates with the bootstrap token the
    service writes to <data_dir>/bootstrap.token (0600). Once the node is a member it runs
    the agent loop too, and the API takes the cluster's credentials.

    \b
    What the node is part of is kept in <data_dir>/cluster.json (0600); after a restart the
    service resumes from it: an interrupted start continues, an interrupted join continues
    (or rolls back to an empty node if it had not joined the store yet).

    \b
    Stopping the service stops the node's role: an active node hands over at once, then
    its database stops. A managed store server keeps running (restarting an agent must not
    cost the store a member); the next agent takes it over. Run it under systemd
    ("hacore agent unit" prints the unit).

    \b
    The log goes where node.yaml's logging section says (stderr by default, INFO; -v/-vv
    override the level). SIGHUP (systemctl reload) reads node.yaml again: the logging
    section applies at once; other changes are logged as needing a restart.

    \b
    Example:
      hacore agent run -c /etc/hacore/node.yaml
    """
    from hacore.agent.reload import Reloader
    from hacore.cluster.node_service import serve
    from hacore.config.logging_setup import SETUP

    started = load_config(config_path)
    verbose = int(click.get_current_context().find_root().params.get("verbose") or 0)
    SETUP.apply(started.logging, verbose=verbose)
    Reloader(config_path, started).install()
    serve(config_path)


@agent.command("unit")
@config_option
@click.option("--user", "user", default=None, help="Run the agent as this user (User=).")
@click.option(
    "--priority",
    type=click.Choice(["raised", "normal"]),
    default="raised",
    show_default=True,
    help="raised: Nice=-10 and best-effort I/O at level 0 for the agent and what it starts.",
)
def agent_unit(config_path: str, user: str | None, priority: str) -> None:
    """Print a systemd unit for this node's agent service.

    \b
    KillMode=process: systemctl stop/restart signal the agent alone; the managed store
    member and the fence keeper outlive it, and the agent stops its own database after
    handing over. ExecReload sends SIGHUP. Install it (docs/agent.md):
      hacore agent unit -c /etc/hacore/node.yaml > /etc/systemd/system/hacore-agent.service
      systemctl daemon-reload && systemctl enable --now hacore-agent
    """
    from hacore.cli.agent_unit import agent_unit as unit_text

    click.echo(unit_text(config_path, user=user, priority=priority), nl=False)


@agent.command("keeper", hidden=True)
@config_option
@click.option(
    "--agent-pid",
    type=int,
    required=True,
    help="The agent that started the keeper (until its record names one).",
)
def agent_keeper(config_path: str, agent_pid: int) -> None:
    """Fence this node's database when its agent misses its lease deadline.

    \b
    Started (and restarted) by "hacore agent run"; not meant to be run by hand. It outlives
    a killed or hung agent, and exits once nothing is left to guard. See docs/fencing.md.
    """
    from hacore.cluster.keeper_entry import run_keeper

    root = logging.getLogger()
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)
    run_keeper(Path(config_path), agent_pid)
