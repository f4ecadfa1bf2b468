"""``hacore plugins``: the installed plugins and the backends they register."""

from __future__ import annotations

import click
from rich.table import Table

from hacore.cli.common import console, emit, json_option
from hacore.plugins.registry import FAMILIES, load_plugins


@click.group()
def plugins() -> None:
    """Installed plugins and the backends they register."""


@plugins.command("list")
@json_option
def plugins_list(as_json: bool) -> None:
    """List installed plugins and every registered backend, by family.

    Plugins come from the "hacore" entry point group; HACORE_BLOCK_PLUGINS=a,b skips some.
    """
    loaded = load_plugins()
    backends = {family: loaded.registry.names(family) for family in FAMILIES}
    missing = {family: loaded.registry.missing(family) for family in FAMILIES}
    out = {"plugins": loaded.plugin_names(), "backends": backends, "not_installed": missing}

    def text() -> None:
        table = Table(title="hacore backends")
        table.add_column("family")
        table.add_column("backends")
        table.add_column("not installed")
        for family, names in backends.items():
            absent = ", ".join(f"{name} ({why})" for name, why in missing[family].items())
            table.add_row(family, ", ".join(names) or "-", absent or "-")
        console.print(table)
        console.print("plugins: " + ", ".join(loaded.plugin_names()))

    emit(as_json, out, text)
