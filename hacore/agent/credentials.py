"""The replication login standbys use, and the one holder of it everyone who needs it shares.

Kept apart from the executor: ``cluster start``/``join``, a removal's password rotation and the
transitions all read or replace it, and none of them should need the executor to do so.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class ReplicationCredentials:
    """How standbys log in to the active's database (created by ``cluster start``)."""

    user: str
    password: str = attrs.field(repr=False)


@attrs.define
class Credentials:
    """This node's replication login, shared by whoever needs it: set by ``cluster start`` or
    ``join``, replaced when a removal rotates the password (hacore/agent/revocation_sync.py)."""

    current: ReplicationCredentials | None = attrs.field(default=None, repr=False)

    def set(self, credentials: ReplicationCredentials) -> None:
        self.current = credentials
