"""The ``hacore`` command line.

Errors hacore raises on purpose (:class:`~hacore.errors.HacoreError`) are printed as one line
prefixed with ``error:`` and exit with status 2; anything else is a bug and keeps its traceback.
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
from hacore.errors import HacoreError
from hacore.plugins import FAMILIES, load_plugins

console = Console()


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HacoreError as err:
            click.echo(f"error: {err}", err=True)
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
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(asctime)s %(name)s %(message)s")


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
    if as_json:
        click.echo(json.dumps({"plugins": loaded.plugin_names(), "backends": backends}, indent=2))
        return
    table = Table(title="hacore backends")
    table.add_column("family")
    table.add_column("backends")
    for family, names in backends.items():
        table.add_row(family, ", ".join(names) or "-")
    console.print(table)
    console.print("plugins: " + ", ".join(loaded.plugin_names()))


@cli.command()
@click.option(
    "--backend",
    type=click.Choice(["etcd", "zookeeper"]),
    default="etcd",
    show_default=True,
    help="Consensus store to run.",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the demo keeps its data (default: a temporary directory, removed after).",
)
@click.option("--ttl", type=float, default=3.0, show_default=True, help="Leader lease TTL.")
def demo(backend: str, workdir: str | None, ttl: float) -> None:
    """Run the local demo: a 3-member store and three contenders failing over.

    Starts a one-member store through hacore's managed-server capability, grows it to three
    members, lets three local contenders campaign, then crashes the leader and shows how long
    a standby takes to take over. Everything runs on loopback ports and is cleaned up.
    """
    from hacore.demo import run_store_demo

    run_store_demo(backend=backend, workdir=workdir, ttl=ttl, console=console)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="hacore")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
