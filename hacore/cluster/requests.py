"""The bodies the CLI sends to its own node's agent for ``cluster start`` and ``cluster join``.

Both carry the node name and address to use (``--node-name``, ``--host-ip``), the parsed
``--options`` overrides and the cluster's API credentials; those become the configuration
overrides the node keeps in ``cluster.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from hacore.api.errors import BadRequestError
from hacore.config.options import deep_merge


def _optional_text(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequestError(f'"{key}" must be a string')
    return value


def _required_text(body: Mapping[str, Any], key: str, what: str) -> str:
    value = _optional_text(body, key)
    if value is None:
        raise BadRequestError(f'"{key}" is required: {what}')
    return value


@attrs.frozen
class NodeRequest:
    node_name: str | None
    host_ip: str | None
    options: dict[str, Any]
    username: str
    password: str = attrs.field(repr=False)

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> NodeRequest:
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise BadRequestError('"options" must be an object of configuration overrides')
        username = _required_text(body, "username", "the cluster's API user name")
        if ":" in username:
            raise BadRequestError("an API user name cannot contain ':'")
        return cls(
            node_name=_optional_text(body, "node_name"),
            host_ip=_optional_text(body, "host_ip"),
            options=options,
            username=username,
            password=_required_text(body, "password", "the cluster's API password"),
        )

    def overrides(self) -> dict[str, Any]:
        node = {}
        if self.node_name is not None:
            node["name"] = self.node_name
        if self.host_ip is not None:
            node["host"] = self.host_ip
        return deep_merge(self.options, {"node": node}) if node else dict(self.options)


@attrs.frozen
class JoinCommand:
    """``cluster join``: the node request plus where the active is."""

    node: NodeRequest
    active: str
    #: how the joiner recognises the cluster's CA (TLS): its fingerprint, or the certificate
    ca_fingerprint: str | None = None
    ca_certificate: str | None = None

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> JoinCommand:
        return cls(
            NodeRequest.parse(body),
            _required_text(body, "active", "the active node's address (host[:port])"),
            ca_fingerprint=_optional_text(body, "ca_fingerprint"),
            ca_certificate=_optional_text(body, "ca_certificate"),
        )
