"""Each agent's share of a removal: the store's CRL into the node's ``crl.pem``, the rotated
replication password into the database's passfile and the agent's credentials, the rotated
failsafe key into the data directory and the rotated file-sync secret into the file sync
engine, and this node's own certificate registered so that a later removal of it can revoke
it and the rotations can seal the secrets to it. The rotated secrets are sealed per member in
the store: each agent opens its own copy with its node key, and the active's agent seals the
current ones to a member that has no copy yet (one that joined, or renewed its certificate,
after the rotation).

The store reads, the registration and the primary's ``ALTER ROLE`` run on a thread of their
own, every few seconds: a store or a database that does not answer must not hold the loop
past its self-fencing deadline, and these reads are not the loop's fenced ones. What they
fetched is applied on the loop (:class:`hacore.agent.membership.Membership` calls :meth:`tick`),
which only writes local files and reloads, as the loop's other work on the database does.
Every failure is logged and retried on the next round; nothing here can stop the loop.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509

from hacore.agent import revocation_store as revoke
from hacore.agent.credentials import ReplicationCredentials
from hacore.agent.failsafe import forget_key, store_key
from hacore.backends.consensus import ConsensusBackend
from hacore.backends.filesync import FilesyncBackend
from hacore.backends.records import TlsFiles
from hacore.backends.replication import ReplicationBackend
from hacore.pki import load_node_certificate, revocation
from hacore.pki.pem import read_certificate

log = logging.getLogger(__name__)
#: seconds a key file must predate the store read that found no rotation before it is taken
#: for a stray: file times come from a coarse clock, a few ms behind ``time.time()``, and a
#: file written just after a read must not be dropped as older than it
MTIME_SLACK = 1.0

#: seconds between two rounds
INTERVAL = 2.0
#: a read that failed (the last value read stays)
_UNREAD = object()


class RevocationSync:
    """``replication`` None: only the store's side is followed (a reader without a database,
    as the unit tests run it); the database's optional abilities are then not called."""

    def __init__(
        self,
        name: str,
        consensus: ConsensusBackend,
        replication: ReplicationBackend | None,
        tls: TlsFiles | None,
        set_credentials: Callable[[ReplicationCredentials], None] | None,
        is_active: Callable[[], bool] = lambda: False,
        *,
        data_dir: Path | None = None,
        filesync: FilesyncBackend | None = None,
    ) -> None:
        self.is_active = is_active
        #: where the rotated failsafe key is kept (None: not followed)
        self.data_dir = data_dir
        self.filesync = filesync if filesync is not None and filesync.rotates_secret else None
        #: the shared secrets' generations applied here, by store key
        self._applied: dict[str, int] = {}
        self._shared: dict[str, revoke.SharedSecret | None] = {}
        #: when each of those was read (wall clock, as file times are)
        self._read_at: dict[str, float] = {}
        self.name = name
        self.consensus = consensus
        self.replication = replication
        self.tls = tls
        self.set_credentials = set_credentials
        self._registered = tls is None
        self._crl: bytes | None = None
        self._generation: int | None = None
        self._primary_generation: int | None = None
        self._failed: dict[str, str] = {}
        #: the reader's last CRL and replication secret, for the loop to apply
        self._fetched: tuple[bytes | None, revoke.ReplicationSecret | None] = (None, None)
        self._removed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ca: x509.Certificate | None = None

    def tick(self, *, removed: bool = False) -> None:
        """From the loop: apply what the reader fetched last; never waits on a server."""
        self._removed = removed
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._read_rounds, name=f"hacore-revocations-{self.name}", daemon=True
            )
            self._thread.start()
        crl, secret = self._fetched
        self._attempt("crl_round", lambda: self._install_crl(crl))
        if not removed:
            self._attempt("secret_round", lambda: self._take_secret(secret))
            shared = dict(self._shared)
            self._attempt("failsafe_round", lambda: self._take_failsafe_key(shared))
            self._attempt("filesync_round", lambda: self._take_filesync_secret(shared))

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _read_rounds(self) -> None:
        while True:
            self._read_once()
            if self._stop.wait(INTERVAL):
                return

    def _read_once(self) -> None:
        removed = self._removed
        crl, secret = self._fetched
        if not removed:
            self._attempt("register", self._register)
        if self.tls is not None and self.tls.ca_file.exists():
            crl = self._attempt("crl_read", lambda: revoke.current_crl(self.consensus), crl)
        if not removed:
            secret = self._attempt("secret_read", lambda: self._read_secret(), secret)
            self._read_shared()
            self._attempt("reseal", functools.partial(self._reseal, secret))
        self._fetched = (crl, secret)

    def _opener(self) -> revoke.Opener | None:
        if self.tls is None or not self.tls.cert_file.exists():
            return None
        return revoke.opener_for(self.name, self.tls)

    def _read_one_shared(self, key: str) -> revoke.SharedSecret | None:
        return revoke.shared_secret(self.consensus, key, self._opener())

    def _reseal(self, secret: revoke.ReplicationSecret | None) -> None:
        """On the active: the current secrets sealed to every member that has no copy."""
        if self.tls is None or not self.tls.ca_file.exists() or not self.is_active():
            return
        opened: list[tuple[str, str, int]] = []
        if secret is not None:
            opened.append((revoke.REPLICATION_SECRET_KEY, secret.password, secret.generation))
        for key, found in self._shared.items():
            if found is not None:
                opened.append((key, found.value, found.generation))
        if not opened:
            return
        to = revoke.recipients(self.consensus, self._ca_certificate())
        for key, value, generation in opened:
            revoke.add_copies(self.consensus, key, value, generation, to)

    def _read_shared(self) -> None:
        wanted = []
        if self.data_dir is not None:
            wanted.append(revoke.FAILSAFE_KEY)
        if self.filesync is not None:
            wanted.append(revoke.FILESYNC_SECRET_KEY)
        for key in wanted:
            started = time.time()
            found = self._attempt(
                f"read {key}",
                functools.partial(self._read_one_shared, key),
                _UNREAD,
            )
            if found is not _UNREAD:
                # None: read, and never rotated
                self._shared[key] = found
                self._read_at[key] = started

    def _new(self, shared: dict[str, revoke.SharedSecret | None], key: str) -> str | None:
        found = shared.get(key)
        if found is None or self._applied.get(key) == found.generation:
            return None
        return found.value

    def _applied_now(self, shared: dict[str, revoke.SharedSecret | None], key: str) -> None:
        found = shared[key]
        assert found is not None
        if key in self._applied:
            log.info("%s: took the rotated %s (generation %d)", self.name, key, found.generation)
        self._applied[key] = found.generation

    def _take_failsafe_key(self, shared: dict[str, revoke.SharedSecret | None]) -> None:
        if self.data_dir is None:
            return
        if revoke.FAILSAFE_KEY in shared and shared[revoke.FAILSAFE_KEY] is None:
            # this cluster never rotated it: a key file left by another cluster (a data
            # directory used again) would sign with a key nobody else has
            read_at = self._read_at.get(revoke.FAILSAFE_KEY, 0.0)
            if forget_key(self.data_dir, older_than=read_at - MTIME_SLACK):
                log.warning("%s: dropped a failsafe key this cluster never made", self.name)
            return
        value = self._new(shared, revoke.FAILSAFE_KEY)
        if value is None:
            return
        store_key(self.data_dir, value)
        self._applied_now(shared, revoke.FAILSAFE_KEY)

    def _take_filesync_secret(self, shared: dict[str, revoke.SharedSecret | None]) -> None:
        value = self._new(shared, revoke.FILESYNC_SECRET_KEY)
        if value is None or self.filesync is None:
            return
        self.filesync.use_secret(value)
        self._applied_now(shared, revoke.FILESYNC_SECRET_KEY)

    def _attempt(self, what: str, step: Callable[[], Any], default: Any = None) -> Any:
        try:
            result = step()
        except Exception as err:  # a database or store that does not answer: next round
            message = f"{what} failed: {err}"
            if self._failed.get(what) != message:
                log.warning("%s: %s", self.name, message)
            self._failed[what] = message
            return default
        self._failed.pop(what, None)
        return result

    def _register(self) -> None:
        if self._registered or self.tls is None or not self.tls.cert_file.exists():
            return
        node = load_node_certificate(self.tls.cert_file.parent)
        revoke.register_certificate(self.consensus, self.name, node.certificate)
        self._registered = True

    def _install_crl(self, data: bytes | None) -> None:
        if self.tls is None or data is None or data == self._crl:
            return
        ca = read_certificate(self.tls.ca_file)
        if revocation.install_crl(revocation.crl_path(self.tls.ca_file), data, ca):
            log.info("%s: the cluster's revocation list changed", self.name)
            if self.replication is not None:
                self.replication.reload_tls()
        self._crl = data

    def _read_secret(self) -> revoke.ReplicationSecret | None:
        secret = revoke.replication_secret(self.consensus, self._opener())
        if secret is not None:
            self._as_primary(secret)
        return secret

    def _take_secret(self, secret: revoke.ReplicationSecret | None) -> None:
        if secret is None or secret.generation == self._generation:
            return
        if self.replication is not None:
            self.replication.remember_password(secret.user, secret.password)
        if self.set_credentials is not None:
            self.set_credentials(ReplicationCredentials(secret.user, secret.password))
        if self._generation is not None:
            log.info(
                "%s: took the rotated replication password (generation %d)",
                self.name,
                secret.generation,
            )
        self._generation = secret.generation

    def _as_primary(self, secret: revoke.ReplicationSecret) -> None:
        """Once per generation while this node's database is a primary: the role gets the
        store's password. A failover right after a rotation may have lost the ``ALTER ROLE``
        (asynchronous replication), while every member's passfile already has the new one."""
        if self._primary_generation == secret.generation or not self.is_active():
            return
        if self.replication is not None and self.replication.apply_password(
            secret.user, secret.password
        ):
            self._primary_generation = secret.generation

    def _ca_certificate(self) -> x509.Certificate:
        assert self.tls is not None
        if self._ca is None:
            self._ca = read_certificate(self.tls.ca_file)
        return self._ca
