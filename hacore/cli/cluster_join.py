"""``hacore cluster join``: add this node to a running cluster, with the cluster's API
credentials or a single-use join token, and follow the join until the node streams."""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import Any

import attrs
import click

from hacore.agent.tls_paths import ca_cert_file
from hacore.api.auth import JOIN_TOKEN_USER
from hacore.api.errors import ApiError, ApiUnreachableError, AuthenticationError
from hacore.cli.cluster import bootstrap_token
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
    prompt_password,
    warn_password_argument,
)
from hacore.cli.exit_codes import UsageProblem
from hacore.client import profile_keyring
from hacore.client.follow import LocalApi, follow_view
from hacore.client.profile import (
    Profile,
    load_profile,
    members_of,
    save_profile,
)
from hacore.cluster.bootstrap_token import BOOTSTRAP_USER, local_url
from hacore.cluster.tls import ca_certificate_pem
from hacore.config.cluster_settings import (
    ClusterWide,
    IgnoredOption,
    from_mapping,
    ignored_options,
)
from hacore.errors import ConfigError


@click.command("join")
@click.argument("active_address")
@config_option
@click.option("--node-name", required=True, help="This node's name in the cluster (unique).")
@click.option("--host-ip", help="The address other nodes reach this node at (default: node.host).")
@click.option(
    "--options",
    "options",
    multiple=True,
    help="Configuration overrides: YAML file(s), a JSON object, or k1=v1;k2=v2 (repeatable).",
)
@click.option("--username", default=None, help="The cluster's API user (default: the profile's).")
@click.option(
    "--password",
    envvar=PASSWORD_ENV,
    default=None,
    help=f"The cluster's API password; better ${PASSWORD_ENV} (an argument shows in ps). "
    "Default: the profile's, else a prompt on a terminal.",
)
@password_file_option
@click.option(
    "--token",
    "join_token",
    envvar="HACORE_JOIN_TOKEN",
    default=None,
    help="A single-use join token for this node's name and address (hacore cluster nodes add "
    "prints it), instead of the API credentials. Also $HACORE_JOIN_TOKEN.",
)
@click.option(
    "--ca-fingerprint",
    default=None,
    help="SHA-256 fingerprint of the cluster CA (cluster start printed it; hacore cluster ca "
    "prints it on any member). Default: the CA in the CLI profile.",
)
@click.option(
    "--ca-file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="The cluster CA's certificate (PEM), instead of --ca-fingerprint.",
)
@click.option("--timeout", type=float, default=900.0, show_default=True, help="Seconds to wait.")
@json_option
@click.pass_context
def cluster_join(
    ctx: click.Context,
    active_address: str,
    config_path: str,
    node_name: str,
    host_ip: str | None,
    options: tuple[str, ...],
    username: str | None,
    password: str | None,
    password_file: str | None,
    join_token: str | None,
    ca_fingerprint: str | None,
    ca_file: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Add this (empty) node to the cluster whose active node is at ACTIVE_ADDRESS.

    \b
    ACTIVE_ADDRESS is host, host:port or http://host:port of the active node's API (port
    default 8008); a standby's address works too, it names the active. This node's agent
    service must run (hacore agent run -c FILE).

    \b
    The node's agent asks the active for a join ticket, with the cluster's API admin
    credentials or with a single-use --token (hacore cluster nodes add NAME --host-ip ADDR
    prints it, with this command) that is valid only for this node name and address.
    The active refuses, and NOTHING changes on either node, when: this node is not empty (it
    holds a database or store data), the name is taken (by a member, a removed node, or a
    join in progress from elsewhere), this node runs another hacore version or other
    backends, or the credentials are wrong. An active that cannot be reached changes nothing
    either. Otherwise the active adds the node to its store (managed store) and lets it reach
    its database, and this node:
      1. joins the store (on failure it asks the active to forget it, and is empty again);
      2. starts its agent, which copies the database from the active (progress every second:
         bytes done and total, rate, time left) and follows it;
      3. returns once the node is a streaming standby.
    Each step is recorded in <data_dir>/cluster.json: an interrupted join resumes once the
    node is in the store, and rolls back to empty before that.

    \b
    TLS (tls.enabled, the default): before sending any credential, this node's agent
    fetches the CA certificate the active presents and accepts it only if it matches
    --ca-fingerprint (or --ca-file, or the CA in the CLI profile); from then on it talks
    to the active only over TLS pinned to that CA, hostname checked. A mismatch, a missing
    fingerprint, or a node whose tls.enabled differs is refused and changes nothing. The
    CA certificate and key then come inside the join ticket, and this node signs its own
    certificate with them (<data_dir>/pki/, keys 0600).

    \b
    The CLI profile is updated with the cluster's nodes, the credentials and the CA
    certificate.

    \b
    Only the node-local keys of --options take effect: a cluster-wide key (timing.*,
    failover.*, checks.*, replication.parameters.*) is kept in this node's configuration,
    but the cluster's value applies. The join warns for each one given another value than
    the cluster runs, with the hacore cluster config set command that changes it.

    \b
    With -o json, the progress goes to stderr as one JSON object a line (each step's change,
    with its began/ended seconds, and each clone report: done, total, rate in bytes/s, eta
    in seconds); stdout gets the result, with every step's timing.

    \b
    Exit status: 0 the node streams as a standby; 1 failed; 2 usage or configuration error;
    3 the active (or this node's agent) cannot be reached; 4 refused, nothing changed.

    \b
    Examples:
      hacore cluster join 10.0.0.1 --node-name manager-2 --host-ip 10.0.0.2 \\
          --token Xy7... --ca-fingerprint 3F:A2:...:9C
      HACORE_PASSWORD=S3cret hacore cluster join 10.0.0.1 --node-name manager-2 \\
          --username admin --ca-fingerprint 3F:A2:...:9C
      hacore cluster join 10.0.0.1:8008 --node-name manager-3 --host-ip 10.0.0.3
    """
    from hacore.config.options import parse_options

    if ca_fingerprint and ca_file:
        raise click.UsageError("give --ca-fingerprint or --ca-file, not both")
    warn_password_argument(ctx)
    password = password_from(password, password_file)
    path = profile_file(ctx)
    profile = load_profile(path)
    ca_certificate = _read_ca_file(ca_file) if ca_file else None
    if not ca_fingerprint and ca_certificate is None and profile is not None:
        ca_certificate = profile.ca_certificate
    if join_token:
        # the ticket is fetched with the token; the profile keeps its own credentials
        credentials = (JOIN_TOKEN_USER, join_token)
    else:
        if username is None or password is None:
            if profile is not None:
                username = username or profile.username
                password = password or profile.password
            elif username is not None:
                password = prompt_password(f"API password of {username}")
            if username is None or password is None:
                raise UsageProblem(
                    "give a join token (--token, from hacore cluster nodes add on a member), or "
                    f"the cluster's API credentials with --username and ${PASSWORD_ENV} (or "
                    f"--password-file), or a CLI profile that holds them (none at {path})"
                )
        credentials = (username, password)
    config = local_config(config_path)
    overrides = parse_options(list(options)) if options else {}
    token = bootstrap_token(config, config_path)
    url = local_url(config)
    candidates = [(BOOTSTRAP_USER, token)]
    if not join_token:
        candidates.append(credentials)
    elif profile is not None and profile.cluster:
        candidates.append(profile.auth)
    local = LocalApi(url, candidates, timeout=30.0, ca_file=ca_cert_file(config.node.data_dir))
    body = {
        "action": "join",
        "active": active_address,
        "node_name": node_name,
        "host_ip": host_ip,
        "options": overrides,
        "username": credentials[0],
        "password": credentials[1],
        "ca_fingerprint": ca_fingerprint,
        "ca_certificate": ca_certificate,
    }
    answer = local.call(lambda c: c.join_ticket(body), timeout=ACCEPT_TIMEOUT)
    threading.Thread(target=_find_keyring, name="keyring", daemon=True).start()
    echo = echo_progress(as_json)
    if echo:
        echo(f"joining cluster {answer['cluster']} through {answer['active']} as {node_name}")
    events = _json_event if as_json else None
    view: dict[str, Any] = {}
    try:
        op, view = follow_view(local, timeout=timeout, echo=echo, events=events)
        local.member_now()
    except AuthenticationError:
        if not join_token:
            raise
        # the agent drops the bootstrap token only once the node is a member
        op = {"result": f"{node_name} joined cluster {answer['cluster']}", "elapsed": None}
    members = [(str(m["name"]), str(m["api_url"])) for m in answer.get("members", [])]
    members = members_of(view) or members
    own = next((u for n, u in members if n == node_name), local.url)
    members = [*(m for m in members if m[0] != node_name), (node_name, own)]
    ca_pem = ca_certificate_pem(config.node.data_dir)
    saved: Path | None = path
    if not join_token:
        user, secret = credentials
    elif profile is not None and profile.cluster == str(answer["cluster"]):
        user, secret = profile.auth
    else:
        saved = None
    if saved is not None:
        save_profile(
            path,
            Profile(str(answer["cluster"]), user, secret, ca_certificate=ca_pem).with_nodes(
                members, active=str(answer["active"])
            ),
        )
    ignored = _ignored_options(local, overrides)
    result = {
        "cluster": answer["cluster"],
        "node": node_name,
        "active": answer["active"],
        "profile": str(saved) if saved is not None else None,
        "elapsed": op.get("elapsed"),
        "steps": op.get("steps"),
        "clone": op.get("clone"),
        "ca_fingerprint": answer.get("ca_fingerprint"),
        "cluster_wide_options": [attrs.asdict(item) for item in ignored],
    }

    def text() -> None:
        took = f" (took {op['elapsed']:.1f} s)" if op.get("elapsed") is not None else ""
        click.echo(f"{op.get('result')}{took}")
        if saved is None:
            click.echo(
                "no CLI profile written: a join token carries no API credentials; the cluster "
                "commands work from a machine whose profile holds them"
            )

    emit(as_json, result, text)
    for item in ignored:
        click.echo(_ignored_warning(item), err=True)


def _find_keyring() -> None:
    """Find the keyring backends while the join runs: the profile is saved at its end, and
    finding them (every installed backend imported and tried) then cost a busy machine a
    second after the node already streamed. They are found once per process; the search
    starts once the join is asked for, as before it took the CPU the CLI needs to ask."""
    with contextlib.suppress(Exception):
        profile_keyring.usable_backend()


def _json_event(event: dict[str, Any]) -> None:
    """``--json``: the progress as one JSON object a line on stderr (stdout keeps the one
    result document)."""
    click.echo(json.dumps(event, sort_keys=True), err=True)


def _ignored_options(local: LocalApi, overrides: dict[str, Any]) -> list[IgnoredOption]:
    """The cluster-wide keys of ``--options`` that the cluster runs with another value.

    The join keeps them in this node's configuration, but every agent runs the store's
    cluster-wide settings: said here, or the operator believes the option took effect. The
    settings are read through this node's agent, a member by now; when they cannot be read
    every cluster-wide key given is named."""
    if not ignored_options(None, overrides):
        return []
    settings: ClusterWide | None = None
    with contextlib.suppress(ApiError, ApiUnreachableError, ConfigError):
        data = local.call(lambda c: c.cluster_config())
        settings = from_mapping(data.get("settings"), context="the settings key")
    return ignored_options(settings, overrides)


def _ignored_warning(item: IgnoredOption) -> str:
    given = _scalar(item.given)
    if item.cluster is not None:
        runs = f"the cluster runs {_scalar(item.cluster)}"
    else:
        runs = "the cluster's value applies (hacore cluster config show)"
    return (
        f"warning: --options {item.option}={given} does not take effect: it is a cluster-wide "
        f"setting and {runs}. It stays in this node's configuration; to change it on every "
        f"node: hacore cluster config set {item.key}={given}"
    )


def _scalar(value: object) -> str:
    """A value as ``config set`` reads it back (YAML): text as is, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _read_ca_file(path: str) -> str:
    from hacore import pki

    cert = pki.load_ca_certificate(Path(path))
    return pki.pem.cert_pem(cert).decode("ascii")
