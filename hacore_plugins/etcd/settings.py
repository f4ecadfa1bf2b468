"""The ``consensus`` settings of the etcd backend, checked before any connection is tried."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

from hacore.errors import ConfigError
from hacore_plugins.etcd.client import TlsFiles

KNOWN = frozenset({"endpoints", "username", "password", "ca_file", "cert_file", "key_file"})


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


def _optional_str(settings: Mapping[str, Any], name: str) -> str | None:
    value = settings.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"etcd setting {name!r} must be a string")
    return value


@attrs.frozen
class EtcdSettings:
    endpoints: tuple[str, ...]
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    tls: TlsFiles = attrs.field(factory=TlsFiles)

    @classmethod
    def parse(cls, settings: Mapping[str, Any]) -> EtcdSettings:
        unknown = sorted(set(settings) - KNOWN)
        if unknown:
            raise ConfigError(
                f"unknown etcd setting(s) {', '.join(unknown)}; known: {', '.join(sorted(KNOWN))}"
            )
        raw = settings.get("endpoints")
        if isinstance(raw, str):
            raw = [part for part in raw.split(",") if part.strip()]
        if not isinstance(raw, list | tuple) or not raw:
            raise ConfigError(
                "etcd needs 'endpoints': a list of client URLs such as ['http://10.0.0.1:2379']"
            )
        endpoints = tuple(_endpoint(e) for e in raw)
        if len(set(endpoints)) != len(endpoints):
            raise ConfigError(f"etcd endpoints list the same URL twice: {', '.join(endpoints)}")
        username = _optional_str(settings, "username")
        password = _optional_str(settings, "password")
        if (username is None) != (password is None):
            raise ConfigError("etcd 'username' and 'password' must be given together")
        files = {
            name: _optional_str(settings, name) for name in ("ca_file", "cert_file", "key_file")
        }
        for name, path in files.items():
            if path is not None and not os.path.isfile(path):
                raise ConfigError(f"etcd setting {name!r}: no such file {path}")
        if (files["key_file"] is not None) and files["cert_file"] is None:
            raise ConfigError("etcd 'key_file' needs 'cert_file'")
        if files["ca_file"] is None and files["cert_file"] is not None:
            raise ConfigError("etcd 'cert_file' needs 'ca_file' (the CA that signed the servers)")
        return cls(endpoints, username, password, TlsFiles(**files))
