"""The ``consensus.settings`` section for Consul, checked before any connection is tried.

Consul refuses a session TTL below its servers' ``session_ttl_min`` (10 s unless the servers
were configured otherwise) with an HTTP 500 at run time. hacore's ``ttl`` is usually shorter,
so the rule is checked here, at configuration time, where the message can say what to change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

from hacore.errors import ConfigError

#: Consul's default ``session_ttl_min`` and its fixed upper bound.
CONSUL_MIN_SESSION_TTL = 10.0
CONSUL_MAX_SESSION_TTL = 86400.0
#: Consul caps lock-delay at 60 s.
CONSUL_MAX_LOCK_DELAY = 60.0
#: Small enough to never delay a failover, positive because the API docs ask for > 0.
DEFAULT_LOCK_DELAY = 0.001

KNOWN_KEYS = frozenset(
    {
        "endpoints",
        "token",
        "datacenter",
        "prefix",
        "lock_delay",
        "min_session_ttl",
        "round_up_ttl",
        "halve_session_ttl",
        "ca_file",
        "cert_file",
        "key_file",
        "verify",
    }
)


@attrs.frozen
class Endpoint:
    scheme: str
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


@attrs.frozen
class ConsulSettings:
    endpoints: tuple[Endpoint, ...]
    token: str | None = None
    datacenter: str | None = None
    prefix: str = "hacore"
    lock_delay: float = DEFAULT_LOCK_DELAY
    min_session_ttl: float = CONSUL_MIN_SESSION_TTL
    round_up_ttl: bool = False
    halve_session_ttl: bool = True
    verify: bool | str = True
    cert: tuple[str, str] | None = None


def parse_endpoint(raw: object) -> Endpoint:
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError(f"consul endpoint {raw!r} must be a URL such as http://10.0.0.1:8500")
    parts = urlsplit(raw.strip() if "//" in raw else f"http://{raw.strip()}")
    if parts.scheme not in ("http", "https"):
        raise ConfigError(f"consul endpoint {raw!r} must start with http:// or https://")
    if not parts.hostname:
        raise ConfigError(f"consul endpoint {raw!r} has no host")
    if parts.path not in ("", "/") or parts.query:
        raise ConfigError(f"consul endpoint {raw!r} must not have a path: give scheme://host:port")
    try:
        port = parts.port or 8500
    except ValueError:
        raise ConfigError(f"consul endpoint {raw!r} has an invalid port") from None
    return Endpoint(parts.scheme, parts.hostname, port)


def _number(settings: Mapping[str, Any], key: str, default: float) -> float:
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"consul setting {key!r} must be a number of seconds, not {value!r}")
    return float(value)


def _optional_str(settings: Mapping[str, Any], key: str) -> str | None:
    value = settings.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"consul setting {key!r} must be a non-empty string")
    return value


def parse_settings(settings: Mapping[str, Any]) -> ConsulSettings:
    """Turn the raw settings into :class:`ConsulSettings` or raise one clear ConfigError."""
    unknown = sorted(set(settings) - KNOWN_KEYS)
    if unknown:
        known = ", ".join(sorted(KNOWN_KEYS))
        raise ConfigError(f"unknown consul setting(s) {', '.join(unknown)}; known: {known}")
    raw_endpoints = settings.get("endpoints")
    if isinstance(raw_endpoints, str):
        raw_endpoints = [raw_endpoints]
    if not isinstance(raw_endpoints, list | tuple) or not raw_endpoints:
        raise ConfigError(
            "consul setting 'endpoints' must list at least one agent URL, "
            "e.g. endpoints: [http://127.0.0.1:8500]"
        )
    endpoints = tuple(parse_endpoint(raw) for raw in raw_endpoints)

    prefix = settings.get("prefix", "hacore")
    if not isinstance(prefix, str) or not prefix.strip("/") or prefix.startswith("/"):
        raise ConfigError(
            f"consul setting 'prefix' must be a key path without a leading '/', not {prefix!r}"
        )

    lock_delay = _number(settings, "lock_delay", DEFAULT_LOCK_DELAY)
    if not (lock_delay == 0 or 0.001 <= lock_delay <= CONSUL_MAX_LOCK_DELAY):
        # Consul reads a delay below 1 µs as a number of *seconds*: refuse the ambiguous range.
        raise ConfigError(
            "consul setting 'lock_delay' must be 0 or between 0.001 and "
            f"{CONSUL_MAX_LOCK_DELAY:g} s"
        )
    min_ttl = _number(settings, "min_session_ttl", CONSUL_MIN_SESSION_TTL)
    if not 0 < min_ttl <= CONSUL_MAX_SESSION_TTL:
        raise ConfigError("consul setting 'min_session_ttl' must be between 0 and 86400 s")
    flags = {}
    for flag, default in (("round_up_ttl", False), ("halve_session_ttl", True)):
        flags[flag] = settings.get(flag, default)
        if not isinstance(flags[flag], bool):
            raise ConfigError(f"consul setting {flag!r} must be true or false")

    verify: bool | str = settings.get("verify", True)
    if not isinstance(verify, bool):
        raise ConfigError("consul setting 'verify' must be true or false (use ca_file for a CA)")
    ca_file = _optional_str(settings, "ca_file")
    if ca_file is not None:
        verify = ca_file
    cert_file = _optional_str(settings, "cert_file")
    key_file = _optional_str(settings, "key_file")
    if (cert_file is None) != (key_file is None):
        raise ConfigError(
            "consul settings 'cert_file' and 'key_file' go together: give both or neither"
        )

    return ConsulSettings(
        endpoints=endpoints,
        token=_optional_str(settings, "token"),
        datacenter=_optional_str(settings, "datacenter"),
        prefix=prefix.strip("/"),
        lock_delay=lock_delay,
        min_session_ttl=min_ttl,
        round_up_ttl=flags["round_up_ttl"],
        halve_session_ttl=flags["halve_session_ttl"],
        verify=verify,
        cert=(cert_file, key_file) if cert_file and key_file else None,
    )


def session_ttl(ttl: float, settings: ConsulSettings) -> float:
    """The TTL the Consul session is created with, for hacore's ``ttl``.

    Consul's servers time a session at twice its TTL (``SessionTTLMultiplier``), restarted on
    every renewal, so by default the session gets ``ttl / 2`` and the leader key vanishes about
    ``ttl`` after the last renewal, as with etcd and ZooKeeper (Patroni does the same).
    ``halve_session_ttl: false`` relies only on Consul's documented promise (never expired
    before the TTL) and lets a dead leader keep the key for up to ``2 * ttl``. Rounding up to
    the servers' minimum is opt-in: it only delays failover, never shortens the session.
    """
    wanted = ttl / 2 if settings.halve_session_ttl else ttl
    if wanted > CONSUL_MAX_SESSION_TTL:
        raise ConfigError(f"ttl {ttl:g}s is above what a Consul session allows (24 h)")
    if wanted >= settings.min_session_ttl:
        return wanted
    if settings.round_up_ttl:
        return settings.min_session_ttl
    factor = 2 if settings.halve_session_ttl else 1
    raise ConfigError(
        f"ttl {ttl:g}s needs a Consul session TTL of {wanted:g}s, below the servers' minimum "
        f"session TTL of {settings.min_session_ttl:g}s: use ttl >= "
        f"{factor * settings.min_session_ttl:g}, or set consul 'min_session_ttl' to the servers' "
        "session_ttl_min if they allow less, or set 'round_up_ttl: true' to accept a slower "
        "failover"
    )
