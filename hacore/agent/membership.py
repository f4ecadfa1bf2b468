"""The member set between loops: the membership hook, database access, file sync peers.

Each loop hands it the view it read; it tells the plugins who came and went, lets every
believed member reach this node's database, and gives the file sync engine its peers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from hacore.agent.hooks import HookCaller, NodeLog
from hacore.agent.revocation_sync import RevocationSync
from hacore.backends.records import ClusterView, Member
from hacore.plugins.factory import Backends

log = logging.getLogger(__name__)


class Membership:
    """Tracks the member set between loops: the membership hook, database access, file peers."""

    def __init__(
        self,
        name: str,
        backends: Backends,
        hooks: HookCaller,
        revocations: RevocationSync | None = None,
    ) -> None:
        self.name = name
        #: the CRL and rotated secrets of removals (hacore/agent/revocation_sync.py)
        self.revocations = revocations
        self.log = NodeLog(log, name)
        self.backends = backends
        self.hooks = hooks
        self._seen: dict[str, Member] | None = None
        self._allowed: dict[str, str] = {}
        self._peers: dict[str, Any] | None = None
        self._identity: dict[str, Any] | None = None

    def files_identity(self) -> dict[str, Any] | None:
        fs = self.backends.filesync
        if fs is not None and self._identity is None:
            try:
                self._identity = fs.identity()
            except Exception as err:
                self.log.debug("file sync identity not available yet: %s", err)
        return self._identity

    def update(self, view: ClusterView, removed: Iterable[str], *, initialized: bool) -> None:
        """Report changes to the plugins; once there is a database, let every member in."""
        if self.revocations is not None:
            self.revocations.tick(removed=self.name in set(removed))
        current = {m.name: m for m in view.members}
        previous = self._seen if self._seen is not None else {}
        added = tuple(m for n, m in current.items() if n not in previous)
        gone = tuple(m for n, m in previous.items() if n not in current)
        self._seen = current
        if added or gone:
            self.log.info(
                "members changed: +%s -%s",
                ",".join(m.name for m in added) or "none",
                ",".join(m.name for m in gone) or "none",
            )
            self.hooks.call("hacore_membership_changed", view=view, added=added, removed=gone)
        dropped = set(removed)
        # the loop's view holds only records signed by their own node (record_trust.py)
        believed = view.members
        for member in believed if initialized else ():
            if member.name == self.name or member.name in dropped or not member.host:
                continue
            if self._allowed.get(member.name) != member.host:
                try:
                    self.backends.replication.allow_member(member.name, member.host)
                except Exception as err:
                    self.log.warning("could not let %s reach this database: %s", member.name, err)
                    continue
                self._allowed[member.name] = member.host
        fs = self.backends.filesync
        peers = {
            m.name: m.extra["filesync"]
            for m in believed
            if m.name != self.name and m.name not in dropped and "filesync" in m.extra
        }
        if fs is not None and peers != self._peers:
            try:
                fs.set_peers(peers)
                self._peers = peers
            except Exception as err:
                self.log.warning("could not update the file sync peers: %s", err)
