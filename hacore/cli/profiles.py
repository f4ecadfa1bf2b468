"""``hacore cluster profile create``: a CLI profile on a machine that is not a member;
``hacore cluster profile show``: what a profile holds, and where its password is.

An administrator's workstation runs the cluster commands without being a node: it needs the
profile that ``cluster start`` and ``join`` write on the members (node list, API credentials,
the cluster CA). Trust is bootstrapped the way a join does it: the CA certificate the node
presents is fetched without credentials and accepted only if it has the fingerprint the
operator copied from ``cluster start`` or ``hacore cluster ca``; only then does the password
travel, over TLS pinned to that CA. The password never has to be on the command line.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import click

from hacore import pki
from hacore.api.client import ApiClient
from hacore.api.errors import ApiError, ConflictError
from hacore.cli.common import (
    PASSWORD_ENV,
    emit,
    json_option,
    password_file_option,
    password_from,
    profile_file,
    prompt_password,
)
from hacore.cli.exit_codes import UsageProblem
from hacore.client.profile import (
    Profile,
    load_profile,
    members_of,
    password_location,
    require_profile,
    save_profile,
)
from hacore.cluster.join import presented_ca, with_scheme
from hacore.errors import HacoreError

#: seconds the node gets to answer the authenticated ``GET /cluster``
ANSWER_TIMEOUT = 10.0
_NOTHING_SENT = "no credential was sent, no profile written"


@click.group("profile")
def profile() -> None:
    """The CLI profile of this machine: which cluster, its nodes, the API credentials.

    \b
    cluster start and join write it on the members; "profile create" writes it on a machine
    that is not a member (an administrator's workstation).
    """


@profile.command("create")
@click.argument("address")
@click.option(
    "--ca-fingerprint",
    default=None,
    help="SHA-256 fingerprint of the cluster CA (cluster start printed it; hacore cluster ca "
    "prints it on any member).",
)
@click.option(
    "--ca-file",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="The cluster CA's certificate (PEM), instead of --ca-fingerprint.",
)
@click.option("--username", default="admin", show_default=True, help="The cluster's API user.")
@password_file_option
@click.option("--force", is_flag=True, help="Replace an existing profile of another cluster.")
@json_option
@click.pass_context
def profile_create(
    ctx: click.Context,
    address: str,
    ca_fingerprint: str | None,
    ca_file: str | None,
    username: str,
    password_file: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """Write the CLI profile for the cluster a node at ADDRESS belongs to.

    \b
    ADDRESS is host, host:port or https://host:port of any member's API (port default
    8008). Before any credential is sent, the CA certificate the node presents is compared
    with --ca-fingerprint (or --ca-file); a mismatch, or a node that does not serve its API
    over TLS, is refused. Then the credentials are checked with the node, and the profile
    (cluster name, every member's API address, the credentials, the CA certificate) is
    written with mode 0600 to hacore cluster --profile FILE, $HACORE_PROFILE, else
    ~/.hacore/profile.json.
    Running it again for the same cluster refreshes the profile; a profile of another
    cluster is replaced only with --force.

    \b
    The password comes from $HACORE_PASSWORD, --password-file (or $HACORE_PASSWORD_FILE),
    else a prompt on a terminal; there is no --password option.

    \b
    Exit status: 0 written; 2 usage error (no fingerprint, no password, another cluster's
    profile without --force); 3 the node cannot be reached; 4 refused (fingerprint
    mismatch, no TLS, wrong credentials).

    \b
    Example:
      hacore cluster profile create 10.0.0.1 --ca-fingerprint 3F:A2:...:9C --username admin
    """
    if bool(ca_fingerprint) == bool(ca_file):
        raise click.UsageError("give the cluster CA: --ca-fingerprint FP or --ca-file ca.crt")
    path = profile_file(ctx)
    expected = ca_fingerprint or pki.fingerprint(pki.load_ca_certificate(Path(str(ca_file))))
    url = with_scheme(address, True)
    ca_pem = _trusted_ca_pem(url, address, expected)
    password = password_from(os.environ.get(PASSWORD_ENV) or None, password_file)
    if password is None:
        password = prompt_password(f"API password of {username}")
    if password is None:
        raise UsageProblem(
            f"no API password: set ${PASSWORD_ENV}, give --password-file, or run this at a "
            "terminal to be asked"
        )
    asked = Profile("", username, password, ((address, url),), ca_certificate=ca_pem)
    with asked.client(url, timeout=ANSWER_TIMEOUT) as client:
        data = client.cluster()
    cluster = str(data.get("cluster"))
    previous = load_profile(path)
    if previous is not None and previous.cluster != cluster and not force:
        raise UsageProblem(
            f"{path} is the profile of cluster {previous.cluster}, not {cluster}: give "
            "another --profile (or $HACORE_PROFILE), or --force to replace it"
        )
    members = members_of(data) or [(str(data.get("node") or address), url)]
    leader = data.get("leader")
    written = Profile(cluster, username, password, ca_certificate=ca_pem).with_nodes(
        members, active=leader if isinstance(leader, str) else None
    )
    stored_in = save_profile(path, written)
    result = {
        "cluster": cluster,
        "profile": str(path),
        "username": username,
        "password_stored_in": stored_in,
        "nodes": [{"name": n, "api_url": u} for n, u in written.nodes],
        "active": leader,
        "ca_fingerprint": pki.fingerprint(
            pki.pem.parse_certificate(ca_pem.encode("ascii"), "the cluster CA")
        ),
    }
    emit(
        as_json,
        result,
        lambda: click.echo(
            f"CLI profile for cluster {cluster} ({len(written.nodes)} nodes, user {username}) "
            f"written to {path}; the password is in {stored_in}"
        ),
    )


@profile.command("show")
@json_option
@click.pass_context
def profile_show(ctx: click.Context, as_json: bool) -> None:
    """Show the CLI profile: cluster, user, nodes, and where the password is kept (the
    keyring, or the 0600 profile file). The password itself is never shown.

    \b
    Exit codes: 0 shown; 2 no profile (or it cannot be read).
    """
    path = profile_file(ctx)
    try:
        loaded = require_profile(path)
    except HacoreError as err:
        raise UsageProblem(str(err)) from None
    ca = loaded.ca_certificate
    result = {
        "cluster": loaded.cluster,
        "profile": str(path),
        "username": loaded.username,
        "password_stored_in": password_location(path),
        "nodes": [{"name": n, "api_url": u} for n, u in loaded.nodes],
        "ca_fingerprint": (
            pki.fingerprint(pki.pem.parse_certificate(ca.encode("ascii"), "the cluster CA"))
            if ca
            else None
        ),
    }

    def human() -> None:
        click.echo(f"profile:  {path}")
        click.echo(f"cluster:  {loaded.cluster}")
        click.echo(f"user:     {loaded.username} (password in {result['password_stored_in']})")
        for name, url in loaded.nodes:
            click.echo(f"node:     {name} {url}")
        if result["ca_fingerprint"]:
            click.echo(f"CA:       {result['ca_fingerprint']}")

    emit(as_json, result, human)


def _trusted_ca_pem(url: str, address: str, expected: str) -> str:
    """The CA certificate the node at ``url`` presents, as PEM, if it has the ``expected``
    fingerprint."""
    presented = presented_ca(url)
    if presented is None:
        # nothing answers at all: unreachable, not refused
        plain = ApiClient(with_scheme(address, False), None, ANSWER_TIMEOUT)
        with plain, contextlib.suppress(ApiError):
            plain.status()
        raise ConflictError(
            f"{url} does not serve its API over TLS (a cluster with tls.enabled: false, or not "
            f"a member): the password would travel in clear; {_NOTHING_SENT}"
        )
    try:
        cert = pki.trust_ca_certificate(str(presented.get("ca_certificate") or ""), expected)
    except pki.TlsMaterialError as err:
        raise ConflictError(f"{url} is not trusted: {err}; {_NOTHING_SENT}") from None
    return pki.pem.cert_pem(cert).decode("ascii")
