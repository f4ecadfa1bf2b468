"""The node's own record of its cluster: ``data_dir/cluster.json`` (0600).

``cluster start`` and ``cluster join`` write it after each step they complete, so an agent
restarted in the middle of one knows where it stands: a start resumes at the first step not
done; a join resumes once this node is a store member, and rolls back to "empty" before that.
It also keeps what the node needs to serve after a restart without asking anyone: the
configuration overrides the operation applied over ``node.yaml`` (node name and address,
``--options``, the cluster's API credentials hash, the cluster's namespace) and the
replication password. Absent file: the node belongs to no cluster.
"""

from __future__ import annotations

import copy
import enum
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from hacore.atomic_files import read_private, write_private
from hacore.cluster.record import ClusterRecord
from hacore.errors import HacoreError

STATE_FILE = "cluster.json"
FORMAT = 1


class Phase(enum.Enum):
    #: ``cluster start`` runs (or was interrupted): resumed at the next agent start.
    STARTING = "starting"
    #: ``cluster join`` runs (or was interrupted): resumed, or rolled back to empty.
    JOINING = "joining"
    #: A member of the cluster: the agent runs.
    MEMBER = "member"
    #: Removed by ``nodes remove``: the agent does not run any more.
    REMOVED = "removed"


class Step(enum.Enum):
    """Steps of the two operations, in the order they run."""

    # cluster start
    STORE = "store"
    RECORD = "record"
    DATABASE = "database"
    STATUS = "status"
    # cluster join
    TICKET = "ticket"
    STORE_JOINED = "store_joined"
    # both
    AGENT = "agent"


def _plain(value: Mapping[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(dict(value))


@attrs.frozen
class ClusterState:
    phase: Phase
    record: ClusterRecord
    #: merged over node.yaml to give the configuration in force
    overrides: dict[str, Any] = attrs.field(converter=_plain)
    replication_user: str
    replication_password: str = attrs.field(repr=False)
    done: tuple[Step, ...] = ()
    #: join: the API of the node that granted the ticket
    active_url: str | None = None
    #: join, managed store: what the store's ``join`` needs (holds store secrets)
    store_spec: dict[str, Any] | None = attrs.field(default=None, repr=False)
    #: ticket parts added by extensions (CA material...), by part name
    extensions: dict[str, Any] = attrs.field(factory=dict, repr=False, converter=_plain)
    updated_at: float = attrs.field(factory=time.time)

    def has(self, step: Step) -> bool:
        return step in self.done

    def with_step(self, step: Step) -> ClusterState:
        done = self.done if step in self.done else (*self.done, step)
        return attrs.evolve(self, done=done, updated_at=time.time())

    def with_phase(self, phase: Phase) -> ClusterState:
        return attrs.evolve(self, phase=phase, updated_at=time.time())

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "phase": self.phase.value,
            "record": self.record.to_json(),
            "overrides": self.overrides,
            "replication_user": self.replication_user,
            "replication_password": self.replication_password,
            "done": [step.value for step in self.done],
            "active_url": self.active_url,
            "store_spec": self.store_spec,
            "extensions": self.extensions,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ClusterState:
        if data.get("format") != FORMAT:
            raise HacoreError(f"format {data.get('format')!r} is not {FORMAT}")
        try:
            return cls(
                phase=Phase(data["phase"]),
                record=ClusterRecord.from_json(data["record"]),
                overrides=data["overrides"],
                replication_user=str(data["replication_user"]),
                replication_password=str(data["replication_password"]),
                done=tuple(Step(s) for s in data.get("done", [])),
                active_url=data.get("active_url"),
                store_spec=data.get("store_spec"),
                extensions=data.get("extensions") or {},
                updated_at=float(data.get("updated_at", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise HacoreError(f"missing or wrong field ({err})") from None


class StateFile:
    """``cluster.json`` in a node's data directory."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / STATE_FILE

    def load(self) -> ClusterState | None:
        text = read_private(self.path)
        if text is None:
            return None
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise HacoreError("not a JSON object")
            return ClusterState.from_json(data)
        except (ValueError, HacoreError) as err:
            raise HacoreError(
                f"{self.path} is damaged ({err}); the node cannot tell which cluster it belongs "
                "to: restore the file, or remove this node's data directory to make it empty"
            ) from None

    def save(self, state: ClusterState) -> None:
        write_private(self.path, json.dumps(state.to_json(), indent=2, sort_keys=True) + "\n")

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
