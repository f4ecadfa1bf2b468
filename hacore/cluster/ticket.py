"""What a joining node asks the active for, and what the active answers: the join ticket.

The request says who the newcomer is (name, address, hacore version, its backends) and whether
it is empty; the ticket carries everything it needs to become a member: the cluster record,
how to reach or join the store, the replication credentials and the API credentials' hash.

Extension point: :func:`register_ticket_part` adds a named part to both messages, for material
that other subsystems hand over at join time (the internal CA's certificate and key, the file
sync peers' identities). A part may add data to the request on the joiner, must grant its
share on the active (or raise to refuse the join, before anything changed), and accepts the
granted data on the joiner before it joins the store.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import attrs

from hacore.agent.failsafe import store_key, stored_key
from hacore.api.errors import BadRequestError
from hacore.backends.records import StoreMember
from hacore.cluster.record import ClusterRecord
from hacore.config.node import NodeConfig
from hacore.errors import HacoreError


class TicketPart(Protocol):
    """One named share of the join ticket (see the module docstring)."""

    name: str

    def request(self, config: NodeConfig) -> dict[str, Any]:
        """On the joiner: what it adds to its join request (e.g. a certificate request)."""
        ...

    def grant(self, config: NodeConfig, request: JoinRequest) -> dict[str, Any]:
        """On the active: this part's share of the ticket; raise an ``hacore.api.errors``
        class to refuse the join. Must not change anything a refused join would leave."""
        ...

    def accept(self, config: NodeConfig, granted: Mapping[str, Any]) -> None:
        """On the joiner, before it joins the store: install the granted share."""
        ...


_PARTS: dict[str, TicketPart] = {}


def register_ticket_part(part: TicketPart) -> None:
    """Add (or replace, by name) a ticket part; call it at import time of your module."""
    _PARTS[part.name] = part


def ticket_parts() -> tuple[TicketPart, ...]:
    return tuple(_PARTS.values())


def _field(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise BadRequestError(f'join: "{key}" must be {what}')
    return value


def _member_json(member: StoreMember) -> dict[str, Any]:
    return attrs.asdict(member)


@attrs.frozen
class JoinRequest:
    """Sent by the joining node's agent to the active's ``POST /cluster/join``."""

    name: str
    host: str
    api_url: str
    version: str
    #: the node holds no database and no store data
    empty: bool
    #: why it is not empty, for the refusal message
    not_empty: str
    consensus_backend: str
    managed: bool
    replication_backend: str
    store_identity: StoreMember | None = None
    extensions: dict[str, Any] = attrs.field(factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "action": "ticket",
            "name": self.name,
            "host": self.host,
            "api_url": self.api_url,
            "version": self.version,
            "empty": self.empty,
            "not_empty": self.not_empty,
            "consensus_backend": self.consensus_backend,
            "managed": self.managed,
            "replication_backend": self.replication_backend,
            "store_identity": _member_json(self.store_identity) if self.store_identity else None,
            "extensions": self.extensions,
        }

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> JoinRequest:
        identity = data.get("store_identity")
        member = None
        if identity is not None:
            if not isinstance(identity, Mapping):
                raise BadRequestError('join: "store_identity" must be an object')
            try:
                member = StoreMember(
                    name=str(identity["name"]),
                    peer_url=str(identity["peer_url"]),
                    client_url=str(identity["client_url"]),
                    voting=bool(identity.get("voting", True)),
                )
            except KeyError as err:
                raise BadRequestError(f"join: store_identity lacks {err}") from None
        extensions = data.get("extensions") or {}
        if not isinstance(extensions, Mapping):
            raise BadRequestError('join: "extensions" must be an object')
        return cls(
            name=_field(data, "name", str, "the node name"),
            host=_field(data, "host", str, "the node's address"),
            api_url=_field(data, "api_url", str, "the node's API URL"),
            version=_field(data, "version", str, "the node's hacore version"),
            empty=_field(data, "empty", bool, "true or false"),
            not_empty=str(data.get("not_empty") or ""),
            consensus_backend=_field(data, "consensus_backend", str, "a backend name"),
            managed=_field(data, "managed", bool, "true or false"),
            replication_backend=_field(data, "replication_backend", str, "a backend name"),
            store_identity=member,
            extensions=dict(extensions),
        )


@attrs.frozen
class Ticket:
    """The active's answer: everything the newcomer needs (it holds secrets)."""

    record: ClusterRecord
    active: str
    #: {"backend", "managed", and "spec" (managed: the store's join material) or "settings"}
    consensus: dict[str, Any] = attrs.field(repr=False)
    replication_user: str
    replication_password: str = attrs.field(repr=False)
    api_username: str
    api_password_hash: str = attrs.field(repr=False)
    status_requires_auth: bool = False
    #: the probe and read-only API users ({username, password_hash, role}), hashes only
    api_users: tuple[dict[str, str], ...] = attrs.field(default=(), repr=False)
    #: every member's name and API URL, for the joiner's CLI profile
    members: tuple[tuple[str, str], ...] = ()
    extensions: dict[str, Any] = attrs.field(factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "record": self.record.to_json(),
            "active": self.active,
            "consensus": self.consensus,
            "replication": {"user": self.replication_user, "password": self.replication_password},
            "api": {
                "username": self.api_username,
                "password_hash": self.api_password_hash,
                "status_requires_auth": self.status_requires_auth,
                "users": [dict(user) for user in self.api_users],
            },
            "members": [{"name": n, "api_url": u} for n, u in self.members],
            "extensions": self.extensions,
        }

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> Ticket:
        try:
            repl, api = data["replication"], data["api"]
            consensus = data["consensus"]
            if not isinstance(consensus, dict) or "backend" not in consensus:
                raise ValueError("consensus")
            return cls(
                record=ClusterRecord.from_json(data["record"]),
                active=str(data["active"]),
                consensus=consensus,
                replication_user=str(repl["user"]),
                replication_password=str(repl["password"]),
                api_username=str(api["username"]),
                api_password_hash=str(api["password_hash"]),
                status_requires_auth=bool(api.get("status_requires_auth", False)),
                api_users=tuple(
                    {str(k): str(v) for k, v in dict(user).items()}
                    for user in api.get("users") or ()
                ),
                members=tuple((str(m["name"]), str(m["api_url"])) for m in data.get("members", [])),
                extensions=dict(data.get("extensions") or {}),
            )
        except (KeyError, TypeError, ValueError, HacoreError) as err:
            raise BadRequestError(f"the join ticket is incomplete ({err})") from None


FAILSAFE_PART = "failsafe"


class FailsafeKeyPart:
    """The failsafe key a removal rotated, as the active keeps it: a node joining after the
    rotation signs and checks failsafe questions with it from its first round. (The store's
    copy, sealed per member, reaches the newcomer only once the active's agent has seen its
    certificate; the replication password travels in the ticket itself, and the rsync secret
    in the rsync part.) Nothing while no removal rotated it: the key derived from the admin
    password's hash holds."""

    name = FAILSAFE_PART

    def request(self, config: NodeConfig) -> dict[str, Any]:
        return {}

    def grant(self, config: NodeConfig, request: JoinRequest) -> dict[str, Any]:
        key = stored_key(config.node.data_dir)
        return {"key": key.hex()} if key is not None else {}

    def accept(self, config: NodeConfig, granted: Mapping[str, Any]) -> None:
        value = granted.get("key")
        if value is None:
            return
        if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}", value):
            raise HacoreError("the join ticket's failsafe key is malformed")
        Path(config.node.data_dir).mkdir(parents=True, exist_ok=True)
        store_key(config.node.data_dir, value)


register_ticket_part(FailsafeKeyPart())
