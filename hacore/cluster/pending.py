"""Joins granted but not finished, kept in the store under ``joins/<name>``.

The active writes the key (create-only) when it grants a ticket, so two nodes cannot join
under one name at once, and the joiner deletes it once it streams. A key whose node never
published a member record is a join that died half-way: a retry from the same address may
take it over, ``nodes remove`` cancels it, and the active cancels it by itself after
:data:`STALE_AFTER` seconds.
"""

from __future__ import annotations

import json
import time

import attrs

from hacore.backends.consensus import ConsensusBackend
from hacore.backends.records import KeyValue
from hacore.errors import HacoreError

PREFIX = "joins/"
#: seconds after which a join whose node never showed up is cancelled by the active
STALE_AFTER = 600.0


def pending_key(name: str) -> str:
    return PREFIX + name


@attrs.frozen
class PendingJoin:
    name: str
    host: str
    granted_by: str
    #: wall clock, compared across nodes only at the scale of STALE_AFTER
    granted_at: float = attrs.field(factory=time.time)

    def encode(self) -> bytes:
        return json.dumps(attrs.asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, kv: KeyValue) -> PendingJoin:
        try:
            data = json.loads(kv.value)
            return cls(
                name=str(data["name"]),
                host=str(data["host"]),
                granted_by=str(data["granted_by"]),
                granted_at=float(data["granted_at"]),
            )
        except (ValueError, KeyError, TypeError) as err:
            raise HacoreError(f"unreadable pending join {kv.key} ({err})") from None


def pending_joins(consensus: ConsensusBackend) -> dict[str, tuple[PendingJoin, int]]:
    """Every pending join by node name, with its key's version."""
    found: dict[str, tuple[PendingJoin, int]] = {}
    for kv in consensus.get_prefix(PREFIX):
        try:
            join = PendingJoin.decode(kv)
        except HacoreError:
            join = PendingJoin(kv.key[len(PREFIX) :], "", "", 0.0)
        found[join.name] = (join, kv.version)
    return found
