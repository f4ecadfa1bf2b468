"""The agent's keys in the consensus store, and how their values are encoded.

Every value is a small JSON object, so an operator can read the store with the store's own
tools (``etcdctl get --prefix /hacore/``). Decoders refuse a value they cannot read with
:class:`~hacore.errors.HacoreError`; the loop logs it and treats the key as absent rather than
acting on a guess.

| key | written by | bound to a session | value |
|---|---|---|---|
| ``leader`` | the campaign | yes | the holder's name |
| ``members/<name>`` | each node, every loop | yes | :class:`~hacore.backends.records.Member` |
| ``config`` | ``cluster start`` | no | the cluster record |
| ``status`` | the active, every loop (compare-and-set) | no | :class:`ActiveStatus` |
| ``switchover`` | ``cluster switchover`` | no | :class:`StoredSwitchover` |
| ``removed/<name>`` | ``nodes remove`` | no | :class:`Removal` |
| ``pause`` | ``cluster pause`` / ``resume`` | no | :class:`~hacore.agent.vocabulary.Pause` |
| ``history/<token>`` | a node after its promotion | no | :class:`HistoryEntry` |
| ``settings`` | the first active; ``cluster config set`` (CAS) | no | :class:`StoredSettings` |
"""

from __future__ import annotations

import json
import time
from typing import Any

import attrs

from hacore.agent.vocabulary import ActiveStatus, Pause
from hacore.backends.consensus import CONFIG_KEY, LEADER_KEY, MEMBERS_PREFIX
from hacore.config.cluster_settings import ClusterWide, from_mapping
from hacore.errors import ConfigError, HacoreError

__all__ = [
    "CONFIG_KEY",
    "HISTORY_PREFIX",
    "HISTORY_REASONS",
    "LEADER_KEY",
    "MEMBERS_PREFIX",
    "PAUSE_KEY",
    "REMOVED_PREFIX",
    "SETTINGS_KEY",
    "STATUS_KEY",
    "SWITCHOVER_KEY",
    "HistoryEntry",
    "Removal",
    "StoredSettings",
    "StoredSwitchover",
    "decode_pause",
    "decode_status",
    "encode_pause",
    "encode_status",
    "history_key",
    "removed_key",
    "removed_names",
]

STATUS_KEY = "status"
SWITCHOVER_KEY = "switchover"
REMOVED_PREFIX = "removed/"
HISTORY_PREFIX = "history/"
PAUSE_KEY = "pause"
SETTINGS_KEY = "settings"


def removed_key(name: str) -> str:
    return REMOVED_PREFIX + name


def history_key(token: int) -> str:
    """Zero-padded, so the store's key order is the order of leaderships."""
    return f"{HISTORY_PREFIX}{token:020d}"


def _load(raw: bytes, what: str) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise HacoreError(f"the {what} key does not hold JSON ({err})") from None
    if not isinstance(data, dict):
        raise HacoreError(f"the {what} key does not hold a JSON object")
    return data


def _dump(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True).encode()


def _optional_int(data: dict[str, Any], name: str, what: str) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise HacoreError(f"the {what} key's {name!r} must be an integer (got {value!r})")
    return value


def _text(data: dict[str, Any], name: str, what: str, *, optional: bool = False) -> str | None:
    value = data.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise HacoreError(f"the {what} key's {name!r} must be a non-empty string")
    return value


# -- status ----------------------------------------------------------------------------------


def encode_status(status: ActiveStatus) -> bytes:
    return _dump(
        {
            "name": status.name,
            "position": status.position,
            "timeline": status.timeline,
            "sync_standbys": sorted(status.sync_standbys),
        }
    )


def decode_status(raw: bytes) -> ActiveStatus:
    data = _load(raw, STATUS_KEY)
    names = data.get("sync_standbys", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise HacoreError("the status key's 'sync_standbys' must be a list of node names")
    name = _text(data, "name", STATUS_KEY)
    assert name is not None
    return ActiveStatus(
        name=name,
        position=_optional_int(data, "position", STATUS_KEY),
        timeline=_optional_int(data, "timeline", STATUS_KEY),
        sync_standbys=frozenset(names),
    )


# -- pause ---------------------------------------------------------------------------------


def encode_pause(pause: Pause) -> bytes:
    return _dump({"by": pause.by, "at": pause.paused_at, "reason": pause.reason})


def decode_pause(raw: bytes) -> Pause:
    data = _load(raw, PAUSE_KEY)
    by = _text(data, "by", PAUSE_KEY)
    assert by is not None
    at, reason = data.get("at", 0.0), data.get("reason", "")
    if not isinstance(reason, str):
        raise HacoreError("the pause key's 'reason' must be a string")
    return Pause(by=by, paused_at=float(at) if isinstance(at, int | float) else 0.0, reason=reason)


# -- switchover ------------------------------------------------------------------------------


@attrs.frozen
class StoredSwitchover:
    """A switchover request as stored; ``requested_at`` is wall-clock time, for people only
    (the agents time requests with their own monotonic clocks)."""

    from_node: str
    to_node: str | None = None
    requested_at: float = attrs.field(factory=time.time)
    #: ``cluster failover --to``: a manual promotion with no active to hand over
    failover: bool = False

    def encode(self) -> bytes:
        data: dict[str, Any] = {"from": self.from_node, "to": self.to_node, "at": self.requested_at}
        if self.failover:
            data["failover"] = True
        return _dump(data)

    @classmethod
    def decode(cls, raw: bytes) -> StoredSwitchover:
        data = _load(raw, SWITCHOVER_KEY)
        from_node = _text(data, "from", SWITCHOVER_KEY)
        assert from_node is not None
        at = data.get("at", 0.0)
        return cls(
            from_node=from_node,
            to_node=_text(data, "to", SWITCHOVER_KEY, optional=True),
            requested_at=float(at) if isinstance(at, int | float) else 0.0,
            failover=data.get("failover") is True,
        )


# -- removed nodes ---------------------------------------------------------------------------


@attrs.frozen
class Removal:
    """Why ``removed/<name>`` exists: who removed the node and when (wall clock)."""

    by: str
    removed_at: float = attrs.field(factory=time.time)

    def encode(self) -> bytes:
        return _dump({"by": self.by, "at": self.removed_at})


def removed_names(keys: tuple[str, ...]) -> frozenset[str]:
    """Node names from the keys under ``removed/`` (the value does not matter)."""
    return frozenset(k[len(REMOVED_PREFIX) :] for k in keys if k.startswith(REMOVED_PREFIX))


# -- history ---------------------------------------------------------------------------------


#: Why the active changed, as :attr:`HistoryEntry.reason` holds it.
HISTORY_REASONS = {
    "first_start": "first start of the cluster",
    "switchover": "planned switchover",
    "manual_failover": "manual failover (cluster failover --to)",
    "stepped_down": "the old active stepped down (fenced itself) and released its lease",
    "lease_expired": "the old active's lease expired (crash, or cut off from the store)",
    "restarted": "this node's own earlier leadership ended (its agent restarted)",
    "lease_lost": "this node lost its own lease (not renewed in time) and won it again",
}


@attrs.frozen
class HistoryEntry:
    """One leadership: who became active, with which fencing token, from which position.

    ``timeline`` and ``position`` are the new active's right after its promotion (where its
    timeline switched). The ``previous_*`` fields are what the new active knew of the old one
    from the status key (the old active's last written position); entries written before they
    existed read with None.
    """

    node: str
    token: int
    timeline: int | None = None
    position: int | None = None
    promoted_at: float = attrs.field(factory=time.time)
    #: a key of :data:`HISTORY_REASONS`, None when unknown (older entries)
    reason: str | None = None
    previous: str | None = None
    previous_timeline: int | None = None
    previous_position: int | None = None
    #: the switchover's requested target (None: the best standby), for a switchover only
    switchover_to: str | None = None

    def encode(self) -> bytes:
        return _dump(attrs.asdict(self))

    @classmethod
    def decode(cls, raw: bytes) -> HistoryEntry:
        data = _load(raw, HISTORY_PREFIX.rstrip("/"))
        node = _text(data, "node", "history")
        token = _optional_int(data, "token", "history")
        if node is None or token is None:
            raise HacoreError("a history entry needs 'node' and 'token'")
        at = data.get("promoted_at", 0.0)
        return cls(
            node=node,
            token=token,
            timeline=_optional_int(data, "timeline", "history"),
            position=_optional_int(data, "position", "history"),
            promoted_at=float(at) if isinstance(at, int | float) else 0.0,
            reason=_text(data, "reason", "history", optional=True),
            previous=_text(data, "previous", "history", optional=True),
            previous_timeline=_optional_int(data, "previous_timeline", "history"),
            previous_position=_optional_int(data, "previous_position", "history"),
            switchover_to=_text(data, "switchover_to", "history", optional=True),
        )

    def to_json(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["reason_text"] = HISTORY_REASONS.get(self.reason or "", "unknown (older entry)")
        return data


# -- cluster-wide settings -------------------------------------------------------------------


@attrs.frozen
class StoredSettings:
    """The cluster-wide settings (hacore/config/cluster_settings.py) as stored.

    ``revision`` counts the changes (1: seeded by the first active), for people and for the
    agents' "applied revision"; writers compare-and-set on the key's store version, so two
    concurrent edits cannot both win. ``by`` and ``changed_at`` (wall clock) are for people.
    """

    settings: ClusterWide
    revision: int = 1
    by: str = ""
    changed_at: float = attrs.field(factory=time.time)

    def encode(self) -> bytes:
        return _dump(
            {
                "revision": self.revision,
                "by": self.by,
                "at": self.changed_at,
                "settings": self.settings.to_mapping(),
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> StoredSettings:
        data = _load(raw, SETTINGS_KEY)
        revision = _optional_int(data, "revision", SETTINGS_KEY)
        at, by = data.get("at", 0.0), data.get("by", "")
        try:
            settings = from_mapping(data.get("settings"), context="the settings key")
        except ConfigError as err:
            raise HacoreError(" ".join(str(err).splitlines())) from None
        return cls(
            settings=settings,
            revision=1 if revision is None else revision,
            by=by if isinstance(by, str) else "",
            changed_at=float(at) if isinstance(at, int | float) else 0.0,
        )

    def json(self) -> dict[str, Any]:
        """What ``cluster config show`` prints (the API's answer)."""
        return {
            "revision": self.revision,
            "by": self.by,
            "changed_at": self.changed_at,
            "settings": self.settings.to_mapping(),
        }
