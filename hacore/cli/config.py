"""``hacore config check``: validate a node configuration, and reach its consensus store."""

from __future__ import annotations

import click


@click.group()
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
    from hacore.config.options import parse_options
    from hacore.plugins.configured import load_config_and_plugins

    overrides = parse_options(list(options)) if options else None
    node_config, loaded = load_config_and_plugins(path, overrides=overrides)
    click.echo(f"{path}: configuration valid (node {node_config.node.name})")
    from hacore.config.check import security_warnings

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
