"""The ``consensus.settings`` section for Consul, checked before any connection is tried.

Consul refuses a session TTL below its servers' ``session_ttl_min`` (10 s unless the servers
were configured otherwise) with an HTTP 500 at run time. hacore's ``ttl`` is usually shorter,
so the rule is checked here, at configuration time, where the message can say what to change.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import attrs

from hacore.config.check import Section, backend_settings, show
from hacore.errors import ConfigError

#: Consul's default ``session_ttl_min`` and its fixed upper bound.
CONSUL_MIN_SESSION_TTL = 10.0
CONSUL_MAX_SESSION_TTL = 86400.0
#: Consul caps lock-delay at 60 s.
CONSUL_MAX_LOCK_DELAY = 60.0
#: Small enough to never delay a failover, positive because the API docs ask for > 0.
DEFAULT_LOCK_DELAY = 0.001

KNOWN_KEYS = (
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


def parse_settings(settings: Mapping[str, Any]) -> ConsulSettings:
    """Turn the raw settings into :class:`ConsulSettings` or raise one ConfigError that lists
    every problem, one line each."""
    sec = backend_settings("consensus", settings, KNOWN_KEYS)
    endpoints = _endpoints(sec)
    prefix = settings.get("prefix", "hacore")
    if not isinstance(prefix, str) or not prefix.strip("/") or prefix.startswith("/"):
        sec.problem(
            f"consensus.prefix must be a key path without a leading '/' (got {show(prefix)})"
        )
        prefix = "hacore"
    seconds = "a number of seconds"
    lock_delay = sec.number(
        "lock_delay", DEFAULT_LOCK_DELAY, low=0, high=CONSUL_MAX_LOCK_DELAY, what=seconds
    )
    if 0 < lock_delay < 0.001:
        # Consul reads a delay below 1 µs as a number of *seconds*: refuse the ambiguous range.
        sec.problem(
            "consensus.lock_delay must be 0 or between 0.001 and "
            f"{CONSUL_MAX_LOCK_DELAY:g} s (got {show(settings['lock_delay'])})"
        )
    min_ttl = sec.number("min_session_ttl", CONSUL_MIN_SESSION_TTL, what=f"{seconds} > 0")
    if min_ttl > CONSUL_MAX_SESSION_TTL:
        sec.problem(
            f"consensus.min_session_ttl must be a number of seconds > 0 and at most "
            f"{CONSUL_MAX_SESSION_TTL:g} (got {show(min_ttl)})"
        )
    verify: bool | str = True
    if "verify" in settings and not isinstance(settings["verify"], bool):
        sec.problem(
            f"consensus.verify must be true or false (got {show(settings['verify'])}); "
            "give a CA with ca_file"
        )
    else:
        verify = sec.boolean("verify", True)
    ca_file = sec.optional_string("ca_file", what="a file path")
    if ca_file is not None:
        verify = ca_file
    cert_file = sec.optional_string("cert_file", what="a file path")
    key_file = sec.optional_string("key_file", what="a file path")
    if (cert_file is None) != (key_file is None):
        sec.problem("consensus.cert_file and consensus.key_file go together: give both or neither")
    parsed = ConsulSettings(
        endpoints=endpoints,
        token=sec.optional_secret("token", what="a non-empty string"),
        datacenter=sec.optional_string("datacenter"),
        prefix=prefix.strip("/"),
        lock_delay=lock_delay,
        min_session_ttl=min_ttl,
        round_up_ttl=sec.boolean("round_up_ttl", False),
        halve_session_ttl=sec.boolean("halve_session_ttl", True),
        verify=verify,
        cert=(cert_file, key_file) if cert_file and key_file else None,
    )
    sec.done()
    return parsed


def _endpoints(sec: Section) -> tuple[Endpoint, ...]:
    raw = sec.raw.get("endpoints")
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list | tuple) or not raw:
        sec.problem(
            "consensus.endpoints must list at least one agent URL, "
            "e.g. endpoints: [http://127.0.0.1:8500]"
        )
        return ()
    parsed = [sec.attempt(partial(parse_endpoint, entry), None) for entry in raw]
    return tuple(endpoint for endpoint in parsed if endpoint is not None)


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
