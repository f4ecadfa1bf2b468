"""The ``consensus`` settings of the ZooKeeper backend, checked before any connection.

::

    consensus:
      backend: zookeeper
      settings:
        hosts: ["10.0.0.1:2181", "10.0.0.2:2181", "10.0.0.3:2181"]
        auth: {user: hacore, password: s3cret}     # optional digest credentials

With ``auth`` every znode hacore creates is readable and writable by that user only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from hacore.errors import ConfigError

KNOWN_KEYS = ("hosts", "auth")


@attrs.frozen
class ZooKeeperSettings:
    hosts: tuple[str, ...]
    user: str | None = None
    password: str | None = attrs.field(default=None, repr=False)

    @property
    def connect_string(self) -> str:
        return ",".join(self.hosts)


def parse_settings(settings: Mapping[str, Any]) -> ZooKeeperSettings:
    unknown = sorted(set(settings) - set(KNOWN_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown zookeeper setting(s) {', '.join(unknown)}; known: {', '.join(KNOWN_KEYS)}"
        )
    hosts = settings.get("hosts")
    if isinstance(hosts, str) or not isinstance(hosts, list | tuple) or not hosts:
        raise ConfigError('zookeeper setting "hosts" must be a non-empty list of "host:port"')
    for host in hosts:
        _check_host(host)
    user = password = None
    auth = settings.get("auth")
    if auth is not None:
        if not isinstance(auth, Mapping) or set(auth) - {"user", "password", "scheme"}:
            raise ConfigError('zookeeper setting "auth" must be {user: NAME, password: SECRET}')
        if auth.get("scheme", "digest") != "digest":
            raise ConfigError('zookeeper setting "auth": only the "digest" scheme is supported')
        user, password = auth.get("user"), auth.get("password")
        if not isinstance(user, str) or not user or ":" in user:
            raise ConfigError('zookeeper setting "auth.user" must be a non-empty name without ":"')
        if not isinstance(password, str) or not password:
            raise ConfigError('zookeeper setting "auth.password" must be a non-empty string')
    return ZooKeeperSettings(tuple(hosts), user, password)


def _check_host(host: object) -> None:
    if not isinstance(host, str) or "/" in host or "," in host:
        raise ConfigError(f'zookeeper "hosts" entry {host!r} must look like "host:port"')
    name, sep, port = host.rpartition(":")
    if not sep or not name or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f'zookeeper "hosts" entry {host!r} must look like "host:port"')
