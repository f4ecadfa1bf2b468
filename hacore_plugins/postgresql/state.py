"""What this node must remember across restarts: its upstream, its past as a primary, who may
connect. Kept in ``node/state.json``; every node-local file is rendered from it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from hacore.backends.replication import ReplicationSource
from hacore.errors import ReplicationError


@attrs.frozen
class Upstream:
    """A source without its password (that stays in the 0600 passfile)."""

    node_name: str
    host: str
    port: int
    user: str

    @classmethod
    def of(cls, source: ReplicationSource) -> Upstream:
        return cls(source.node_name, source.host, source.port, source.user)


@attrs.frozen
class NodeState:
    #: The data has been a primary's since its last clone or rewind: it may hold writes no
    #: other node has, so it can only come back as a standby through a rewind.
    was_primary: bool = False
    upstream: Upstream | None = None
    #: ``synchronous_standby_names`` while primary; None means the mode's default.
    sync_names: str | None = None
    #: Members allowed to connect, name -> host.
    members: tuple[tuple[str, str], ...] = ()
    #: Hosts given at bootstrap, kept until the cluster is rebuilt.
    static_hosts: tuple[str, ...] = ()
    #: Server log size when the upstream last changed: divergence messages count after it.
    log_mark: int = 0

    def with_member(self, name: str, host: str) -> NodeState:
        members = dict(self.members)
        members[name] = host
        return attrs.evolve(self, members=tuple(sorted(members.items())))

    def without_member(self, name: str) -> NodeState:
        return attrs.evolve(self, members=tuple((n, h) for n, h in self.members if n != name))

    def allowed_hosts(self, own_host: str) -> list[str]:
        hosts = [own_host, *self.static_hosts, *(h for _, h in self.members)]
        return list(dict.fromkeys(hosts))

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> NodeState:
        upstream = raw.get("upstream")
        return cls(
            was_primary=bool(raw.get("was_primary", False)),
            upstream=Upstream(**upstream) if upstream else None,
            sync_names=raw.get("sync_names"),
            members=tuple((str(n), str(h)) for n, h in raw.get("members", ())),
            static_hosts=tuple(str(h) for h in raw.get("static_hosts", ())),
            log_mark=int(raw.get("log_mark", 0)),
        )


def load_state(path: Path) -> NodeState:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return NodeState()
    except OSError as err:
        # out of descriptors, above all: unknown, which the agent must not read as "stopped"
        raise ReplicationError(f"cannot read {path}: {err}") from err
    try:
        return NodeState.from_mapping(json.loads(text))
    except (ValueError, TypeError) as err:
        raise ReplicationError(f"{path} is damaged ({err}); restore it or re-clone") from None
