"""Which credentials a node's API takes, from the bootstrap token to the cluster's.

A node that belongs to no cluster, or runs a start or join, takes only the bootstrap token
(:mod:`hacore.cluster.bootstrap_token`). The operation ends in one step: the API takes the
cluster's credentials and the token file is deleted. The CLI that runs the operation learns
that it ended only from its next poll, which still carries the token: refused, it would be
a "failed API login" in the log of every new node. So the token keeps the read role (the
cluster view, nothing that changes anything) for :data:`READ_GRACE` seconds more, from
memory only, then opens nothing. The cluster's credentials are taken from the same moment:
at no time does the node refuse both.

A start also keeps its admin password in memory until it is done: the CA key is then sealed
under it into the store (:mod:`hacore.cluster.ca_key`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from hacore.backends.consensus import ConsensusBackend
from hacore.cluster import ca_key
from hacore.cluster.bootstrap_token import new_token, remove_token
from hacore.config.node import ApiAuth, ApiSettings, ApiUser, NodeConfig
from hacore.errors import HacoreError

log = logging.getLogger("hacore.cluster")

#: seconds the bootstrap token still reads the cluster view after the operation is done:
#: the CLI's last polls come within a second, on a busy machine within a few
READ_GRACE = 60.0


class NodeCredentials:
    """The bootstrap token of a start or join, and the start's password until it is sealed.

    Not thread-safe: the node service calls it under its lock.
    """

    def __init__(self, data_dir: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.data_dir = data_dir
        self._clock = clock
        self._bootstrap: ApiAuth | None = None
        #: while the token only reads (the operation is done): until when
        self._read_until: float | None = None
        self._start_password: str | None = None

    def issue_token(self) -> None:
        """A start or join is to run or resume: a fresh token, the only credential taken."""
        _, self._bootstrap = new_token(self.data_dir)
        self._read_until = None

    def keep_start_password(self, password: str) -> None:
        self._start_password = password

    def settings(self, bootstrapping: bool, config: NodeConfig) -> ApiSettings:
        """What the API takes: the token alone while the operation runs; then the cluster's
        credentials, with the token as a read-only user during its grace."""
        if bootstrapping:
            return ApiSettings(auth=self._bootstrap)
        api = config.api
        token = self._bootstrap
        if token is None or self._read_until is None:
            return api
        taken = {user.username for user in api.users}
        if api.auth is not None:
            taken.add(api.auth.username)
        if token.username in taken:
            return api
        reader = ApiUser(token.username, token.password_hash, role="read")
        return attrs.evolve(api, users=(*api.users, reader))

    def operation_done(self, config: NodeConfig, consensus: ConsensusBackend | None) -> None:
        """The node is a member: the start's CA key sealed, the token file deleted, the token
        kept in memory to read for :data:`READ_GRACE` seconds."""
        password, self._start_password = self._start_password, None
        if password is not None and consensus is not None and config.tls.enabled:
            try:
                ca_key.seal_clear_key(config, consensus, password)
            except HacoreError as err:
                log.warning(
                    "the CA key stays in %s until an admin operation seals it: %s",
                    ca_key.clear_key_file(self.data_dir),
                    err,
                )
        remove_token(self.data_dir)
        if self._bootstrap is not None:
            self._read_until = self._clock() + READ_GRACE

    def retire_due(self) -> bool:
        """True once the token's grace is over (it is then dropped): the API must be given
        the new :meth:`settings`."""
        if self._read_until is None or self._clock() < self._read_until:
            return False
        self._bootstrap = None
        self._read_until = None
        return True
