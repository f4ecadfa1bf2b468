"""The ``filesync`` settings of the rsync backend."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from hacore.errors import ConfigError

DEFAULT_BINARY = "/usr/bin/rsync"
DEFAULT_STUNNEL = "/usr/bin/stunnel4"
DEFAULT_OPENSSL = "/usr/bin/openssl"
KNOWN = frozenset(
    {
        "binary",
        "stunnel_binary",
        "openssl_binary",
        "port",
        "interval",
        "password",
        "io_timeout",
        "start_timeout",
    }
)


def _number(settings: Mapping[str, Any], name: str, default: float, *, low: float) -> float:
    raw = settings.get(name, default)
    try:
        if isinstance(raw, bool):
            raise TypeError
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"rsync setting {name!r} must be a number (got {raw!r})") from None
    if value < low:
        raise ConfigError(f"rsync setting {name!r} must be at least {low:g} (got {raw!r})")
    return value


@attrs.frozen
class RsyncSettings:
    """``password``, when given, is the same on every node and replaces the secret hacore
    makes at ``cluster start`` and hands to joiners; either way the daemons want one."""

    binary: str = DEFAULT_BINARY
    stunnel_binary: str = DEFAULT_STUNNEL
    openssl_binary: str = DEFAULT_OPENSSL
    port: int = 8873
    interval: float = 2.0
    password: str | None = attrs.field(default=None, repr=False)
    io_timeout: int = 60
    start_timeout: float = 10.0

    @classmethod
    def parse(cls, settings: Mapping[str, Any]) -> RsyncSettings:
        unknown = sorted(set(settings) - KNOWN)
        if unknown:
            raise ConfigError(
                f"unknown rsync setting(s) {', '.join(unknown)}; known: {', '.join(sorted(KNOWN))}"
            )
        port = _number(settings, "port", 8873, low=1)
        if port != int(port) or port > 65535:
            raise ConfigError(f"rsync setting 'port' must be a TCP port (got {port:g})")
        password = settings.get("password")
        if password is not None and (not isinstance(password, str) or not password.strip()):
            raise ConfigError("rsync setting 'password' must be a non-empty string")
        if password is not None and any(c in password for c in "\r\n\0"):
            raise ConfigError("rsync setting 'password' must be one line")
        for name in ("binary", "stunnel_binary", "openssl_binary"):
            value = settings.get(name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"rsync setting {name!r} must be a program path")
            if isinstance(value, str) and any(c.isspace() or ord(c) < 32 for c in value):
                raise ConfigError(f"rsync setting {name!r} must hold no white space")
        return cls(
            binary=str(settings.get("binary", DEFAULT_BINARY)),
            stunnel_binary=str(settings.get("stunnel_binary", DEFAULT_STUNNEL)),
            openssl_binary=str(settings.get("openssl_binary", DEFAULT_OPENSSL)),
            port=int(port),
            interval=_number(settings, "interval", 2.0, low=0.1),
            password=password,
            io_timeout=int(_number(settings, "io_timeout", 60, low=1)),
            start_timeout=_number(settings, "start_timeout", 10.0, low=1),
        )
