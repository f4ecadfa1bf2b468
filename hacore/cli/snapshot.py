"""``hacore snapshot create|restore``: the cluster's data in one file, and a new cluster from it.

Both run on the node itself (they read ``node.yaml`` and the node's data directory), not
through the profile: create on the active, restore on the node that will found the new
cluster. Progress (bytes, rate, ETA) goes to stderr when it is a terminal, or with
``--progress``; the result goes to stdout, in any ``-o`` format. docs/snapshots.md.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from hacore.cli.common import config_option, emit, json_option, profile_file
from hacore.client.profile import load_profile
from hacore.client.units import human_bytes
from hacore.cluster import snapshot as flows
from hacore.cluster.snapshot_archive import Header
from hacore.errors import HacoreError


@click.group("snapshot")
def snapshot() -> None:
    """Take a snapshot of the cluster on its active; found a new cluster from one."""


def _progress_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--progress/--no-progress",
        default=None,
        help="Show bytes, rate and ETA on stderr (default: when stderr is a terminal).",
    )(func)


def _meter(progress: bool | None) -> Callable[[str], None] | None:
    show = sys.stderr.isatty() if progress is None else progress
    return (lambda line: click.echo(line, err=True)) if show else None


def _say(as_json: bool) -> Callable[[str], None]:
    return lambda line: click.echo(line, err=bool(as_json))


@snapshot.command("create")
@config_option
@click.option(
    "--file",
    "-f",
    "file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The snapshot file to write (default: hacore-snapshot-<cluster>-<time>.tar.gz here). "
    "A name ending in .gz or .tgz is gzip-compressed. (Not --output: -o/--output is the "
    "result's format, as for every command.)",
)
@_progress_option
@json_option
@click.pass_context
def snapshot_create(
    ctx: click.Context, config_path: str, file: Path | None, progress: bool | None, as_json: bool
) -> None:
    """Write a snapshot of the cluster, on its active node.

    \b
    The file (mode 0600, written to a temporary name and renamed, so it is whole or absent)
    holds a logical dump of the database (every database and role but hacore's own), the
    files of the filesync directories, the cluster-wide settings and a manifest (format and
    hacore version, PostgreSQL version, sizes and sha256 of every member). Not the cluster's
    membership, node credentials, certificates nor the store. Refused on a standby.

    \b
    Exit status: 0; 3 when the local agent does not answer; 4 when this node is not the
    active (nothing written).

    \b
    Example:
      hacore snapshot create --file /var/backups/manager.tar.gz
    """
    loaded = flows.load_member(config_path)
    target = file if file is not None else flows.default_output(loaded.config)
    compress = target.name.endswith((".gz", ".tgz"))
    profile = None
    with contextlib.suppress(HacoreError):  # only needed when /status asks for credentials
        profile = load_profile(profile_file(ctx))
    result = flows.create_snapshot(
        loaded,
        target,
        compress=compress,
        auth=profile.auth if profile is not None else None,
        say=_say(as_json),
        meter_say=_meter(progress),
    )

    def text() -> None:
        click.echo(
            f"snapshot written: {result['file']} ({human_bytes(result['size'])}, "
            f"{result['members']} members)"
        )
        click.echo(Header.from_json(result["snapshot"]).describe())

    emit(as_json, result, text)


@snapshot.command("restore")
@config_option
@click.argument("source", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--force",
    is_flag=True,
    help="Discard what the node holds (database, store data, filesync files) and restore "
    "anyway; a node in a cluster is still refused.",
)
@_progress_option
@json_option
def snapshot_restore(
    config_path: str, source: Path, force: bool, progress: bool | None, as_json: bool
) -> None:
    """Restore a snapshot onto this node, then found a new cluster with cluster start.

    \b
    The node must be empty and in no cluster (as for a join). The whole file is checked
    against its manifest first: a corrupt or truncated snapshot, one from a newer hacore or
    a newer PostgreSQL major is refused and nothing is changed. Then the database is made
    from the dump (and left stopped) and the files are put in the filesync directories.
    Next, on this node: hacore cluster start (the restored node can be started, never
    joined). An interrupted restore is redone by running it again.

    \b
    Exit status: 0; 4 when refused (nothing changed).

    \b
    Example:
      hacore snapshot restore /var/backups/manager.tar.gz && hacore cluster start
    """
    result = flows.restore_snapshot(
        config_path, source, force=force, say=_say(as_json), meter_say=_meter(progress)
    )

    def text() -> None:
        click.echo(f"restored {Header.from_json(result['snapshot']).describe()}")
        click.echo(f"{result['files']} files, {human_bytes(result['bytes'])} in all")
        if result["settings_differ"]:
            click.echo(
                "note: node.yaml differs from the snapshot's cluster settings in: "
                + ", ".join(result["settings_differ"])
            )
        if result["cluster_wide_from_snapshot"]:
            click.echo(
                "cluster start will use the snapshot's cluster-wide settings, not node.yaml's, "
                "for: " + ", ".join(result["cluster_wide_from_snapshot"])
            )
        click.echo("next: hacore cluster start (on this node), then join the other nodes")

    emit(as_json, result, text)
