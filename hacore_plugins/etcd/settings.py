"""The ``consensus`` settings of the etcd backend, checked before any connection is tried.

TLS files named in the settings win: an external etcd may have a CA of its own. When they are
absent, a node running with TLS reaches the store with its own certificate and the cluster
CA, as it reaches its managed etcd.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import attrs

from hacore.backends.client_tls import ClientTls
from hacore.backends.records import TlsFiles
from hacore.config.check import Section, backend_settings
from hacore.errors import ConfigError

#: TLS file settings, and the names Patroni's ``etcd3`` section gives them
TLS_KEYS = {"ca_file": "cacert", "cert_file": "cert", "key_file": "key"}
KNOWN = ("endpoints", "username", "password", *TLS_KEYS, *TLS_KEYS.values())

DEFAULT_BINARY = "/usr/bin/etcd"
#: the settings of the etcd member hacore runs (``managed: true``)
MANAGED_KEYS = (
    "client_port",
    "peer_port",
    "heartbeat_interval",
    "election_timeout",
    "start_timeout",
    "etcd_binary",
)
#: etcd refuses to start with a longer election timeout
MAX_ELECTION_MS = 50_000


@attrs.frozen
class EtcdManagedSettings:
    """The etcd member hacore runs: its two ports, its Raft timing (ms), its program."""

    client_port: int = 2379
    peer_port: int = 2380
    heartbeat_ms: int = 100
    election_ms: int = 1000
    #: seconds to wait for the member to serve
    start_timeout: float = 60.0
    binary: str = DEFAULT_BINARY

    @classmethod
    def parse(cls, settings: Mapping[str, Any]) -> EtcdManagedSettings:
        """Every problem at once; the ones etcd itself would only report when it fails to start
        (a shared port, an election timeout under 5 heartbeats) included."""
        sec = backend_settings("consensus", settings, MANAGED_KEYS)
        default = cls()
        before = len(sec.problems)
        client_port = sec.port("client_port", default.client_port)
        peer_port = sec.port("peer_port", default.peer_port)
        if len(sec.problems) == before and client_port == peer_port:
            sec.problem(
                f"consensus.client_port and consensus.peer_port are both {client_port}: "
                "etcd needs a port for clients and another for its peers"
            )
        before = len(sec.problems)
        ms = "a number of milliseconds"
        heartbeat = sec.integer("heartbeat_interval", default.heartbeat_ms, low=1, what=ms)
        election = sec.integer(
            "election_timeout", default.election_ms, low=1, high=MAX_ELECTION_MS, what=ms
        )
        if len(sec.problems) == before and election < 5 * heartbeat:
            sec.problem(
                f"consensus.election_timeout ({election} ms) must be at least 5 times "
                f"consensus.heartbeat_interval ({heartbeat} ms): etcd refuses to start otherwise"
            )
        start_timeout = sec.number(
            "start_timeout", default.start_timeout, what="a number of seconds > 0"
        )
        binary = sec.string("etcd_binary", default.binary, what="the path of the etcd program")
        sec.done()
        return cls(client_port, peer_port, heartbeat, election, start_timeout, binary)


def _endpoint(raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError(f"etcd endpoint {raw!r} must be a URL such as http://10.0.0.1:2379")
    url = raw.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"etcd endpoint {raw!r} must be a URL such as http://10.0.0.1:2379")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigError(f"etcd endpoint {raw!r} has an invalid port") from None
    if parts.path or parts.query:
        raise ConfigError(f"etcd endpoint {raw!r} must not have a path: give scheme://host:port")
    return url


@attrs.frozen
class EtcdSettings:
    endpoints: tuple[str, ...]
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    tls: ClientTls = attrs.field(factory=ClientTls)

    @classmethod
    def parse(cls, settings: Mapping[str, Any], node_tls: TlsFiles | None = None) -> EtcdSettings:
        """``node_tls`` (the node's certificate and cluster CA) applies unless the settings
        name a CA of their own. Every problem at once, one line each."""
        sec = backend_settings("consensus", settings, KNOWN)
        endpoints = _endpoints(sec)
        username = sec.optional_string("username", what="a user name")
        password = sec.optional_secret("password", what="a non-empty string")
        if (username is None) != (password is None):
            sec.problem("consensus.username and consensus.password must be given together")
        files = _tls_files(sec)
        sec.done()
        if files["ca_file"] is None and node_tls is not None:
            return cls(endpoints, username, password, ClientTls.from_node(node_tls))
        return cls(endpoints, username, password, ClientTls(**files))


def _endpoints(sec: Section) -> tuple[str, ...]:
    raw = sec.raw.get("endpoints")
    if isinstance(raw, str):
        raw = [part for part in raw.split(",") if part.strip()]
    if not isinstance(raw, list | tuple) or not raw:
        sec.problem(
            "etcd needs 'endpoints': a list of client URLs such as ['http://10.0.0.1:2379']"
        )
        return ()
    before = len(sec.problems)
    endpoints = tuple(sec.attempt(partial(_endpoint, entry), "") for entry in raw)
    if len(sec.problems) == before and len(set(endpoints)) != len(endpoints):
        sec.problem(f"etcd endpoints list the same URL twice: {', '.join(endpoints)}")
    return endpoints


def _tls_files(sec: Section) -> dict[str, str | None]:
    files: dict[str, str | None] = {}
    for name, alias in TLS_KEYS.items():
        path = sec.optional_string(name, what="a file path")
        other = sec.optional_string(alias, what="a file path")
        if path is not None and other is not None and path != other:
            sec.problem(f"consensus.{name} and consensus.{alias} name different files")
        key, path = (name, path) if path is not None else (alias, other)
        if path is not None and not os.path.isfile(path):
            sec.problem(f"consensus.{key}: no such file {path}")
        files[name] = path
    if files["key_file"] is not None and files["cert_file"] is None:
        sec.problem("consensus.key_file needs consensus.cert_file")
    if files["ca_file"] is None and files["cert_file"] is not None:
        sec.problem("consensus.cert_file needs consensus.ca_file (the CA that signed the servers)")
    return files
