"""The active's synchronous standby and the status key that names it.

``ActiveStatus.sync_standbys`` (the ``status`` key) may only name standbys that hold every
acknowledged commit, because after a crash of the active only they (and the old active) may
campaign. So the key and the database's setting change in a fixed order
(docs/agent-states.md):

1. to add a standby, the database waits for it first; the key names it only once it has
   replayed past the position where the waiting began;
2. to drop a standby, the key stops naming it first; only then does the database stop
   waiting for it.

The active waits for exactly one standby (PostgreSQL's ``ANY 1 ("b")``): with a quorum of
several, no single standby is known to hold every commit. It keeps the standby it has while
that one streams, prefers the target of a pending switchover (so the handover can happen in
synchronous mode), and otherwise takes the streaming standby that is least behind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

from hacore.agent import keys
from hacore.agent.hooks import NodeLog
from hacore.agent.vocabulary import ActiveStatus, SyncMode
from hacore.backends.consensus import ConsensusBackend
from hacore.backends.replication import ReplicationBackend, ReplicationStatus, StandbyState
from hacore.errors import HacoreError

log = logging.getLogger(__name__)

StoreCall = Callable[[Callable[[], object]], object]


class StatusWriter:
    """Compare-and-set writes of the status key, starting from the version read this loop.

    ``put`` does not return the new version, so a second write in one loop reads it first.
    """

    def __init__(self, consensus: ConsensusBackend, call: StoreCall, version: int) -> None:
        self._consensus = consensus
        self._call = call
        self._version: int | None = version
        self.written: ActiveStatus | None = None

    def write(self, status: ActiveStatus) -> bool:
        if self._version is None:
            current = self._call(lambda: self._consensus.get(keys.STATUS_KEY))
            self._version = getattr(current, "version", 0)
        version = self._version
        raw = keys.encode_status(status)
        done = bool(
            self._call(lambda: self._consensus.put(keys.STATUS_KEY, raw, expect_version=version))
        )
        self._version = None
        if done:
            self.written = status
        else:
            log.warning("the status key changed under this active (compare-and-set failed)")
        return done


class SyncStandbys:
    """Moves the database's synchronous standby and the status key one safe step per loop."""

    def __init__(self, replication: ReplicationBackend, mode: SyncMode) -> None:
        self.log = NodeLog(log, replication.node_name)
        self.replication = replication
        self.mode = mode
        #: The standbys the database waits for, as this agent set them (None: unknown).
        self._db: tuple[str, ...] | None = None
        #: The standby the database waits for, and the position where the waiting began.
        self._pending: tuple[str, int] | None = None
        #: The mode was turned off at runtime: the database still names a standby.
        self._clear = False

    def change_mode(self, mode: SyncMode) -> None:
        """The cluster-wide ``synchronous_mode`` changed (hacore/agent/settings_sync.py): the
        next step sets the database again, to no named standby when it was turned off."""
        if mode is self.mode:
            return
        self.mode = mode
        self._db = None
        self._pending = None
        self._clear = mode is SyncMode.OFF

    def reset(self) -> None:
        """A promotion puts the database back to the mode's default: no named standby."""
        self._db = ()
        self._pending = None

    def step(
        self,
        db: ReplicationStatus,
        key_sync: frozenset[str],
        members: Collection[str],
        preferred: str | None,
        write_key: Callable[[frozenset[str]], bool],
    ) -> frozenset[str]:
        """One step toward the chosen standby; returns the set the status key must hold."""
        if self.mode is SyncMode.OFF:
            if self._clear:
                self.replication.set_synchronous([], strict=False)
                self._clear, self._db = False, ()
            return frozenset()
        streaming = {s.name: s for s in db.standbys if s.state == "streaming" and s.name in members}
        desired = self._choose(streaming, preferred)
        wanted = (desired,) if desired else ()
        keep = key_sync & set(wanted)
        if keep != key_sync:
            if not write_key(keep):
                return key_sync
            self.log.info(
                "status key: %s no longer named as synchronous standby",
                ", ".join(sorted(key_sync - keep)),
            )
            key_sync = keep
        if self._db != wanted:
            self.replication.set_synchronous(list(wanted), strict=self.mode is SyncMode.STRICT)
            self._db = wanted
            self._pending = None
            if desired is not None:
                try:
                    position = self.replication.status().position
                except HacoreError:
                    # no starting point for the wait: the next loop sets it again and reads
                    # the position then, rather than never naming the standby
                    self._db = None
                    raise
                self._pending = (desired, position if position is not None else 0)
                self.log.info(
                    "waiting for %s to confirm every commit from %s on", desired, position
                )
            return key_sync
        if desired is None or desired in key_sync or self._pending is None:
            return key_sync
        name, since = self._pending
        standby = streaming.get(name)
        if name != desired or standby is None or standby.lag_bytes is None:
            return key_sync
        if db.position is not None and db.position - standby.lag_bytes >= since:
            self.log.info("%s holds every acknowledged commit: naming it synchronous standby", name)
            self._pending = None
            return key_sync | {name}
        return key_sync

    def _choose(self, streaming: dict[str, StandbyState], preferred: str | None) -> str | None:
        if preferred is not None and preferred in streaming:
            return preferred
        current = self._db[0] if self._db else None
        if current is not None and current in streaming:
            return current
        if not streaming:
            return None

        def lag(name: str) -> tuple[int, str]:
            value = streaming[name].lag_bytes
            return (value if value is not None else 2**62, name)

        return min(streaming, key=lag)
