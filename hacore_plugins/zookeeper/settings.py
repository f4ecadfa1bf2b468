"""The ``consensus`` settings of the ZooKeeper backend, checked before any connection.

::

    consensus:
      backend: zookeeper
      settings:
        hosts: ["10.0.0.1:2181", "10.0.0.2:2181", "10.0.0.3:2181"]
        auth: {user: hacore, password: s3cret}     # optional digest credentials
        ca_file: /etc/zookeeper/ca.pem            # optional: TLS, trusting this CA alone
        cert_file: /etc/zookeeper/client.pem      # optional client certificate and key
        key_file: /etc/zookeeper/client.key
        use_tls: false                            # optional: force TLS on or off

With ``auth`` every znode hacore creates is readable and writable by that user only.

TLS files in the settings are for servers hacore does not run (an external ensemble with its
own CA). Without them, a node running with TLS reaches the store with its own certificate and
the cluster CA, as it does its managed servers; ``use_tls: false`` keeps such a node's
connections to an external, plain-text ensemble plain.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import attrs

from hacore.backends.client_tls import ClientTls
from hacore.backends.records import TlsFiles
from hacore.config.check import Section, backend_settings
from hacore.errors import ConfigError
from hacore_plugins.zookeeper import server as zk

TLS_KEYS = ("ca_file", "cert_file", "key_file")
KNOWN_KEYS = ("hosts", "auth", *TLS_KEYS, "use_tls")
#: the settings of the ZooKeeper server hacore runs (``managed: true``)
MANAGED_PORTS = ("client_port", "peer_port", "election_port")
MANAGED_KEYS = (*MANAGED_PORTS, "server_id", "jvm_options", "tick_time_ms")
DEFAULT_TICK_MS = 250


@attrs.frozen
class ManagedSettings:
    client_port: int
    peer_port: int
    election_port: int
    server_id: int | None = None
    jvm_options: tuple[str, ...] = zk.DEFAULT_JVM_OPTIONS
    tick_time_ms: int = DEFAULT_TICK_MS

    @classmethod
    def parse(cls, settings: Mapping[str, Any]) -> ManagedSettings:
        sec = backend_settings("consensus", settings, MANAGED_KEYS)
        before = len(sec.problems)
        ports = {key: sec.port(key) for key in MANAGED_PORTS}
        if len(sec.problems) == before and len(set(ports.values())) != len(ports):
            sec.problem(
                "consensus.client_port, consensus.peer_port and consensus.election_port must "
                f"all differ (got {', '.join(map(str, ports.values()))})"
            )
        server_id = None
        if sec.given("server_id"):
            server_id = sec.integer("server_id", low=1, what="a ZooKeeper server id")
        jvm_options: tuple[str, ...] = zk.DEFAULT_JVM_OPTIONS
        if sec.given("jvm_options"):
            jvm_options = sec.string_list("jvm_options", what="JVM options")
        tick = sec.integer(
            "tick_time_ms", DEFAULT_TICK_MS, low=50, high=10_000, what="a number of milliseconds"
        )
        sec.done()
        return cls(**ports, server_id=server_id, jvm_options=jvm_options, tick_time_ms=tick)


@attrs.frozen
class ZooKeeperSettings:
    hosts: tuple[str, ...]
    user: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    #: None: plain-text connections
    tls: ClientTls | None = None

    @property
    def connect_string(self) -> str:
        return ",".join(self.hosts)


def parse_settings(
    settings: Mapping[str, Any], node_tls: TlsFiles | None = None
) -> ZooKeeperSettings:
    """``node_tls`` (the node's certificate and the cluster CA) applies unless the settings
    name a CA of their own or say ``use_tls: false``. Every problem at once, one line each."""
    sec = backend_settings("consensus", settings, KNOWN_KEYS)
    hosts = settings.get("hosts")
    if isinstance(hosts, str) or not isinstance(hosts, list | tuple) or not hosts:
        sec.problem('zookeeper setting "hosts" must be a non-empty list of "host:port"')
        hosts = ()
    for host in hosts:
        sec.attempt(partial(_check_host, host), None)
    anonymous: tuple[str | None, str | None] = (None, None)
    user, password = sec.attempt(partial(_auth, settings.get("auth")), anonymous)
    tls = _tls(sec, node_tls)
    sec.done()
    return ZooKeeperSettings(tuple(hosts), user, password, tls)


def _auth(auth: object) -> tuple[str | None, str | None]:
    if auth is None:
        return None, None
    if not isinstance(auth, Mapping) or set(auth) - {"user", "password", "scheme"}:
        raise ConfigError('zookeeper setting "auth" must be {user: NAME, password: SECRET}')
    if auth.get("scheme", "digest") != "digest":
        raise ConfigError('zookeeper setting "auth": only the "digest" scheme is supported')
    user, password = auth.get("user"), auth.get("password")
    if not isinstance(user, str) or not user or ":" in user:
        raise ConfigError('zookeeper setting "auth.user" must be a non-empty name without ":"')
    if not isinstance(password, str) or not password:
        raise ConfigError('zookeeper setting "auth.password" must be a non-empty string')
    return user, password


def _tls(sec: Section, node_tls: TlsFiles | None) -> ClientTls | None:
    files = {key: sec.optional_string(key, what="a file path") for key in TLS_KEYS}
    if (files["cert_file"] is None) != (files["key_file"] is None):
        sec.problem("consensus.cert_file and key_file go together")
    use = sec.boolean("use_tls", None) if sec.given("use_tls") else None
    if use is False:
        if any(files.values()):
            sec.problem("consensus names TLS files but consensus.use_tls is false")
        return None
    if any(files.values()):
        return ClientTls(**files)
    if node_tls is not None:
        return ClientTls.from_node(node_tls)
    return ClientTls() if use else None


def _check_host(host: object) -> None:
    if not isinstance(host, str) or "/" in host or "," in host:
        raise ConfigError(f'zookeeper "hosts" entry {host!r} must look like "host:port"')
    name, sep, port = host.rpartition(":")
    if not sep or not name or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f'zookeeper "hosts" entry {host!r} must look like "host:port"')
