"""The HAProxy configuration that ``hacore cluster haproxy-config`` prints.

HAProxy sends PostgreSQL clients to whichever node is active: one TCP server per member (its
database address), each checked over HTTP on the member's agent API, where ``/status``
answers 200 on the active only. The text is built here from the cluster view alone (pure), so
the CLI stays a thin edge and the tests can check the text without a cluster.

HAProxy's ``verifyhost`` matches DNS names only, and a node certificate names ``node.host``
as given (an IP address, a SAN HAProxy cannot match, or a DNS name) plus the node's
``node.dns_names``. So the check always verifies the chain against the cluster CA (``verify
required ca-file``), and adds ``verifyhost NAME`` per server only when every member has a DNS
name: its host, or one its certificate carries (the CLI reads it from the certificate the
member serves). With one member without a name, that server would be marked down.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import attrs

from hacore.backends.processes import host_port
from hacore.errors import HacoreError

#: the probe paths that answer 200 on the active only
CHECK_PATHS = ("/status", "/api/v3.1/status")
_NAME = re.compile(r"[^A-Za-z0-9_.:-]")


@attrs.frozen
class HaproxyServer:
    """One member as HAProxy sees it: where its database listens, where its agent answers."""

    name: str
    #: the node's address (``node.host``): where the manager's own port is reached
    host: str
    db_host: str
    db_port: int
    api_port: int
    #: a DNS name the member's certificate carries (from ``node.dns_names``), None: unknown
    dns_name: str | None = None

    @property
    def check_name(self) -> str | None:
        """The name ``verifyhost`` checks: the certificate's DNS name, else a DNS-name host."""
        return self.dns_name or (self.host if _is_name(self.host) else None)


@attrs.frozen
class HaproxyOptions:
    cluster: str
    bind: str = ":5432"
    check_path: str = "/status"
    #: None: the checks go in plain HTTP (a cluster with TLS off)
    ca_file: str | None = None
    #: (user, password) when the nodes run with ``api.status_requires_auth``
    probe_auth: tuple[str, str] | None = None
    inter: float = 2.0
    fall: int = 2
    rise: int = 2
    stats_socket: str | None = None
    #: the manager's own port on every node, to pass its traffic (HTTPS...) to the active too
    manager_port: int | None = None
    manager_bind: str | None = None


def servers_of(cluster_view: Mapping[str, Any]) -> tuple[list[HaproxyServer], list[str]]:
    """The members of a ``GET /cluster`` answer that HAProxy can use, and a note for each one
    it cannot (a record without a database address: a node that never published one)."""
    servers, skipped = [], []
    for member in cluster_view.get("members", []):
        name = str(member.get("name") or "")
        where = (member.get("extra") or {}).get("replication") or {}
        api = urlsplit(str(member.get("api_url") or ""))
        if not name or not isinstance(where.get("port"), int) or api.port is None:
            skipped.append(f"{name or '?'}: no database or API address in its record")
            continue
        servers.append(
            HaproxyServer(
                name=name,
                host=str(member.get("host") or where.get("host")),
                db_host=str(where.get("host") or member.get("host")),
                db_port=int(where["port"]),
                api_port=api.port,
            )
        )
    return sorted(servers, key=lambda s: s.name), skipped


def tls_of(cluster_view: Mapping[str, Any]) -> bool:
    """Whether the agents serve their API over HTTPS (then the checks use TLS too)."""
    urls = [str(m.get("api_url") or "") for m in cluster_view.get("members", [])]
    return any(u.startswith("https://") for u in urls)


def render(
    options: HaproxyOptions, servers: Sequence[HaproxyServer], notes: Sequence[str] = ()
) -> str:
    """The whole configuration file."""
    if not servers:
        raise HacoreError("the cluster view lists no member with a database address")
    if options.check_path not in CHECK_PATHS:
        raise HacoreError(f"the check path must be one of {', '.join(CHECK_PATHS)}")
    if options.probe_auth is not None and options.ca_file is None:
        raise HacoreError(
            "probe credentials need TLS checks: the agents refuse credentials in plain HTTP"
        )
    section = _NAME.sub("_", options.cluster) or "hacore"
    send = f"http-check send meth GET uri {options.check_path}"
    if options.probe_auth is not None:
        user, password = options.probe_auth
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        send += f' hdr Authorization "Basic {token}"'
    inter = _seconds(options.inter)
    defaults = [
        f"inter {inter}",
        f"fastinter {_seconds(max(options.inter / 2, 0.5))}",
        f"downinter {inter}",
        f"rise {options.rise}",
        f"fall {options.fall}",
        "on-marked-down shutdown-sessions",
    ]
    if options.ca_file is not None:
        defaults.append(f"check-ssl verify required ca-file {options.ca_file}")
    unnamed = [s.name for s in servers if s.check_name is None]
    verify_names = options.ca_file is not None and not unnamed
    lines = [
        f"# HAProxy in front of hacore cluster {options.cluster}: PostgreSQL clients reach the",
        f"# active node only (its agent's {options.check_path} answers 200, the others 503).",
        "# Printed by `hacore cluster haproxy-config`; print it again after a join or removal.",
        *(f"# skipped {note}" for note in notes),
        *([_unchecked(unnamed)] if options.ca_file is not None and unnamed else []),
        "",
        "global",
        "    maxconn 4096",
    ]
    if options.stats_socket:
        lines.append(f"    stats socket {options.stats_socket} mode 600 level admin")
    lines += [
        "",
        "defaults",
        "    mode tcp",
        "    timeout connect 5s",
        "    timeout client 1h",
        "    timeout server 1h",
        "    timeout check 2s",
    ]
    check = [
        "    option httpchk",
        f"    {send}",
        "    http-check expect status 200",
        f"    default-server {' '.join(defaults)}",
    ]
    lines += _proxy(
        f"{section}_postgresql",
        options.bind,
        ["    option tcpka", *check],
        [(s, s.db_host, s.db_port) for s in servers],
        verify_names=verify_names,
    )
    if options.manager_port is not None:
        lines += _proxy(
            f"{section}_manager",
            options.manager_bind or f":{options.manager_port}",
            check,
            [(s, s.host, options.manager_port) for s in servers],
            verify_names=verify_names,
        )
    lines.append("")
    return "\n".join(lines)


def _proxy(
    name: str,
    bind: str,
    settings: list[str],
    targets: list[tuple[HaproxyServer, str, int]],
    *,
    verify_names: bool = False,
) -> list[str]:
    """A frontend and its backend: every member a server, checked on its agent's port (and,
    with ``verify_names``, its certificate checked for the member's host name)."""
    return [
        "",
        f"frontend {name}",
        f"    bind {bind}",
        f"    default_backend {name}_active",
        "",
        f"backend {name}_active",
        *settings,
        *(
            f"    server {_NAME.sub('_', s.name)} {host_port(host, port)} check port {s.api_port}"
            + (f" verifyhost {s.check_name}" if verify_names else "")
            for s, host, port in targets
        ),
    ]


def _unchecked(unnamed: Sequence[str]) -> str:
    return f"# certificate names not checked: no DNS name for {', '.join(unnamed)} (node.dns_names)"


def pick_dns_name(host: str, names: Sequence[str]) -> str | None:
    """The name of ``names`` (a certificate's DNS names) that ``verifyhost`` should check:
    ``host`` itself when it is one of them, else the first that is not ``localhost`` (every
    node certificate names it)."""
    wanted = [n.lower().rstrip(".") for n in names if n.lower() != "localhost"]
    if host.lower().rstrip(".") in wanted:
        return host
    return wanted[0] if wanted else None


def _is_name(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return bool(host)
    return False


def _seconds(value: float) -> str:
    ms = round(value * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"
