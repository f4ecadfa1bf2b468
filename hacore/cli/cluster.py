"""The ``hacore cluster`` group, and its ``start`` and ``ca`` commands (``join`` is in
:mod:`hacore.cli.cluster_join`).

The group's other commands live in modules of their own and are attached to it by
:mod:`hacore.cli`. Errors hacore raises on purpose are printed by :mod:`hacore.cli` as one
``error:`` line, with the exit status of :mod:`hacore.cli.exit_codes`.
"""

from __future__ import annotations

import secrets

import click

from hacore.agent.tls_paths import ca_cert_file
from hacore.cli.common import (
    ACCEPT_TIMEOUT,
    PASSWORD_ENV,
    config_option,
    echo_progress,
    emit,
    json_option,
    local_config,
    password_file_option,
    password_from,
    profile_file,
    warn_password_argument,
)
from hacore.client.follow import LocalApi, follow_operation
from hacore.client.profile import (
    PROFILE_ENV,
    Profile,
    load_profile,
    members_of,
    profile_path,
    save_profile,
)
from hacore.cluster.bootstrap_token import BOOTSTRAP_USER, local_url, read_token
from hacore.cluster.tls import ca_certificate_pem
from hacore.config.node import NodeConfig
from hacore.errors import HacoreError


@click.group()
@click.option(
    "--profile",
    type=click.Path(dir_okay=False),
    default=None,
    help=f"CLI profile file (default ${PROFILE_ENV}, else ~/.hacore/profile.json).",
)
@click.pass_context
def cluster(ctx: click.Context, profile: str | None) -> None:
    """Form a cluster, add and remove nodes, see its state, switch the active over.

    \b
    "start" founds a cluster on this node, "join" adds this node to one; both write the CLI
    profile (node list and API credentials, 0600) that the other commands use to find the
    active node by themselves, so they keep working after a failover.
    """
    ctx.obj = profile_path(profile)


def bootstrap_token(config: NodeConfig, config_path: str) -> str:
    """The token the local agent service accepts from this machine's CLI before the node
    belongs to a cluster (``cluster start`` and ``cluster join``)."""
    token = read_token(config.node.data_dir)
    if token is None:
        raise HacoreError(
            f"no bootstrap token in {config.node.data_dir}: the agent service is not running "
            f"(start it: hacore agent run -c {config_path}), or this node already belongs to a "
            "cluster"
        )
    return token


@cluster.command("start")
@config_option
@click.option("--node-name", help="This node's name in the cluster (default: node.name).")
@click.option("--host-ip", help="The address other nodes reach this node at (default: node.host).")
@click.option(
    "--options",
    "options",
    multiple=True,
    help="Configuration overrides: YAML file(s), a JSON object, or k1=v1;k2=v2 (repeatable).",
)
@click.option("--username", default="admin", show_default=True, help="The API user to create.")
@click.option(
    "--password",
    envvar=PASSWORD_ENV,
    default=None,
    help=f"The API password to set; better ${PASSWORD_ENV} (an argument shows in ps). "
    "Generated when not given.",
)
@password_file_option
@click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds to wait.")
@json_option
@click.pass_context
def cluster_start(
    ctx: click.Context,
    config_path: str,
    node_name: str | None,
    host_ip: str | None,
    options: tuple[str, ...],
    username: str,
    password: str | None,
    password_file: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Found a new cluster with this node as its first, active node.

    \b
    The node's agent service must run (hacore agent run -c FILE). It checks the node first
    and refuses, changing nothing, when the node already holds a database, when a managed
    store already has data here, or when an external store already holds a cluster under
    this namespace. Then, one progress line per step:
      1. store: bootstraps a one-member store on this node (consensus.managed: true), or
         uses the external store;
      2. record: writes the cluster record (name, hacore version, creation time) to it;
      3. database: bootstraps PostgreSQL with a new, random replication password;
      4. names this node the first active and starts the agent, which campaigns and
         promotes; the command returns once this node's /status answers 200.
    Each step is recorded in <data_dir>/cluster.json: run the command again after a failure
    to resume where it stopped.

    \b
    The API credentials are created here: --username with $HACORE_PASSWORD or
    --password-file, or a random password. Only
    a hash goes to the agents; the password is written to the CLI profile (0600) and printed
    once, at the end.

    \b
    Exit status: 0 the node is active; 1 failed; 2 usage or configuration error; 3 the
    agent cannot be reached; 4 refused, nothing changed ("error:" line; see hacore --help).

    \b
    Examples:
      hacore cluster start -c /etc/hacore/node.yaml
      hacore cluster start --node-name manager-1 --host-ip 10.0.0.1 --options timing.ttl=10
    """
    from hacore.config.options import parse_options

    warn_password_argument(ctx)
    password = password_from(password, password_file)
    config = local_config(config_path)
    overrides = parse_options(list(options)) if options else {}
    generated = password is None
    password = password or secrets.token_urlsafe(18)
    token = bootstrap_token(config, config_path)
    url = local_url(config)
    local = LocalApi(
        url,
        [(BOOTSTRAP_USER, token), (username, password)],
        timeout=30.0,
        ca_file=ca_cert_file(config.node.data_dir),
    )
    path = profile_file(ctx)
    previous = load_profile(path)
    # Saved first: the password must not be lost if this command dies before the end.
    name = node_name or config.node.name
    save_profile(path, Profile(config.cluster.name, username, password, ((name, url),)))
    body = {
        "node_name": node_name,
        "host_ip": host_ip,
        "options": overrides,
        "username": username,
        "password": password,
    }
    try:
        answer = local.call(lambda c: c.start_cluster(body), timeout=ACCEPT_TIMEOUT)
    except BaseException:
        if previous is not None:
            save_profile(path, previous)
        else:
            path.unlink(missing_ok=True)
        raise
    cluster_name = str(answer.get("cluster"))
    save_profile(path, Profile(cluster_name, username, password, ((answer["node"], url),)))
    echo = echo_progress(as_json)
    if echo:
        verb = "resuming the start of" if answer.get("resumed") else "starting"
        echo(f"{verb} cluster {cluster_name} on node {answer['node']} ({url})")
    op = follow_operation(local, timeout=timeout, echo=echo)
    data = local.call(lambda c: c.cluster())
    ca_pem = ca_certificate_pem(config.node.data_dir)
    fingerprint = data.get("ca_fingerprint")
    profile = Profile(cluster_name, username, password, ca_certificate=ca_pem).with_nodes(
        members_of(data) or [(answer["node"], local.url)], active=answer["node"]
    )
    save_profile(path, profile)
    result = {
        "cluster": cluster_name,
        "node": answer["node"],
        "api_url": local.url,
        "username": username,
        "password": password if generated else None,
        "profile": str(path),
        "elapsed": op.get("elapsed"),
        "ca_fingerprint": fingerprint,
    }

    def text() -> None:
        click.echo(f"{op.get('result')} (took {op.get('elapsed', 0):.1f} s)")
        if fingerprint:
            click.echo(
                f"cluster CA fingerprint (SHA-256): {fingerprint}\n"
                "nodes that join need it: hacore cluster join ADDRESS --ca-fingerprint "
                f"{fingerprint} ... (hacore cluster ca prints it again on any member)"
            )
        click.echo(
            "to add a node: hacore cluster nodes add NAME --host-ip ADDRESS prints its join "
            "command, with a single-use token"
        )
        if generated:
            click.echo(
                f"API user {username}, password {password}\n"
                f"(saved in the CLI profile {path}; it is not shown again)"
            )
        else:
            click.echo(f"CLI profile saved in {path}")

    emit(as_json, result, text)


@cluster.command("ca")
@config_option
@json_option
def cluster_ca(config_path: str, as_json: bool) -> None:
    """Print the cluster CA's fingerprint and certificate, from this member's data directory.

    \b
    A node that joins needs the fingerprint (--ca-fingerprint) or the certificate in a file
    (--ca-file). Clients that trust this certificate (it is public) reach whichever node is
    active over HTTPS, with no per-node certificate. Changes nothing.

    \b
    Exit status: 0; 1 when this node has no cluster CA (not a member, or TLS is off); 2 when
    node.yaml is invalid.

    \b
    Examples:
      hacore cluster ca -c /etc/hacore/node.yaml
      hacore cluster ca --json | jq -r .ca_certificate > ca.crt
    """
    from hacore import pki

    config = local_config(config_path)
    path = ca_cert_file(config.node.data_dir)
    pem = ca_certificate_pem(config.node.data_dir)
    if pem is None:
        raise HacoreError(
            f"no cluster CA at {path}: this node is not a member of a cluster that runs with TLS"
        )
    fingerprint = pki.fingerprint(pki.load_ca_certificate(path))
    emit(
        as_json,
        {"fingerprint": fingerprint, "ca_certificate": pem, "path": str(path)},
        lambda: click.echo(f"SHA-256 fingerprint: {fingerprint}\n{pem.rstrip()}"),
    )
