"""File sync by periodic rsync pulls from the active's rsync daemon.

The mirrors pull from the source every ``interval`` seconds and on demand; the source only
serves. A mirror's copy is as old as its last pull: unlike Syncthing, nothing is pushed when
the active writes, and the source cannot tell how far its mirrors are, so "in sync" is only
known on a mirror (a dry run shows nothing to change). Each file arrives whole (rsync renames
it into place), but a pull is not atomic across files.

With the cluster's TLS material the mirror reaches the daemon through ``openssl s_client``
(rsync's ``RSYNC_CONNECT_PROG``): only a server whose certificate the cluster CA signed for
the source's address is believed, and the mirror shows its own node certificate, without
which the source's stunnel lets nobody in (:mod:`hacore_plugins.rsync.tls`). The pull keeps
no owner, group, device, special file, set-id bit or symlink that leads out of the tree: a
source (or someone posing as one) cannot plant them on a mirror, which pulls as root.
"""

from __future__ import annotations

import contextlib
import logging
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import attrs

from hacore.backends.filesync import FilesyncBackend, FolderSync, SyncState, directory_keys
from hacore.backends.processes import DetachedProcess, child_environment, host_port, port_taken
from hacore.backends.records import TlsFiles
from hacore.errors import FilesyncError
from hacore_plugins.rsync.daemon import USER, config_text, write_private
from hacore_plugins.rsync.secret import (
    HOME,
    current_secret,
    ensure_secret,
    mark_rotated,
    prepare_home,
    store_secret,
)
from hacore_plugins.rsync.settings import RsyncSettings
from hacore_plugins.rsync.tls import (
    CRL_POLL,
    STUNNEL_LOG,
    STUNNEL_PID,
    RsyncTls,
    failure_reason,
)

log = logging.getLogger(__name__)

CONFIG_FILE = "rsyncd.conf"
SECRETS_FILE = "rsyncd.secrets"
PASSWORD_FILE = "password"
LOG_FILE = "rsyncd.log"
PID_FILE = "rsyncd.pid"
#: what a mirror keeps of the source's metadata: times and permissions without set-id bits;
#: no owner, group, device or special file, no symlink that points out of the tree
PULL_OPTIONS = (
    "-rlpt",
    "--chmod=ug-s",
    "--delete",
    "--no-owner",
    "--no-group",
    "--no-devices",
    "--no-specials",
    "--safe-links",
)

#: an itemized change (``>f.st...... name``, ``cd+++++++++ dir/``) or a deletion
_CHANGE = re.compile(r"^(?:[<>ch.][fdLDS]\S* |\*deleting )")
_STAT = re.compile(r"^(Total file size|Total transferred file size): ([\d,]+) bytes", re.M)


@attrs.frozen
class Pending:
    """What a dry run says a pull would change in one directory."""

    changes: int
    need_bytes: int
    total_bytes: int


class RsyncFilesync(FilesyncBackend):
    """Settings (all optional): ``port`` (8873, the daemon's, on ``host``), ``interval``
    (2 s between pulls), ``password`` (replaces the cluster's generated secret; the same on
    every node), ``io_timeout`` (60 s), ``start_timeout`` (10 s), ``binary``,
    ``stunnel_binary``, ``openssl_binary``. ``tls`` (the node's material) makes the
    transport TLS with the cluster CA at both ends."""

    accepts_tls: ClassVar[bool] = True
    rotates_secret: ClassVar[bool] = True

    def __init__(
        self,
        settings: Mapping[str, Any],
        *,
        node_name: str,
        host: str,
        data_dir: Path,
        directories: Sequence[Path],
        tls: TlsFiles | None = None,
    ) -> None:
        super().__init__(
            settings, node_name=node_name, host=host, data_dir=data_dir, directories=directories
        )
        self.config = RsyncSettings.parse(self.settings)
        self.modules = directory_keys(self.directories)
        self.tls = tls
        self.home = self.data_dir / HOME
        plain = DetachedProcess(
            f"rsync daemon of {node_name}",
            log_path=self.home / LOG_FILE,
            pid_path=self.home / PID_FILE,
            executable_name=Path(self.config.binary).name,
        )
        wrapped = DetachedProcess(
            f"rsync TLS server (stunnel) of {node_name}",
            log_path=self.home / STUNNEL_LOG,
            pid_path=self.home / STUNNEL_PID,
            executable_name=Path(self.config.stunnel_binary).name,
        )
        #: the server this node runs, and the one it ran before TLS was switched on or off
        self.daemon, self._former = (wrapped, plain) if tls is not None else (plain, wrapped)
        self._tls = (
            None
            if tls is None
            else RsyncTls(
                tls,
                self.config,
                node_name=node_name,
                host=host,
                home=self.home,
                rsyncd_conf=self.home / CONFIG_FILE,
                stunnel=wrapped,
            )
        )
        self._lock = threading.Lock()
        self._pull_lock = threading.Lock()
        self._peers: dict[str, str] = {}
        self._source: str | None = None
        self._is_source = False
        self._last_pull: float | None = None
        self._last_error: str | None = None
        self._kick = threading.Event()
        self._kicked_at = 0.0
        self._pull_started: float | None = None
        self._stopping = threading.Event()
        self._timer: threading.Thread | None = None
        self._crl_watch: threading.Thread | None = None

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        RsyncSettings.parse(settings)

    # -- the daemon and the timer ----------------------------------------------------------

    @property
    def url(self) -> str:
        return f"rsync://{host_port(self.host, self.config.port)}"

    def identity(self) -> dict[str, Any]:
        return {"rsync_url": self.url}

    def start(self) -> None:
        prepare_home(self.home)
        # the daemon serves the directories as modules: one missing fails every pull
        for directory in self.modules.values():
            directory.mkdir(parents=True, exist_ok=True)
        if self._former.running():
            self._former.stop(signal.SIGTERM, timeout=10)
        if self._tls is None:
            log.warning(
                "rsync: %s runs without TLS (tls.enabled: false): the files cross the network "
                "in clear text; only the secret keeps non-members out",
                self.node_name,
            )
        else:
            self._tls.check_material()
        self._write_config()
        if self.daemon.pid() is not None:
            if self._tls is not None:
                self._tls.reload()  # the node certificate, re-issued for a new address
        else:
            if port_taken(self.host, self.config.port):
                raise FilesyncError(
                    f"rsync port {self.config.port} on {self.host} is already in use "
                    "by another process"
                )
            if self._tls is not None:
                argv = self._tls.argv()
            else:
                argv = [self.config.binary, "--daemon", "--no-detach"]
                argv.append(f"--config={self.home / CONFIG_FILE}")
            try:
                self.daemon.start(argv)
            except OSError as err:
                raise FilesyncError(f"cannot start {argv[0]}: {err}") from None
            self._wait_listening()
        if self._timer is None:
            self._stopping.clear()
            self._timer = threading.Thread(target=self._pull_forever, name="rsync-puller")
            self._timer.daemon = True
            self._timer.start()
        if self._tls is not None and self._crl_watch is None:
            self._crl_watch = threading.Thread(
                target=self._tls.watch_crl, args=(self._stopping,), name="rsync-crl"
            )
            self._crl_watch.daemon = True
            self._crl_watch.start()

    def use_secret(self, secret: str) -> str | None:
        """The cluster's rotated secret (a node was removed): kept in the home for the next
        start and written where the daemon (which reads its secrets file at each connection)
        and this node's pulls read it, so the next connection either way uses it. It wins
        over a ``password`` setting from now on, at every start too (the removed node knew
        that password); what the removal's answer says of it."""
        prepare_home(self.home)
        store_secret(self.home, secret)
        note = None
        if self.config.password:
            mark_rotated(self.home)
            note = "it replaces filesync.password from node.yaml, which is now ignored"
            log.warning(
                "rsync: %s: the cluster's rotated secret replaces filesync.password from "
                "node.yaml (a removal rotated it; the removed node knew the old one); the "
                "setting is ignored from now on: remove it from node.yaml",
                self.node_name,
            )
        self._write_secret(secret)
        log.info("rsync: %s uses the cluster's rotated secret", self.node_name)
        return note

    def _write_secret(self, secret: str) -> Path:
        secrets = self.home / SECRETS_FILE
        write_private(secrets, f"{USER}:{secret}\n")
        write_private(self.home / PASSWORD_FILE, f"{secret}\n")
        return secrets

    def _write_config(self) -> None:
        secret = current_secret(self.home, self.config.password) or ensure_secret(self.home)
        secrets = self._write_secret(secret)
        tls = self.tls
        text = config_text(
            host=self.host if tls is None else None,
            port=self.config.port if tls is None else None,
            modules=self.modules,
            log_file=self.home / LOG_FILE,
            secrets_file=secrets,
        )
        write_private(self.home / CONFIG_FILE, text)
        if self._tls is not None:
            self._tls.write_stunnel_config()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + self.config.start_timeout
        while True:
            try:
                with socket.create_connection((self.host, self.config.port), timeout=0.5):
                    return
            except OSError:
                pass
            if not self.daemon.running():
                raise FilesyncError(
                    f"{self.daemon.name} exited at start: "
                    + (self.daemon.log_tail(3).replace("\n", " | ") or "no output")
                )
            if time.monotonic() > deadline:
                raise FilesyncError(
                    f"{self.daemon.name} is not listening on "
                    f"{host_port(self.host, self.config.port)} after {self.config.start_timeout:g}s"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        timer, self._timer = self._timer, None
        watch, self._crl_watch = self._crl_watch, None
        self._stopping.set()
        self._kick.set()
        if timer is not None:
            timer.join(timeout=self.config.io_timeout + 10)
        if watch is not None:
            watch.join(timeout=CRL_POLL + 10)
        self.daemon.stop(signal.SIGTERM, timeout=10)

    def _pull_forever(self) -> None:
        while not self._stopping.is_set():
            kicked = self._kick.wait(self.config.interval)
            self._kick.clear()
            if self._stopping.is_set():
                return
            if self._source is None or self._is_source:
                continue
            # A pull that started after the kick (a sync_now) already did what it asked for.
            since = self._kicked_at if kicked else time.monotonic()
            try:
                self._pull(fresh_since=since)
            except FilesyncError as err:
                log.warning("rsync: pull on %s failed: %s", self.node_name, err)

    # -- peers and roles -----------------------------------------------------------------

    def set_peers(self, peers: Mapping[str, Mapping[str, Any]]) -> None:
        parsed: dict[str, str] = {}
        for name, ident in peers.items():
            url = ident.get("rsync_url")
            parts = urlsplit(url) if isinstance(url, str) else None
            if parts is None or parts.scheme != "rsync" or not parts.hostname:
                raise FilesyncError(f"peer {name!r} has no rsync identity (rsync_url): {ident!r}")
            if name != self.node_name:
                parsed[name] = str(url).rstrip("/")
        with self._lock:
            self._peers = parsed

    def become_source(self) -> None:
        with self._lock:
            self._is_source, self._source = True, None
        # A pull that is running finishes; none starts after this.
        with self._pull_lock:
            pass

    def become_mirror(self, source: str) -> None:
        if source == self.node_name:
            raise FilesyncError(f"{self.node_name} cannot mirror itself; use become_source")
        with self._lock:
            if source not in self._peers:
                raise FilesyncError(
                    f"cannot mirror {source}: it is not among this node's rsync peers "
                    f"({', '.join(sorted(self._peers)) or 'none'})"
                )
            self._is_source, self._source = False, source
            self._last_error = None
        self._kicked_at = time.monotonic()
        self._kick.set()

    # -- pulling ---------------------------------------------------------------------------

    def _rsync(self, module: str, directory: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        with self._lock:
            source = self._source
            url = self._peers.get(source or "")
        if source is None or url is None:
            raise FilesyncError(f"{self.node_name} mirrors no source: nothing to pull from")
        parts = urlsplit(url)
        remote = f"rsync://{USER}@{parts.netloc}/{module}/"
        argv = [self.config.binary, *PULL_OPTIONS, *extra]
        argv += [f"--timeout={self.config.io_timeout}", f"--contimeout={self.config.io_timeout}"]
        argv.append(f"--password-file={self.home / PASSWORD_FILE}")
        argv += [remote, f"{directory}/"]
        # rsync obeys RSYNC_PROXY, RSYNC_CONNECT_PROG, RSYNC_PASSWORD...: only ours count
        env = child_environment()
        if self.tls is not None:
            assert parts.hostname is not None
            env["RSYNC_CONNECT_PROG"] = self.connect_command(parts.hostname, parts.port or 873)
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, env=env, timeout=self.config.io_timeout * 4
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise FilesyncError(f"rsync from {source} could not run: {err}") from None
        if done.returncode != 0:
            reason = failure_reason(done.stderr, done.returncode)
            raise FilesyncError(f"rsync of {module} from {source} ({url}) failed: {reason}")
        return done

    def connect_command(self, host: str, port: int) -> str:
        """The ``RSYNC_CONNECT_PROG`` that reaches ``host`` over TLS
        (:meth:`~hacore_plugins.rsync.tls.RsyncTls.connect_command`)."""
        assert self._tls is not None
        return self._tls.connect_command(host, port)

    def sync_now(self) -> None:
        """Pull every directory from the source now; raises :class:`FilesyncError`."""
        self._pull()

    def _pull(self, fresh_since: float | None = None) -> None:
        """Pull, unless a pull started at or after ``fresh_since`` (monotonic)."""
        with self._pull_lock:
            started = self._pull_started
            if fresh_since is not None and started is not None and started >= fresh_since:
                return
            if self._is_source:
                raise FilesyncError(f"{self.node_name} is the source: it serves, it never pulls")
            self._pull_started = time.monotonic()
            try:
                for module, directory in self.modules.items():
                    directory.mkdir(parents=True, exist_ok=True)
                    self._rsync(module, directory)
            except FilesyncError as err:
                self._last_error = str(err)
                raise
            self._last_pull, self._last_error = time.time(), None

    def pending(self) -> dict[str, Pending]:
        """What a pull would change now, per directory (a dry run against the source)."""
        found: dict[str, Pending] = {}
        for module, directory in self.modules.items():
            if not directory.is_dir():
                directory.mkdir(parents=True, exist_ok=True)
            out = self._rsync(module, directory, "--dry-run", "--itemize-changes", "--stats")
            stats = {k: int(v.replace(",", "")) for k, v in _STAT.findall(out.stdout)}
            changes = sum(1 for line in out.stdout.splitlines() if _CHANGE.match(line))
            found[module] = Pending(
                changes=changes,
                need_bytes=stats.get("Total transferred file size", 0),
                total_bytes=stats.get("Total file size", 0),
            )
        return found

    # -- state -----------------------------------------------------------------------------

    def state(self) -> SyncState:
        if self._is_source:
            return SyncState(
                in_sync=True,
                detail=f"source: serves {len(self.modules)} directories at {self.url}",
                folders=tuple(FolderSync(m, True) for m in self.modules),
            )
        if self._source is None:
            return SyncState(in_sync=False, completion=0.0, detail="no role yet")
        last = self._last_pull
        try:
            pending = self.pending()
        except FilesyncError as err:
            return SyncState(in_sync=False, completion=0.0, last_change=last, detail=str(err))
        need = sum(p.need_bytes for p in pending.values())
        total = sum(p.total_bytes for p in pending.values())
        changes = {m: p.changes for m, p in pending.items() if p.changes}
        folders = tuple(
            FolderSync(m, not p.changes and self._last_error is None, p.need_bytes)
            for m, p in pending.items()
        )
        if self._last_error is not None:
            return SyncState(
                in_sync=False,
                completion=_completion(need, total),
                need_bytes=need,
                last_change=last,
                detail=f"last pull failed: {self._last_error}",
                folders=folders,
            )
        if not changes:
            return SyncState(
                in_sync=True,
                last_change=last,
                detail=f"in sync with {self._source}",
                folders=folders,
            )
        return SyncState(
            in_sync=False,
            completion=_completion(need, total),
            need_bytes=need,
            last_change=last,
            detail="; ".join(
                f"{module}: {count} item(s) differ from {self._source}"
                for module, count in changes.items()
            ),
            folders=folders,
        )

    def wait_in_sync(self, timeout: float, *, interval: float = 0.2) -> SyncState:
        """On a mirror, pull until a dry run shows nothing left; the source is always so."""
        deadline = time.monotonic() + timeout
        while True:
            if not self._is_source and self._source is not None:
                # a failed pull is what state() then reports
                with contextlib.suppress(FilesyncError):
                    self.sync_now()
            state = self.state()
            if state.in_sync:
                return state
            if time.monotonic() >= deadline:
                raise FilesyncError(f"files not in sync after {timeout:g}s: {state.detail}")
            time.sleep(interval)


def _completion(need: int, total: int) -> float:
    return 100.0 if total <= 0 else max(0.0, 100.0 * (1 - need / total))
