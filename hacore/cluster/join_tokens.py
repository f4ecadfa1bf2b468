"""Single-use join tokens: how a new node fetches its ticket without the admin password.

An admin asks the active for a token bound to one node name and one address
(``hacore cluster nodes add NAME --host-ip ADDR``); the joining node presents it, as the
password of :data:`~hacore.api.auth.JOIN_TOKEN_USER`, to ``POST /cluster/join``. The active
grants the ticket only when the request names that node, comes from that address, and the
token is unexpired and unused, and marks it used in the same compare-and-set: a token yields
one ticket, once, to one node. Its holder may still cancel that node's pending join (a joiner
whose store join failed rolls back with it) until it expires.

The store keeps only a SHA-256 digest of each token under ``join-tokens/``: the token is 256
random bits, so a slow hash adds nothing, and reading the store does not hand out tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
from typing import Any

import attrs

from hacore.api.errors import AuthenticationError, BadRequestError
from hacore.backends.consensus import ConsensusBackend
from hacore.backends.records import KeyValue
from hacore.errors import HacoreError

PREFIX = "join-tokens/"
#: seconds a token stays valid unless the admin asks for another lifetime
DEFAULT_TTL = 900.0
MAX_TTL = 86400.0
_REFUSED = "the join token is unknown, expired, used, or not for this node and address"


def token_key(token: str) -> str:
    return PREFIX + hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


@attrs.frozen
class JoinToken:
    name: str
    host: str
    #: wall clock (compared across nodes only at the scale of minutes)
    expires_at: float
    created_by: str
    used: bool = False

    def encode(self) -> bytes:
        return json.dumps(attrs.asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, kv: KeyValue) -> JoinToken:
        try:
            data = json.loads(kv.value)
            return cls(
                name=str(data["name"]),
                host=str(data["host"]),
                expires_at=float(data["expires_at"]),
                created_by=str(data["created_by"]),
                used=bool(data.get("used", False)),
            )
        except (ValueError, KeyError, TypeError) as err:
            raise HacoreError(f"unreadable join token record {kv.key} ({err})") from None


def create_token(
    consensus: ConsensusBackend, name: str, host: str, created_by: str, ttl: float, now: float
) -> tuple[str, JoinToken]:
    """A new token for ``name`` at ``host`` (both checked by the caller)."""
    if not 0 < ttl <= MAX_TTL:
        raise BadRequestError(f'"ttl" must be 1-{MAX_TTL:.0f} seconds')
    token = secrets.token_urlsafe(32)
    entry = JoinToken(name, host, expires_at=now + ttl, created_by=created_by)
    if not consensus.put(token_key(token), entry.encode(), expect_version=0):
        raise HacoreError("a join token collided with another: ask again")  # pragma: no cover
    return token, entry


def addresses_of(host: str) -> set[str]:
    """The IP addresses ``host`` (an IP address or a DNS name) stands for."""
    try:
        return {str(ipaddress.ip_address(host))}
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return set()
    return {str(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])) for info in infos}


def _same_address(client: str, host: str) -> bool:
    try:
        seen = ipaddress.ip_address(client.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(seen, ipaddress.IPv6Address) and seen.ipv4_mapped is not None:
        seen = seen.ipv4_mapped
    return str(seen) in addresses_of(host)


def _find(consensus: ConsensusBackend, token: str) -> tuple[JoinToken, int] | None:
    kv = consensus.get(token_key(token))
    if kv is None:
        return None
    return JoinToken.decode(kv), kv.version


def check(
    consensus: ConsensusBackend, token: str, name: str, host: str, client: str, now: float
) -> tuple[JoinToken, int]:
    """The record of ``token`` and its version when it may yield a ticket to ``name`` at
    ``host``, asked from address ``client``; :class:`AuthenticationError` (one message,
    whatever was wrong) otherwise. Changes nothing."""
    found = _find(consensus, token)
    if found is None:
        raise AuthenticationError(_REFUSED)
    entry, version = found
    bound = hmac.compare_digest(entry.name, name) and entry.host == host
    if entry.used or now >= entry.expires_at or not bound or not _same_address(client, host):
        raise AuthenticationError(_REFUSED)
    return entry, version


def redeem(
    consensus: ConsensusBackend, token: str, name: str, host: str, client: str, now: float
) -> JoinToken:
    """:func:`check` ``token``, then mark it used in one compare-and-set, so no second
    ticket comes of it (two requests at once: one wins)."""
    entry, version = check(consensus, token, name, host, client, now)
    used = attrs.evolve(entry, used=True)
    if not consensus.put(token_key(token), used.encode(), expect_version=version):
        raise AuthenticationError(_REFUSED)
    return used


def check_cancel(
    consensus: ConsensusBackend, token: str, name: str, host: str, client: str, now: float
) -> None:
    """Let the holder of ``token`` cancel the join it was issued for (until it expires)."""
    found = _find(consensus, token)
    if found is None:
        raise AuthenticationError(_REFUSED)
    entry, _ = found
    if now >= entry.expires_at or entry.name != name or entry.host != host:
        raise AuthenticationError(_REFUSED)
    if not _same_address(client, host):
        raise AuthenticationError(_REFUSED)


def forget_expired(consensus: ConsensusBackend, now: float) -> int:
    """Delete the tokens past their lifetime; how many."""
    count = 0
    for kv in consensus.get_prefix(PREFIX):
        try:
            expired = JoinToken.decode(kv).expires_at <= now
        except HacoreError:
            expired = True
        if expired and consensus.delete(kv.key, expect_version=kv.version):
            count += 1
    return count


def token_json(token: str, entry: JoinToken, now: float) -> dict[str, Any]:
    return {
        "token": token,
        "name": entry.name,
        "host": entry.host,
        "expires_in": round(entry.expires_at - now),
    }
