"""File sync through Syncthing: send-only folders on the active, receive-only on standbys.

Each directory is one Syncthing folder, shared with every peer. The active's folders are
*send only* (nothing a standby does reaches it), the standbys' are *receive only* (they
never announce their own changes). A role change flips the folder type, then settles the
state explicitly instead of trusting the folder to re-evaluate itself (Syncthing issue 6864:
after a type change, items a receive-only folder had changed locally stayed flagged and the
folder reported "up to date"):

- becoming the source: make the folders send only, scan, then *override*: this node's files
  become the newest version everywhere, whatever a peer announced before;
- becoming a mirror: make the folders receive only, scan, then *revert*: whatever only this
  node has (files the old active wrote and never sent) goes, the source's version comes.

Syncthing is always (re)started with receive-only folders, so a node that comes back after
a crash announces nothing until it is told its role. An
:class:`~hacore_plugins.syncthing.enforcer.Enforcer` thread keeps the roles true afterwards.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import signal
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from hacore.atomic_files import write_atomic
from hacore.backends.filesync import FilesyncBackend, SyncState, directory_keys
from hacore.backends.log_files import trim_log
from hacore.backends.processes import DetachedProcess, host_port, port_taken
from hacore.backends.records import TlsFiles
from hacore.errors import FilesyncError, HacoreError
from hacore_plugins.syncthing import first_copy, report
from hacore_plugins.syncthing import home as st_home
from hacore_plugins.syncthing.api import SyncthingApi
from hacore_plugins.syncthing.change_scan import ChangeScanner
from hacore_plugins.syncthing.enforcer import Enforcer
from hacore_plugins.syncthing.folders import (
    RECEIVEONLY,
    SENDONLY,
    FolderPolicy,
    Peer,
    desired_config,
    dials,
)
from hacore_plugins.syncthing.gaps import Gap, mirror_gaps, source_gaps
from hacore_plugins.syncthing.redial import Redials, with_redial
from hacore_plugins.syncthing.seed import Seeder, bare, fill, source_index_known
from hacore_plugins.syncthing.settings import SyncthingSettings

log = logging.getLogger(__name__)

LOG_FILE = "syncthing.log"
PID_FILE = "syncthing.pid"
MARKER = ".stfolder"
#: written by the source into each folder (:meth:`SyncthingFilesync._mark_source`)
SOURCE_FILE = ".hacore-source"
#: seconds one scan may take (it hashes every changed file)
SCAN_TIMEOUT = 600.0
#: Syncthing environment: no default folder, no upgrades; STHASHING (st_home.hashing) names
#: the SHA-256 code, so Syncthing runs no hashing benchmark at start (1.4 s -> 0.5 s)
ENV = {"STNODEFAULTFOLDER": "1", "STNOUPGRADE": "1"}


class Role(enum.Enum):
    NONE = "none"
    SOURCE = "source"
    MIRROR = "mirror"


class SyncthingFilesync(FilesyncBackend):
    """Settings (all optional): ``listen_port`` (22000, on ``host``), ``home``
    (``<data_dir>/syncthing``), ``binary``, ``rescan_interval`` (300 s), ``watcher_delay``
    (1 s), ``scan_on_change`` (true), ``enforce_interval`` (2 s), ``start_timeout`` (30 s),
    ``request_timeout`` (10 s), ``max_send_kbps`` and ``max_recv_kbps`` (0: unlimited),
    ``low_priority`` (false: not Syncthing's nice 9 and lower I/O priority), ``seed`` (false)
    and ``seed_port`` (22001): with ``tls`` (the node's material), an empty mirror's first
    copy by rsync over TLS from the source (:mod:`.seed`).
    ``api_url`` + ``api_key`` use a Syncthing someone else runs instead. The instance hacore
    runs answers its API on ``<home>/api.sock`` only; ``api_port``/``gui_port`` are accepted
    and ignored."""

    narrows_to_peers: ClassVar[bool] = True
    accepts_tls: ClassVar[bool] = True

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
        self.config = SyncthingSettings.parse(self.settings)
        self.folders = directory_keys(self.directories)
        self.home = self.config.home or self.data_dir / "syncthing"
        self.process = DetachedProcess(
            f"syncthing of {node_name}",
            log_path=self.home / LOG_FILE,
            pid_path=self.home / PID_FILE,
            executable_name=Path(self.config.binary).name,
        )
        self.policy = FolderPolicy(self.config.watcher_delay, self.config.rescan_interval)
        self._lock = threading.RLock()
        self._api: SyncthingApi | None = None
        self._enforcer: Enforcer | None = None
        self._api_key: str | None = None
        self._change_scan: ChangeScanner | None = None
        self._device_id: str | None = None
        self._peers: dict[str, Peer] = {}
        #: the peers this node dials and calls again while not connected (:mod:`.redial`)
        self._redials = Redials()
        #: empty folders paused until a role (become_mirror decides on a seed)
        self._held: set[str] = set()
        self._role = Role.NONE
        self._source: str | None = None
        self._seeder = (
            Seeder(
                tls,
                node_name=node_name,
                host=host,
                port=self.config.seed_port,
                home=self.home / "seed",
                folders=self.folders,
                bwlimit_kbps=self.config.max_recv_kbps,
            )
            if tls is not None and self.config.seed and self.config.managed
            else None
        )

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        SyncthingSettings.parse(settings)

    # -- the instance --------------------------------------------------------------------

    @property
    def api_url(self) -> str:
        if self.config.api_url is not None:
            return self.config.api_url
        return f"unix://{st_home.socket_path(self.home)}"

    def identity(self) -> dict[str, Any]:
        device_id = self._device_id
        if device_id is None and self.config.managed and (self.home / st_home.CONFIG).exists():
            device_id = st_home.device_id(self.config.binary, self.home)
        if device_id is None:
            raise FilesyncError(f"Syncthing of {self.node_name} has no device ID yet: start it")
        address = f"tcp://{host_port(self.host, self.config.listen_port)}"
        seed = {} if self._seeder is None else {"seed_address": self._seeder.address}
        return {"device_id": device_id, "address": address, **seed}

    def start(self) -> None:
        with self._lock:
            if self._api is not None:
                return
            # Folders start receive only; become_source or become_mirror gives the role.
            self._role, self._source = Role.NONE, None
            started = False
            if not self.config.managed:
                assert self.config.api_key is not None
                key = self.config.api_key
            elif self.process.running() and st_home.socket_path(self.home).is_socket():
                key = st_home.api_key(self.home)
            else:
                if self.process.running():
                    # an older hacore's, its API on a TCP port: make it answer on the socket
                    self.process.stop(signal.SIGTERM, timeout=15)
                key, started = self._start_managed(), True
            api = SyncthingApi(self.api_url, key, timeout=self.config.request_timeout)
            try:
                self._wait_for_api(api)
                self._device_id = api.my_id()
                self._api = api
                self._redials.watch(self._dialed())
                self._apply()
            except BaseException:
                self._api = None
                api.close()
                if started:
                    with contextlib.suppress(HacoreError):
                        self.process.stop(signal.SIGKILL, timeout=5)
                raise
            self._api_key = key
            enforcer_api = SyncthingApi(self.api_url, key, timeout=self.config.request_timeout)
            self._enforcer = Enforcer(
                enforcer_api,
                self._enforce,
                self.config.enforce_interval,
                self._redials.note,
                self._redials.wake_in,
            )
            self._enforcer.start()

    def _start_managed(self) -> str:
        """Set up the home directory (keys once, config.xml every time), start Syncthing."""
        if port_taken(self.host, self.config.listen_port):
            raise FilesyncError(
                f"Syncthing listen port {self.config.listen_port} on {self.host} is already in "
                "use by another process"
            )
        if {"api_port", "gui_port"} & set(self.settings):
            log.warning(
                "syncthing: api_port/gui_port are ignored: the API of %s listens on %s only",
                self.node_name,
                self.api_url,
            )
        st_home.generate(self.config.binary, self.home)
        first_copy.recover(self.config.binary, self.home, self.node_name)
        own_id = st_home.device_id(self.config.binary, self.home)
        key = st_home.harden(
            self.home,
            node_name=self.node_name,
            own_id=own_id,
            host=self.host,
            api_socket=st_home.socket_path(self.home),
            listen_port=self.config.listen_port,
            max_send_kbps=self.config.max_send_kbps,
            max_recv_kbps=self.config.max_recv_kbps,
            low_priority=self.config.low_priority,
            receive_only=self.folders,
        )
        argv = [self.config.binary, "serve", "--no-browser", "--no-upgrade"]
        argv += ["--home", str(self.home), "--logflags=3"]
        trim_log(self.process.log_path)  # bounded at each start (hacore.backends.log_files)
        try:
            self.process.start(argv, env={**ENV, "STHASHING": st_home.hashing()})
        except OSError as err:
            raise FilesyncError(f"cannot start {self.config.binary}: {err}") from None
        return key

    def _wait_for_api(self, api: SyncthingApi) -> None:
        deadline = time.monotonic() + self.config.start_timeout
        while not api.ping():
            if self.config.managed and not self.process.running():
                raise FilesyncError(
                    f"Syncthing of {self.node_name} exited at start: "
                    + (st_home.log_problem(self.process.log_path) or "it logged nothing")
                )
            if time.monotonic() > deadline:
                tail = st_home.log_problem(self.process.log_path) if self.config.managed else ""
                raise FilesyncError(
                    f"Syncthing API at {api.base_url} did not answer within "
                    f"{self.config.start_timeout:g}s"
                    + (f"; its log ends with: {tail}" if tail else "")
                )
            time.sleep(0.1)

    def stop(self) -> None:
        enforcer, self._enforcer = self._enforcer, None
        if enforcer is not None:
            enforcer.request_stop()
        with self._lock:
            self._stop_change_scan()
            if self._seeder is not None:
                self._seeder.stop_serving()
            api, self._api = self._api, None
            if api is not None:
                api.close()
            if self.config.managed:
                # SIGTERM to the group reaches the monitor and the Syncthing it runs.
                self.process.stop(signal.SIGTERM, timeout=15)
                # Stopped cleanly: what its database lists is written, so once on disk
                # nothing needs checking again at the next start.
                for folder in first_copy.left_over(self.home):
                    with contextlib.suppress(OSError, KeyError):  # the next start checks it
                        first_copy.flush(self.folders[folder])
                        first_copy.end(self.home, folder)
        if enforcer is not None:
            enforcer.stop()

    def _require_api(self) -> SyncthingApi:
        if self._api is None:
            raise FilesyncError(f"Syncthing of {self.node_name} is not started")
        return self._api

    # -- configuration -------------------------------------------------------------------

    def set_peers(self, peers: Mapping[str, Mapping[str, Any]]) -> None:
        parsed: dict[str, Peer] = {}
        for name, ident in peers.items():
            device_id, address = ident.get("device_id"), ident.get("address")
            seed = ident.get("seed_address")
            if not isinstance(device_id, str) or not isinstance(address, str):
                raise FilesyncError(
                    f"peer {name!r} has no Syncthing identity (device_id and address): {ident!r}"
                )
            if name != self.node_name and device_id != self._device_id:
                parsed[name] = Peer(
                    name, device_id, address, seed if isinstance(seed, str) else None
                )
        with self._lock:
            known = {p.device_id for p in self._peers.values()}
            self._peers = parsed
            if self._api is not None:
                self._redials.watch(self._dialed() - known)
                self._apply()

    def _apply(self) -> None:
        """Make Syncthing's devices and folders match the peers and directories."""
        api = self._require_api()
        assert self._device_id is not None
        for path in self.folders.values():
            path.mkdir(parents=True, exist_ok=True)
            (path / MARKER).mkdir(exist_ok=True)
        current = api.config()
        # empty folders wait, paused, for a role (and a seed, .seed) before any copy begins
        hold = self.config.managed and self._role is Role.NONE
        self._held = {f for f, path in self.folders.items() if hold and bare(path)}
        wanted = desired_config(
            current,
            own_id=self._device_id,
            peers=self._peers,
            folders=self.folders,
            new_folder_type=SENDONLY if self._role is Role.SOURCE else RECEIVEONLY,
            policy=self.policy,
            managed=self.config.managed,
            paused=self._held,
            redial=self._redials.counts(),
        )
        if wanted != current:
            api.put_config(wanted)

    def _dialed(self) -> set[str]:
        """The peers (device IDs) this node's Syncthing calls (:func:`.folders.dials`)."""
        assert self._device_id is not None
        own, managed = self._device_id, self.config.managed
        return {p.device_id for p in self._peers.values() if dials(own, p.device_id, managed)}

    def _redial(self, api: SyncthingApi) -> None:
        """Call again the peers this node dials that are not connected (:mod:`.redial`):
        only their addresses change, as :meth:`_apply` would write them."""
        connections = api.connections()
        connected = {d for d, c in connections.items() if c.get("connected")}
        by_id = {p.device_id: p for p in self._peers.values()}
        for device, count in self._redials.due(self._dialed(), connected).items():
            api.patch_device(device, {"addresses": [with_redial(by_id[device].address, count)]})

    def _folder_types(self, api: SyncthingApi) -> dict[str, str]:
        return {
            str(f["id"]): str(f.get("type"))
            for f in api.config().get("folders", [])
            if f.get("id") in self.folders
        }

    def _set_type(self, api: SyncthingApi, folder: str, kind: str) -> None:
        api.patch_folder(folder, {"type": kind})

    # -- roles ---------------------------------------------------------------------------

    def become_source(self) -> None:
        with self._lock:
            api = self._require_api()
            types = self._folder_types(api)
            for folder in self.folders:
                if types.get(folder) != SENDONLY or folder in self._held:
                    api.patch_folder(folder, {"type": SENDONLY, "paused": False})
            self._role, self._source, self._held = Role.SOURCE, self.node_name, set()
            self._start_change_scan()
            for folder, path in self.folders.items():
                self._end_first_copy(api, folder)
                self._mark_source(path)
                api.wait_running(folder, self.config.start_timeout)
                api.scan_when_ready(folder, self.config.start_timeout, SCAN_TIMEOUT)
                api.override(folder)
            if self._seeder is not None:
                self._seeder.serve()
        log.info("syncthing: %s is the source of %s", self.node_name, ", ".join(self.folders))

    def _start_change_scan(self) -> None:
        """Scan what the source's writers finish at once (:mod:`.change_scan`); without
        it (``scan_on_change: false``, or inotify refusing) Syncthing's watcher still does."""
        if not self.config.scan_on_change or self._change_scan is not None:
            return
        assert self._api_key is not None
        api = SyncthingApi(self.api_url, self._api_key, timeout=self.config.request_timeout)
        scanner = ChangeScanner(api, self.folders, timeout=SCAN_TIMEOUT)
        try:
            scanner.start()
        except OSError as err:
            scanner.stop()
            log.warning(
                "syncthing: cannot watch %s for changes (%s); Syncthing's watcher announces "
                "them after %s s",
                ", ".join(str(p) for p in self.folders.values()),
                err,
                self.config.watcher_delay,
            )
            return
        self._change_scan = scanner

    def _stop_change_scan(self) -> None:
        scanner, self._change_scan = self._change_scan, None
        if scanner is not None:
            scanner.stop()

    def _mark_source(self, path: Path) -> None:
        """Name this node in a file of the folder, so the source's index is never empty.

        A mirror tells "the source's index has not arrived" from "the source has nothing" by
        the source's sequence it knows: 0 until an index came. Syncthing does not index its
        own ``.stfolder`` marker, so an empty folder would look like one never announced.
        """
        marker = path / SOURCE_FILE
        text = f"{self.node_name}\n"
        with contextlib.suppress(OSError):
            if marker.read_text() == text:
                return
        write_atomic(marker, text)

    def become_mirror(self, source: str) -> None:
        if source == self.node_name:
            raise FilesyncError(f"{self.node_name} cannot mirror itself; use become_source")
        with self._lock:
            if source not in self._peers:
                raise FilesyncError(
                    f"cannot mirror {source}: it is not among this node's Syncthing peers "
                    f"({', '.join(sorted(self._peers)) or 'none'})"
                )
            api = self._require_api()
            types = self._folder_types(api)
            self._stop_change_scan()
            if self._seeder is not None:
                self._seeder.stop_serving()
            for folder in self.folders:
                if types.get(folder) != RECEIVEONLY:
                    self._set_type(api, folder, RECEIVEONLY)
            self._role, self._source = Role.MIRROR, source
            for folder in self.folders:
                held = folder in self._held
                path, peer = self.folders[folder], self._peers[source]
                fill(self._seeder, api, folder, path, peer, home=self.home, held=held)
                api.wait_running(folder, self.config.start_timeout)
                api.scan_when_ready(folder, self.config.start_timeout, SCAN_TIMEOUT)
                status = api.folder_status(folder)
                if status.get("receiveOnlyTotalItems", 0):
                    # before the source's index, a revert deletes: the enforcer does it then
                    if source_index_known(api, folder, self._peers, source):
                        api.revert(folder)
                elif self._empty(status):
                    self._begin_first_copy(api, folder)
        log.info("syncthing: %s mirrors %s", self.node_name, source)

    @staticmethod
    def _empty(status: Mapping[str, Any]) -> bool:
        return not any(
            status.get(k, 0) for k in ("localFiles", "localDirectories", "localSymlinks")
        )

    def _begin_first_copy(self, api: SyncthingApi, folder: str) -> None:
        """An empty mirror fills without an fsync per file (:mod:`.first_copy`)."""
        if not self.config.managed or first_copy.marked(self.home, folder):
            return
        first_copy.begin(self.home, folder)
        self._set_fsync(api, folder, on=False)
        log.info("syncthing: %s receives a first copy of %s", self.node_name, folder)

    def _end_first_copy(self, api: SyncthingApi, folder: str) -> None:
        """Per-file fsync back on, everything received so far on disk, then the mark goes."""
        if not self.config.managed or not first_copy.marked(self.home, folder):
            return
        self._set_fsync(api, folder, on=True)
        first_copy.flush(self.folders[folder])
        first_copy.end(self.home, folder)
        log.info("syncthing: the first copy of %s on %s is on disk", folder, self.node_name)

    def _set_fsync(self, api: SyncthingApi, folder: str, *, on: bool) -> None:
        api.patch_folder(folder, {"disableFsync": not on})
        api.wait_running(folder, self.config.start_timeout)

    def _enforce(self, api: SyncthingApi) -> None:
        """Revert a mirror's local changes; override what peers announced on the source."""
        if not self._lock.acquire(timeout=1):
            return
        try:
            if not self._redials.idle:
                self._redial(api)
            role = self._role
            if role is Role.NONE:
                return
            for folder in self.folders:
                status = api.folder_status(folder)
                if status.get("state") != "idle":
                    continue
                if (
                    role is Role.MIRROR
                    and first_copy.marked(self.home, folder)
                    and not mirror_gaps(
                        api, folder, status, api.connections(), self._peers, self._source
                    )
                ):
                    self._end_first_copy(api, folder)
                elif (
                    role is Role.MIRROR
                    and status.get("receiveOnlyTotalItems", 0)
                    and source_index_known(api, folder, self._peers, self._source)
                ):
                    log.info(
                        "syncthing: reverting %s local change(s) in %s on mirror %s",
                        status["receiveOnlyTotalItems"],
                        folder,
                        self.node_name,
                    )
                    api.revert(folder)
                elif role is Role.SOURCE and status.get("needTotalItems", 0):
                    log.warning(
                        "syncthing: a peer announced %s newer item(s) in %s; the source %s "
                        "overrides them",
                        status["needTotalItems"],
                        folder,
                        self.node_name,
                    )
                    api.override(folder)
        finally:
            self._lock.release()

    def scan(self) -> None:
        """Index local changes now, so peers hear of them without waiting for the watcher."""
        api = self._require_api()
        for folder in self.folders:
            api.scan_when_ready(folder, self.config.start_timeout, SCAN_TIMEOUT)

    def connected_peers(self) -> list[str]:
        """The peers Syncthing has a connection with now, by node name."""
        connections = self._require_api().connections()
        return sorted(
            p.name
            for p in self._peers.values()
            if connections.get(p.device_id, {}).get("connected")
        )

    # -- state ---------------------------------------------------------------------------

    def gaps(self, peers: Collection[str] | None = None) -> list[Gap]:
        """Every reason this node's copies differ from the source's; empty when in sync.

        On the source, ``peers`` limits the mirrors looked at (default: every peer).
        """
        api = self._require_api()
        role, source = self._role, self._source
        if role is Role.NONE:
            return [Gap(f, "this node", 0, 0.0, "has no role yet") for f in self.folders]
        connections = api.connections()
        gaps: list[Gap] = []
        for folder in self.folders:
            status = api.folder_status(folder)
            if status.get("state") == "error" or status.get("error"):
                gaps.append(Gap(folder, "this node", 0, 0.0, f"error: {status.get('error')}"))
            if role is Role.SOURCE:
                gaps += source_gaps(api, folder, status, connections, self._peers, peers)
            else:
                gaps += mirror_gaps(api, folder, status, connections, self._peers, source)
                if self.config.managed and first_copy.marked(self.home, folder):
                    gaps.append(
                        Gap(folder, "this node", 0, 99.9, "has its first copy still to flush")
                    )
        return gaps

    def state(self, *, peers: Collection[str] | None = None) -> SyncState:
        """In sync: on a mirror, it has the source's every file and nothing else; on the
        source, every mirror (or those in ``peers``) is connected and has every file."""
        try:
            api = self._require_api()
            gaps = self.gaps(peers)
            last_change = report.last_change(api, self.folders, self._role is Role.SOURCE)
        except FilesyncError as err:
            return SyncState(in_sync=False, completion=0.0, detail=str(err))
        if self._role is Role.SOURCE:
            names = sorted(self._peers if peers is None else set(peers) & set(self._peers))
            what = ", ".join(names) or "no mirrors"
        else:
            what = str(self._source)
        return report.sync_state(gaps, self.folders, last_change, what)

    def wait_in_sync(
        self, timeout: float, *, interval: float = 0.2, peers: Collection[str] | None = None
    ) -> SyncState:
        """On the source, scan first so that every write made so far is counted; ``peers``
        waits for those mirrors only (the target of a switchover, not a node that is down)."""
        if self._role is Role.SOURCE:
            self.scan()
        deadline = time.monotonic() + timeout
        while True:
            state = self.state(peers=peers)
            if state.in_sync:
                return state
            if time.monotonic() >= deadline:
                raise FilesyncError(f"files not in sync after {timeout:g}s: {state.detail}")
            time.sleep(interval)
