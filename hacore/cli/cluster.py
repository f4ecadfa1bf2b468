"""The ``hacore cluster`` group, and its ``start`` and ``ca`` commands (``join`` is in
:mod:`hacore.cli.cluster_join`).

The group's other commands live in modules of their own and are attached to it by
:mod:`hacore.cli`. Errors hacore raises on purpose are printed by :mod:`hacore.cli` as one
``error:`` line, with the exit status of :mod:`hacore.cli.exit_codes`.
"""

from __future__ import annotations

import contextlib
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import click

from hacore.agent.tls_paths import ca_cert_file
from hacore.api.errors import ApiError
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
    remove_profile,
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
      2. record: writes the cluster record (name, hacore version, creation time) to it,
         then the cluster-wide settings (from node.yaml; from the snapshot on a node
         restored by hacore snapshot restore);
      3. database: bootstraps PostgreSQL with a new, random replication password;
      4. names this node the first active and starts the agent, which campaigns and
         promotes; the command returns once this node's /status answers 200.
    Each step is recorded in <data_dir>/cluster.json: run the command again after a failure
    to resume where it stopped.

    \b
    The API credentials are created here: --username with $HACORE_PASSWORD or
    --password-file, or a random password. Only
    a hash goes to the agents; the password is written to the CLI profile (0600) and printed
    once, at the end. The profile is written before the request (so an interrupted command
    keeps the password of a start the agent finishes) and follows the node to HTTPS; a
    start that fails leaves the previous profile in place.

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
    # Saved first: the password must not be lost if this command dies before the end. Kept
    # in step with the node from then on (_StartProfile), given back when the start fails.
    name = node_name or config.node.name
    save_profile(path, Profile(config.cluster.name, username, password, ((name, url),)))
    body = {
        "node_name": node_name,
        "host_ip": host_ip,
        "options": overrides,
        "username": username,
        "password": password,
    }
    kept = _StartProfile(
        path, Profile(config.cluster.name, username, password), name, local, config
    )
    with _signals_interrupt():
        try:
            answer = local.call(lambda c: c.start_cluster(body), timeout=ACCEPT_TIMEOUT)
        except BaseException as err:
            # an answer lost after the agent took the start: the start goes on, keep it
            kept.after_interruption(err, previous, accepted=False)
            raise
        cluster_name = str(answer.get("cluster"))
        kept.profile = Profile(cluster_name, username, password)
        kept.node = str(answer["node"])
        kept.save()
        echo = echo_progress(as_json)
        if echo:
            verb = "resuming the start of" if answer.get("resumed") else "starting"
            echo(f"{verb} cluster {cluster_name} on node {answer['node']} ({url})")
        try:
            op = follow_operation(local, timeout=timeout, echo=echo, on_poll=kept.once_secure)
        except BaseException as err:
            failed = kept.after_interruption(err, previous)
            if failed is not None:
                raise failed from None
            raise
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


class _StartProfile:
    """The CLI profile while a start runs: it must hold the password from the moment the
    agent took the start (a start the agent finishes by itself keeps it), and always be one
    that works. The agent serves HTTPS only once the node is a member: the profile gets the
    ``https`` URL and the cluster CA as soon as the node has its CA (after each poll), and
    again on any interruption (Ctrl-C, SIGTERM, a timeout); a start that failed (the
    cluster never formed) leaves no profile of it: the previous one is put back."""

    def __init__(
        self, path: Path, profile: Profile, node: str, local: LocalApi, config: NodeConfig
    ) -> None:
        self.path, self.profile, self.node, self.local = path, profile, node, local
        self.data_dir = config.node.data_dir
        self.secure = False

    def save(self) -> None:
        """The profile as the node can be reached now: ``https`` and the CA once it has one."""
        ca = ca_certificate_pem(self.data_dir)
        save_profile(
            self.path,
            Profile(
                self.profile.cluster,
                self.profile.username,
                self.profile.password,
                ((self.node, self.local.url),),
                ca_certificate=ca,
            ),
        )
        self.secure = ca is not None

    def once_secure(self) -> None:
        if not self.secure and ca_cert_file(self.data_dir).exists():
            self.save()

    def after_interruption(
        self, err: BaseException, previous: Profile | None, *, accepted: bool = True
    ) -> HacoreError | None:
        """The command ends before the start did: keep the profile for a start that goes on
        in the agent, give the previous one back for one that failed or never began (then,
        for a failure, the error to raise instead of ``err``, saying so)."""
        state = _start_state(self.local)
        if accepted:
            going_on = state != "failed"
        else:  # a refusal is an answer; without one, a start running now is this one
            going_on = not isinstance(err, ApiError) and state == "running"
        if going_on:
            with contextlib.suppress(HacoreError, OSError):
                self.save()
            return None
        _give_back(self.path, previous)
        if accepted and isinstance(err, HacoreError):
            return HacoreError(
                f"{err}; no CLI profile was kept for it: run hacore cluster start again, it "
                "resumes where the start stopped"
            )
        return None


def _start_state(local: LocalApi) -> str | None:
    """What the local agent says of its start: running, done, failed; None when it does
    not answer or runs no start."""
    try:
        op = local.call(lambda c: c.cluster(), timeout=5.0).get("operation")
    except (HacoreError, OSError):
        return None
    if not isinstance(op, dict) or op.get("operation") != "start":
        return None
    state = op.get("state")
    return state if isinstance(state, str) else None


def _give_back(path: Path, previous: Profile | None) -> None:
    if previous is not None:
        save_profile(path, previous)
    elif path.exists():
        remove_profile(path)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP end the command as Ctrl-C does, so that its clean-up runs (the
    profile); left alone where signals cannot be handled (not the main thread)."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    saved = {}
    with contextlib.suppress(ValueError):
        for sig in (signal.SIGTERM, signal.SIGHUP):
            saved[sig] = signal.signal(sig, interrupt)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


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
