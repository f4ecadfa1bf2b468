"""The cluster record: what ``cluster start`` writes to the store's ``config`` key.

It names the cluster and says which hacore made it, so a joining node can be refused when its
version differs and a second ``cluster start`` against the same store namespace is refused
instead of taking the cluster over.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Mapping
from typing import Any

import attrs

from hacore import __version__
from hacore.errors import HacoreError

#: Testing only: the hacore version this process reports to other nodes (join checks).
VERSION_OVERRIDE_ENV = "HACORE_TESTING_VERSION"


def reported_version() -> str:
    """The hacore version this node tells other nodes it runs."""
    return os.environ.get(VERSION_OVERRIDE_ENV) or __version__


@attrs.frozen
class ClusterRecord:
    name: str
    namespace: str
    cluster_id: str
    hacore_version: str
    #: wall clock (seconds since the epoch), for people
    created_at: float
    created_by: str

    @classmethod
    def new(cls, name: str, namespace: str, created_by: str) -> ClusterRecord:
        return cls(
            name=name,
            namespace=namespace,
            cluster_id=uuid.uuid4().hex,
            hacore_version=reported_version(),
            created_at=time.time(),
            created_by=created_by,
        )

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: object) -> ClusterRecord:
        if not isinstance(data, Mapping):
            raise HacoreError("the cluster record is not a JSON object")
        try:
            return cls(
                name=_text(data, "name"),
                namespace=_text(data, "namespace"),
                cluster_id=_text(data, "cluster_id"),
                hacore_version=_text(data, "hacore_version"),
                created_at=float(data["created_at"]),
                created_by=_text(data, "created_by"),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise HacoreError(f"the cluster record is incomplete ({err})") from None

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> ClusterRecord:
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            raise HacoreError(
                f"the store's config key does not hold a cluster record ({err})"
            ) from None
        return cls.from_json(data)

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.created_at))
        return f'cluster "{self.name}" (created {when} by {self.created_by})'


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a non-empty string")
    return value
