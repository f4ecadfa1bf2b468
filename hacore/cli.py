"""The ``hacore`` command line.

Errors hacore raises on purpose (:class:`~hacore.errors.HacoreError`) are printed as one line
prefixed with ``error:`` (a configuration error, one line per problem) and exit with status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from hacore import __version__
from hacore.cli_cluster import add_cluster_commands
from hacore.cli_node import add_node_commands
from hacore.errors import ConfigError, HacoreError
from hacore.logsetup import TEXT_FORMAT
from hacore.plugins import FAMILIES, load_plugins

console = Console()


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HacoreError as err:
            # A configuration error holds one problem per line; others may carry a log tail.
            lines = str(err).splitlines() if isinstance(err, ConfigError) else [str(err)]
            for line in lines:
                click.echo(f"error: {line}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hacore")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def cli(verbose: int) -> None:
    """hacore: active/hot-standby high availability for a manager server.

    One node is active; the others are hot standbys that mirror its PostgreSQL database and
    files. When the active fails its health checks, a standby takes over by itself.
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format=TEXT_FORMAT)
    if verbose < 2:
        # kazoo logs every refused connection attempt; hacore reports the outcome itself
        logging.getLogger("kazoo").setLevel(logging.ERROR)


@cli.group()
def plugins() -> None:
    """Installed plugins and the backends they register."""


@plugins.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def plugins_list(as_json: bool) -> None:
    """List installed plugins and every registered backend, by family.

    Plugins come from the "hacore" entry point group; HACORE_BLOCK_PLUGINS=a,b skips some.
    """
    loaded = load_plugins()
    backends = {family: loaded.registry.names(family) for family in FAMILIES}
    missing = {family: loaded.registry.missing(family) for family in FAMILIES}
    if as_json:
        out = {"plugins": loaded.plugin_names(), "backends": backends, "not_installed": missing}
        click.echo(json.dumps(out, indent=2))
        return
    table = Table(title="hacore backends")
    table.add_column("family")
    table.add_column("backends")
    table.add_column("not installed")
    for family, names in backends.items():
        absent = ", ".join(f"{name} ({why})" for name, why in missing[family].items())
        table.add_row(family, ", ".join(names) or "-", absent or "-")
    console.print(table)
    console.print("plugins: " + ", ".join(loaded.plugin_names()))


@cli.group()
def config() -> None:
    """Check node configuration files."""


@config.command("check")
@click.option(
    "-c",
    "--config",
    "path",
    type=click.Path(dir_okay=False),
    required=True,
    help="The node configuration (YAML).",
)
@click.option("--options", "options", multiple=True, help="Overrides, as for cluster start.")
@click.option(
    "--connect/--no-connect",
    default=True,
    show_default=True,
    help="Also reach the consensus store (skipped for a managed store not started yet).",
)
def config_check(path: str, options: tuple[str, ...], connect: bool) -> None:
    """Validate a node configuration and, with --connect, reach its consensus store.

    Prints one line per problem, each naming the file and the key, and exits with status 2
    when there is any: an unknown key (with the nearest known one), a value of the wrong type
    or out of range (ports 1-65535), settings that contradict each other (synchronous
    replication against failover.synchronous_mode), a timing that breaks loop_wait + 2 *
    retry_timeout + safety_margin < ttl, an unknown backend name, or a store that does not
    answer within retry_timeout.
    """
    from hacore.config import load_config_and_plugins
    from hacore.options import parse_options

    overrides = parse_options(list(options)) if options else None
    node_config, loaded = load_config_and_plugins(path, overrides=overrides)
    click.echo(f"{path}: configuration valid (node {node_config.node.name})")
    from hacore.config_check import security_warnings

    for warning in security_warnings(node_config.tls.enabled):
        click.echo(f"{path}: WARNING: {warning}", err=True)
    if not connect or node_config.consensus.managed:
        return
    section = node_config.consensus
    backend = loaded.registry.consensus(section.backend)(
        section.settings,
        namespace=node_config.cluster.namespace,
        node_name=node_config.node.name,
        ttl=node_config.timing.ttl,
        retry_timeout=node_config.timing.retry_timeout,
    )
    try:
        leader = backend.leader()
    finally:
        backend.close()
    who = f"leader {leader.name}" if leader else "no leader yet"
    click.echo(f"{section.backend} store reachable ({who})")


@cli.command()
@click.option(
    "--backend",
    type=click.Choice(["etcd", "zookeeper"]),
    default="etcd",
    show_default=True,
    help="Consensus store each node runs (a managed store member per node).",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the demo keeps its data and logs (default: a temporary directory, removed).",
)
@click.option(
    "--store-only",
    is_flag=True,
    help="Only the consensus part: a 3-member store and three contenders for the lease.",
)
@click.option(
    "--ttl", type=float, default=3.0, show_default=True, help="Lease TTL of --store-only."
)
def demo(backend: str, workdir: str | None, store_only: bool, ttl: float) -> None:
    """Run the local demo: a 3-node cluster running the sample manager fails over.

    \b
    1. starts an agent service per node (its own store member, PostgreSQL and Syncthing),
    2. hacore cluster start on node1, hacore cluster join for node2 and node3,
    3. shows the sample manager's API and worker running on the active only,
    4. uploads a resource to its API and shows it on both standbys' disks,
    5. writes rows and starts a resumable and a non-resumable workflow,
    6. SIGKILLs everything the active runs (a host death) mid-workflow,
    7. shows the new active, the takeover time, no row lost, the services moved, the
       resumable workflow finishing from the next step and the other one failed,
    8. brings the old node back as a streaming standby with the files written meanwhile,
       then cleans everything up.

    Everything runs on loopback ports in one work directory; it works as root (the database
    then runs as the postgres user) and as a normal user. The sample manager must be
    installed (./scripts/setup does it).

    With --store-only: a managed 3-member store and three contender processes; the
    leader's process and store server are SIGKILLed and another takes over the lease.
    """
    if store_only:
        from hacore.demo import run_store_demo

        run_store_demo(backend=backend, workdir=workdir, ttl=ttl, console=console)
        return
    from hacore.demo_cluster import run_cluster_demo

    run_cluster_demo(backend=backend, workdir=workdir, console=console)


add_cluster_commands(cli)
add_node_commands(cli)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="hacore")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
