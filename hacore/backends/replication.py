"""The replication family: the database that the active writes and the standbys mirror.

A backend manages one node's database server: it creates the first primary, clones standbys
from the active, follows a (new) leader, promotes, fences and rewinds. Long operations report
progress through a callback so the CLI can show it; none of them may leave the node's data
half-replaced.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import attrs

from hacore.backends.declarations import Declarations
from hacore.errors import ReplicationError

#: ``progress(done, total)`` in bytes; ``total`` is 0 when unknown.
ProgressCallback = Callable[[int, int], None]


@attrs.frozen
class ReplicationSource:
    """Where a standby streams from: the active's address and the replication credentials."""

    node_name: str
    host: str
    port: int
    user: str
    password: str = attrs.field(repr=False)


@attrs.frozen
class StandbyState:
    """One standby as the primary sees it."""

    name: str
    state: str
    lag_bytes: int | None
    sync: bool = False
    #: The database's own word: "async", "potential", "sync" or "quorum" (PostgreSQL's
    #: ``sync_state``); with a quorum ("ANY 1 (a, b)") no single standby is guaranteed.
    sync_state: str = "async"
    #: How long the standby takes to replay what the primary writes, in seconds (PostgreSQL's
    #: ``replay_lag``; 0 once it caught up and nothing is written); None when unknown.
    lag_seconds: float | None = None


class ReplicationRole(enum.StrEnum):
    """What the local database server is, as its backend reads it.

    A ``StrEnum`` so that the API's JSON, logs and messages show the same words as before the
    role was typed ("primary", "standby", ...), while the agent compares enum members, never
    free text.
    """

    PRIMARY = "primary"
    STANDBY = "standby"
    STOPPED = "stopped"
    #: not read (in time): see :attr:`ReplicationStatus.known` and :data:`UNKNOWN_STATUS`
    UNKNOWN = "unknown"


def _role(value: ReplicationRole | str) -> ReplicationRole:
    """A plugin written before the role was typed returns the word: it becomes the member, and
    a word that is no role fails here instead of being read as "not a primary" later."""
    return ReplicationRole(value)


@attrs.frozen
class ReplicationStatus:
    """The local database's state, read in one round trip."""

    running: bool
    role: ReplicationRole = attrs.field(converter=_role)
    writable: bool = False
    position: int | None = None
    timeline: int | None = None
    following: str | None = None
    standbys: tuple[StandbyState, ...] = ()
    #: The local history cannot simply follow a leader (it was a primary, or it went past the
    #: leader's fork point): only ``rewind`` brings it back.
    needs_rewind: bool = False
    #: A changed setting waits for a restart of the server (PostgreSQL's ``pending_restart``);
    #: None for a backend that cannot tell.
    pending_restart: bool | None = None

    @property
    def known(self) -> bool:
        """False for a status that could not be read (in time).

        DESIGN rule 7: a database that does not answer is neither stopped nor running, neither
        writable nor read-only. Code that branches on ``running``, ``role`` or ``writable``
        must look at this first.
        """
        return self.role is not ReplicationRole.UNKNOWN


#: What the agent reads when ``status()`` raises or does not answer within ``retry_timeout``.
UNKNOWN_STATUS = ReplicationStatus(running=False, role=ReplicationRole.UNKNOWN)


class ReplicationBackend(Declarations, abc.ABC):
    """One node's database. With ``accepts_tls`` it takes the node's ``tls`` material for
    replication; a database without it cannot be used while ``tls.enabled`` is true.

    The optional abilities at the end (password rotation, TLS reload) have defaults that say
    "not supported here", which the callers handle: override them to offer them.
    """

    #: True when :meth:`rotate_password` is implemented: ``cluster nodes remove`` then gives
    #: the replication user a new password (the removed node knew the old one). Read before
    #: the new password is stored, so a backend without it changes nothing.
    rotates_password: ClassVar[bool] = False

    def __init__(
        self, settings: Mapping[str, Any], *, node_name: str, host: str, data_dir: Path
    ) -> None:
        self.settings = dict(settings)
        self.node_name = node_name
        self.host = host
        self.data_dir = Path(data_dir)

    def address(self) -> tuple[str, int]:
        """Where the other nodes reach the local database: ``(host, port)``.

        Published in the member record: standbys stream from it and the agent's health check
        connects to it. The default is the node's host and an integer ``port`` setting; a
        backend whose port has a default or lives elsewhere overrides it.
        """
        port = self.settings.get("port")
        if isinstance(port, bool) or not isinstance(port, int):
            raise ReplicationError(
                f"{type(self).__name__} has no integer 'port' setting: it must implement "
                "address() to say where the other nodes reach its database"
            )
        return (self.host, port)

    @abc.abstractmethod
    def is_initialized(self) -> bool:
        """True when the node already holds a database (a join refuses such a node)."""

    @abc.abstractmethod
    def bootstrap(self, *, replication_password: str, allowed_hosts: Sequence[str]) -> None:
        """Create a new primary here and start it."""

    @abc.abstractmethod
    def clone(self, source: ReplicationSource, *, progress: ProgressCallback | None = None) -> None:
        """Copy the active's database into a temporary directory, swap it in on success only."""

    @abc.abstractmethod
    def start(self, *, follow: ReplicationSource | None = None) -> None:
        """Start the local server: as a standby of ``follow``, or as it was.

        Never makes a writable primary (only ``bootstrap`` and ``promote`` do): a former
        primary started without ``follow`` comes up read-only, so a node that restarts without
        the lease cannot accept writes.
        """

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the local server quickly (clients cut); idempotent."""

    def restart_in_place(self) -> None:
        """Stop the local server and start it again in the role it had: a primary comes back
        a writable primary, on the same timeline (maintenance mode's ``nodes restart
        --in-place`` on the active; the caller makes sure the cluster is paused). A backend
        that cannot says so."""
        raise ReplicationError(f"{type(self).__name__} cannot restart its database in place")

    @abc.abstractmethod
    def follow(self, source: ReplicationSource) -> None:
        """Stream from ``source`` (a new leader), without a restart where the database allows."""

    @abc.abstractmethod
    def promote(self, *, timeout: float) -> None:
        """Make the local standby a primary and wait until it accepts writes."""

    @abc.abstractmethod
    def fence(self) -> None:
        """Refuse new writes at once and cut client sessions."""

    @abc.abstractmethod
    def rewind(self, source: ReplicationSource) -> None:
        """Make a former primary follow ``source``; re-clone when a rewind is impossible."""

    @abc.abstractmethod
    def status(self) -> ReplicationStatus:
        """Role, position, timeline and per-standby lag.

        Raise :class:`~hacore.errors.ReplicationError` when the server runs but does not
        answer: the state is then *unknown* (DESIGN rule 7), and a guess such as "running,
        not writable" would make the agent act on it (finish a promotion that is not
        half-done, rewrite the status key). The agent also gives up waiting after
        ``retry_timeout`` and reads the status as unknown.
        """

    @abc.abstractmethod
    def record_fencing_token(self, token: int) -> None:
        """Store the leadership's fencing token in the database, at promotion."""

    @abc.abstractmethod
    def fencing_token(self) -> int | None:
        """The token last recorded in the database."""

    @abc.abstractmethod
    def set_synchronous(self, standbys: Sequence[str], *, strict: bool) -> None:
        """Require one of ``standbys`` to confirm each commit (none: asynchronous unless strict)."""

    @abc.abstractmethod
    def drop_member(self, node_name: str) -> None:
        """Forget a removed standby: its replication slot and access entry."""

    def allow_member(self, node_name: str, host: str) -> None:
        """Let member ``node_name`` at ``host`` connect (replication and clients); idempotent.

        Called on every node that holds a database, for every member, before a joiner clones.
        On a node that holds none yet, a backend may accept it or raise
        :class:`~hacore.errors.ReplicationError`; nothing else. Backends without access control
        of their own need not implement it.
        """

    # -- optional abilities ------------------------------------------------------------------

    def rotate_password(self, user: str, password: str) -> None:
        """Give ``user`` ``password`` on this primary (declare ``rotates_password``)."""
        raise ReplicationError("this replication backend cannot rotate its password")

    def apply_password(self, user: str, password: str) -> bool:
        """Give ``user`` the cluster's rotated ``password`` if this is a primary; False when it
        was not applied here (a standby, or a backend without password rotation)."""
        return False

    def remember_password(self, user: str, password: str) -> None:
        """Use ``password`` for ``user`` at the next connection to the primary (the cluster
        rotated it). The default does nothing."""

    def reload_tls(self) -> None:
        """The node's TLS files (the revocation list above all) changed on disk: make the
        database read them again. The default does nothing."""

    def prepare_handover(self, *, timeout: float) -> None:
        """Called on the active before a planned handover, while it still takes writes: do
        now, within ``timeout`` seconds, what would otherwise make :meth:`fence` slow while
        nobody can write (PostgreSQL: a checkpoint, so that the fast shutdown's own
        checkpoint has little left to write). Raise :class:`~hacore.errors.ReplicationError`
        when it fails or runs out of time: the agent logs it and steps down all the same.
        The default does nothing: a database whose stop writes little has nothing to do
        ahead of it."""

    def apply_parameters(self, parameters: Mapping[str, str]) -> None:
        """The cluster-wide server parameters changed (``cluster config set``): use
        ``parameters`` from now on and make a running server read them again (a reload); one
        that needs a restart shows as ``pending_restart`` in :meth:`status`. The default
        does nothing: a backend without server parameters has none to apply."""

    #: True when the backend implements ``hacore.cluster.snapshot.DatabaseSnapshots`` (a
    #: logical dump on the active, loaded into a new primary: ``hacore snapshot create`` and
    #: ``restore``, docs/snapshots.md); both commands refuse a backend without it.
    takes_snapshots: ClassVar[bool] = False
