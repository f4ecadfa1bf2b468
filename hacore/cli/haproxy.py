"""``hacore cluster haproxy-config``: an HAProxy configuration for the cluster's members."""

from __future__ import annotations

import os
import socket
import ssl
from pathlib import Path

import attrs
import click
from cryptography import x509

from hacore.cli.common import reach
from hacore.cli.exit_codes import UsageProblem
from hacore.client.profile import Profile
from hacore.cluster.haproxy import (
    CHECK_PATHS,
    HaproxyOptions,
    HaproxyServer,
    pick_dns_name,
    render,
    servers_of,
    tls_of,
)

DEFAULT_CA_FILE = "/etc/hacore/ca.crt"
#: seconds each member has to show its certificate
CERT_TIMEOUT = 5.0


@click.command("haproxy-config")
@click.option(
    "--bind",
    default=":5432",
    show_default=True,
    help="Where HAProxy listens for PostgreSQL clients (HAProxy's bind syntax).",
)
@click.option(
    "--check-path",
    type=click.Choice(CHECK_PATHS),
    default="/status",
    show_default=True,
    help="The agent probe HAProxy checks (200 on the active only).",
)
@click.option(
    "--ca-file",
    default=DEFAULT_CA_FILE,
    show_default=True,
    help="Where HAProxy reads the cluster CA certificate (checks over TLS).",
)
@click.option(
    "--write-ca",
    is_flag=True,
    help="Also write the profile's cluster CA certificate to --ca-file.",
)
@click.option(
    "--probe-user",
    default=None,
    help="API user for the checks, when the nodes set api.status_requires_auth.",
)
@click.option(
    "--probe-password",
    envvar="HACORE_PROBE_PASSWORD",
    default=None,
    help="Its password (also $HACORE_PROBE_PASSWORD); goes into the file as a Basic header.",
)
@click.option("--inter", type=float, default=2.0, show_default=True, help="Seconds between checks.")
@click.option("--fall", type=int, default=2, show_default=True, help="Failed checks to mark down.")
@click.option("--rise", type=int, default=2, show_default=True, help="Good checks to mark up.")
@click.option("--stats-socket", default=None, help="Add an admin stats socket at this path.")
@click.option(
    "--manager-port",
    type=int,
    default=None,
    help="Also pass the manager's own traffic (this port on every node) to the active.",
)
@click.option(
    "--manager-bind",
    default=None,
    help="Where HAProxy listens for the manager's clients (default: :MANAGER_PORT).",
)
@click.pass_context
def cluster_haproxy_config(
    ctx: click.Context,
    bind: str,
    check_path: str,
    ca_file: str,
    write_ca: bool,
    probe_user: str | None,
    probe_password: str | None,
    inter: float,
    fall: int,
    rise: int,
    stats_socket: str | None,
    manager_port: int | None,
    manager_bind: str | None,
) -> None:
    """Print an HAProxy configuration that sends PostgreSQL clients to the active node.

    \b
    Reads the members from the cluster (through the CLI profile): one server per member at
    its database address, checked on its agent's API port with GET /status, which answers
    200 on the active only; --manager-port adds the same for the manager's own port. With
    TLS (the default) the checks verify the agent's certificate against the cluster CA
    (--ca-file; --write-ca puts the profile's CA there), and each server's certificate is
    checked for a DNS name (verifyhost) when every member has one: its node.host, or one of
    its node.dns_names, read from the certificate the member serves (an IP address cannot be
    checked that way). A server marked down has its connections cut
    (on-marked-down shutdown-sessions). Print it again after a join or a removal. Changes
    nothing in the cluster.

    \b
    Exit status: 0; 2 when the options do not fit the cluster; 3 when no node answers.

    \b
    Examples:
      hacore cluster haproxy-config --write-ca > /etc/haproxy/haproxy.cfg
      HACORE_PROBE_PASSWORD=... hacore cluster haproxy-config --probe-user probe > haproxy.cfg
    """
    if (probe_user is None) != (probe_password is None):
        raise UsageProblem("--probe-user and --probe-password go together")
    if manager_bind is not None and manager_port is None:
        raise UsageProblem("--manager-bind needs --manager-port")
    profile, data, _ = reach(ctx, need_active=False)
    tls = tls_of(data)
    servers, skipped = servers_of(data)
    options = HaproxyOptions(
        cluster=str(data.get("cluster") or profile.cluster),
        bind=bind,
        check_path=check_path,
        ca_file=ca_file if tls else None,
        probe_auth=(probe_user, probe_password)
        if probe_user is not None and probe_password is not None
        else None,
        inter=inter,
        fall=fall,
        rise=rise,
        stats_socket=stats_socket,
        manager_port=manager_port,
        manager_bind=manager_bind,
    )
    if options.ca_file is not None:
        servers = [with_certificate_name(profile, s) for s in servers]
    text = render(options, servers, skipped)
    if write_ca:
        if not tls or profile.ca_certificate is None:
            raise UsageProblem("--write-ca: the cluster runs without TLS or the profile has no CA")
        path = Path(ca_file)
        path.write_text(profile.ca_certificate)
        os.chmod(path, 0o644)
    click.echo(text, nl=False)


def with_certificate_name(profile: Profile, server: HaproxyServer) -> HaproxyServer:
    """``server`` with a DNS name its certificate carries, for ``verifyhost``: the name HAProxy
    will check is read from what the member serves, not from a setting that may not have
    reached its certificate yet. A member that cannot be reached keeps none."""
    context = profile.verify()
    if not isinstance(context, ssl.SSLContext):
        return server
    try:
        with (
            socket.create_connection((server.host, server.api_port), CERT_TIMEOUT) as raw,
            context.wrap_socket(raw, server_hostname=server.host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError):
        return server
    if der is None:
        return server
    try:
        alt = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        )
    except (ValueError, x509.ExtensionNotFound):
        return server
    names = alt.value.get_values_for_type(x509.DNSName)
    return attrs.evolve(server, dns_name=pick_dns_name(server.host, names))
