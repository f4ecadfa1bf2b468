"""Immutable records shared by the core and every backend.

A cluster view is read once per agent loop and then only passed around, never mutated: the
decision function sees one consistent snapshot, and a record can be logged, compared or sent
over the API as it is.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import attrs


class NodeRole(enum.Enum):
    """What a member says it is, as published in its member record."""

    ACTIVE = "active"
    STANDBY = "standby"
    STARTING = "starting"
    CLONING = "cloning"
    FENCED = "fenced"
    REMOVED = "removed"
    UNKNOWN = "unknown"


class EventKind(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@attrs.frozen
class Lease:
    """Proof of leadership returned by ``campaign``.

    ``token`` is the fencing token: it grows with every new leadership, so a stale holder can
    be told apart from the current one. ``acquired_at`` is this node's ``time.monotonic()`` when
    the lease was granted (never wall-clock time: it is only compared with this node's clock).
    ``handle`` is backend-private (an etcd lease id, a Consul session id) and takes no part in
    equality.
    """

    holder: str
    token: int
    ttl: float
    acquired_at: float
    handle: Any = attrs.field(default=None, eq=False, repr=False)


@attrs.frozen
class Leader:
    """Who holds the leader key right now, as seen by a reader."""

    name: str
    token: int


@attrs.frozen
class KeyValue:
    """One key of the versioned store.

    ``version`` is opaque to the core: a positive integer that changes on every write of the
    key, passed back as ``expect_version`` for compare-and-set.
    """

    key: str
    value: bytes
    version: int


@attrs.frozen
class WatchEvent:
    """A change under a watched prefix.

    ``value`` is the value written by that change where the store ships it (etcd), else the
    value read right after the event was seen (ZooKeeper, Consul), which may be newer. Events
    for one watcher arrive in the order the store applied them.
    """

    kind: EventKind
    key: str
    value: bytes | None = None


#: where agents older than :attr:`Member.candidate` publish and read a member's candidacy
CANDIDATE_IN_EXTRA = "candidate"


def _frozen_mapping(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(value or {}))


@attrs.frozen
class Member:
    """A node's published record, bound to its store session so it vanishes when the node dies."""

    name: str
    api_url: str = ""
    host: str = ""
    role: NodeRole = NodeRole.UNKNOWN
    healthy: bool = False
    position: int | None = None
    timeline: int | None = None
    version: str = ""
    checks: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping, eq=False)
    extra: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping, eq=False)
    #: Whether the node would campaign for the active role now (its I/O edge found no
    #: ``campaign_blocker``): ``decide`` never elects nor hands over to a member that says
    #: False. A record that does not say (an agent older than the field) is a candidate, as it
    #: always was.
    candidate: bool = True

    @extra.validator
    def _no_free_text_candidacy(self, _: attrs.Attribute[Any], value: Mapping[str, Any]) -> None:
        if CANDIDATE_IN_EXTRA in value:
            raise ValueError("a member's candidacy is its candidate field, not extra['candidate']")

    def to_bytes(self) -> bytes:
        data = attrs.asdict(self, recurse=False)
        data["role"] = self.role.value
        data["checks"] = dict(self.checks)
        data["extra"] = self.published_extra()
        return json.dumps(data, sort_keys=True).encode()

    def published_extra(self) -> dict[str, Any]:
        """``extra`` as records and the API have always shown it: agents older than the typed
        field read candidacy from ``extra["candidate"]`` only (a rolling upgrade meets them),
        and ``/nodes`` keeps its shape (the key first, where the store's sorted JSON had it)."""
        return {CANDIDATE_IN_EXTRA: self.candidate, **self.extra}

    @classmethod
    def from_bytes(cls, raw: bytes) -> Member:
        data = json.loads(raw)
        data["role"] = NodeRole(data.get("role", NodeRole.UNKNOWN.value))
        extra = dict(data.get("extra") or {})
        legacy = extra.pop(CANDIDATE_IN_EXTRA, True)
        said = data.get("candidate", legacy)
        data["extra"] = extra
        # only an explicit False takes a member out, as when candidacy was read from ``extra``
        data["candidate"] = said is not False
        known = {f.name for f in attrs.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@attrs.frozen
class TlsFiles:
    """Where a node's TLS material lies, as backends that speak TLS are given it.

    The node certificate serves both ways (server and client), so one record configures a
    store server, its clients and a database's replication connections. ``cluster start`` and
    ``cluster join`` create the files; backends only read them.
    """

    #: the cluster CA's certificate: the only trust anchor for node-to-node traffic
    ca_file: Path
    #: this node's certificate, signed by the CA, naming every address it is reached by
    cert_file: Path
    #: its private key (mode 0600)
    key_file: Path


@attrs.frozen
class StoreMember:
    """One server of a managed consensus store (an etcd member, a ZooKeeper server)."""

    name: str
    peer_url: str
    client_url: str
    voting: bool = True
    healthy: bool = True


@attrs.frozen
class ClusterView:
    """One snapshot of the store: the leader, the members and the cluster-wide keys."""

    leader: Leader | None
    members: tuple[Member, ...] = ()
    config: KeyValue | None = None

    def member(self, name: str) -> Member | None:
        return next((m for m in self.members if m.name == name), None)
