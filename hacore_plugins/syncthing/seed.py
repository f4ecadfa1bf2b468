"""A joiner's first copy by rsync over TLS, before Syncthing takes over.

Syncthing moves a first copy block by block through its own protocol and one finisher per
folder: 1 GiB over loopback took 3-5x a plain ``rsync -a``. So the source also serves its
folders as read-only rsync modules behind stunnel (the rsync plugin's
:mod:`~hacore_plugins.rsync.tls` and :mod:`~hacore_plugins.rsync.daemon`), and a mirror whose
folder is empty pulls it from there first, the folder paused meanwhile so that Syncthing does
not fetch the same files alongside.

Nothing the seed writes is trusted. The folder is receive only, so the seeded files are this
node's local changes: never announced as newer than the source's (Syncthing ranks them below
any version a peer has), and not in sync until the source's index came and every file matched
it. A seeded file equal to the source's costs a hash and a metadata update, one that differs
(changed since, or cut short) is fetched by Syncthing, one the source lacks goes at the
revert. The revert waits for the source's index (:func:`source_index_known`): before it, a
revert would take this node's own files for the only version there is and delete them. The
seed runs inside the first copy's durable mark (:mod:`.first_copy`), so a crash during it
resets Syncthing's database at the next start.

Off by default (``seed: false``): on a busy 2-core host the one rsync stream through stunnel
at both ends was slower than Syncthing alone (docs/filesync.md has the numbers). Only with
the cluster's TLS material: the source's stunnel lets in a certificate from the
cluster CA and nothing else (no rsync password: Syncthing shares no secret), and the mirror
believes only a server whose certificate names the source's address (its stunnel as the
client: faster than ``openssl s_client``).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from hacore.backends.processes import DetachedProcess, child_environment, host_port
from hacore.backends.records import TlsFiles
from hacore.errors import HacoreError
from hacore_plugins.rsync.daemon import config_text, write_private
from hacore_plugins.rsync.settings import RsyncSettings
from hacore_plugins.rsync.tls import (
    CRL_POLL,
    STUNNEL_LOG,
    STUNNEL_PID,
    RsyncTls,
    failure_reason,
)
from hacore_plugins.syncthing import first_copy
from hacore_plugins.syncthing.api import SyncthingApi
from hacore_plugins.syncthing.folders import Peer

log = logging.getLogger(__name__)

HOME = "seed"
CONFIG_FILE = "rsyncd.conf"
LOG_FILE = "rsyncd.log"
#: what a mirror keeps of the source's metadata (as the rsync plugin's pull): times and
#: permissions without set-id bits; no owner, group, device, special file or symlink out of
#: the tree. Syncthing's own files stay out; no ``--delete``: the folder was empty.
PULL_OPTIONS = (
    "-rlpt",
    "--chmod=ug-s",
    "--no-owner",
    "--no-group",
    "--no-devices",
    "--no-specials",
    "--safe-links",
    "--exclude=/.stfolder",
    "--exclude=/.stignore",
    "--exclude=/.stversions",
    "--exclude=.syncthing.*.tmp",
    "--exclude=~syncthing~*.tmp",
)
#: seconds without any I/O before a seed gives up (Syncthing then copies the rest)
IO_TIMEOUT = 30


def bare(directory: Path) -> bool:
    """Whether ``directory`` holds nothing but Syncthing's marker: a first copy to seed."""
    try:
        return all(entry.name == ".stfolder" for entry in directory.iterdir())
    except FileNotFoundError:
        return True
    except OSError:
        return False


def source_index_known(
    api: SyncthingApi, folder: str, peers: Mapping[str, Peer], source: str | None
) -> bool:
    """Whether the source is connected and its index of ``folder`` has arrived."""
    peer = peers.get(source or "")
    if peer is None or not api.connections().get(peer.device_id, {}).get("connected"):
        return False
    return int(api.completion(folder, peer.device_id).get("sequence", 0)) > 0


class Seeder:
    """Both ends of one node's seeding: the server while it is the source, the pull while
    it mirrors an empty folder."""

    def __init__(
        self,
        tls: TlsFiles,
        *,
        node_name: str,
        host: str,
        port: int,
        home: Path,
        folders: Mapping[str, Path],
        bwlimit_kbps: int = 0,
    ) -> None:
        self.node_name = node_name
        self.host = host
        self.port = port
        self.home = home
        self.folders = dict(folders)
        self.bwlimit_kbps = bwlimit_kbps
        self.config = RsyncSettings(port=port)
        self.server = DetachedProcess(
            f"seed server (stunnel) of {node_name}",
            log_path=home / STUNNEL_LOG,
            pid_path=home / STUNNEL_PID,
            executable_name=Path(self.config.stunnel_binary).name,
        )
        self.tls = RsyncTls(
            tls,
            self.config,
            node_name=node_name,
            host=host,
            home=home,
            rsyncd_conf=home / CONFIG_FILE,
            stunnel=self.server,
        )
        self._stopping = threading.Event()
        self._crl_watch: threading.Thread | None = None

    @property
    def address(self) -> str:
        return host_port(self.host, self.port)

    # -- the source's server -------------------------------------------------------------

    def serve(self) -> None:
        """Serve the folders read-only behind stunnel; a node that cannot (no stunnel, a
        taken port) still syncs, its joiners through Syncthing alone."""
        try:
            self.tls.check_material()
            self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
            text = config_text(
                host=None,
                port=None,
                modules=self.folders,
                log_file=self.home / LOG_FILE,
                secrets_file=None,
            )
            write_private(self.home / CONFIG_FILE, text)
            self.tls.write_stunnel_config()
            if self.server.pid() is not None:
                self.tls.reload()
            else:
                self.server.start(self.tls.argv())
        except (HacoreError, OSError) as err:
            log.warning(
                "syncthing: %s cannot serve seeds (joiners copy through Syncthing): %s",
                self.node_name,
                err,
            )
            return
        if self._crl_watch is None:
            self._stopping.clear()
            self._crl_watch = threading.Thread(
                target=self.tls.watch_crl, args=(self._stopping,), name="syncthing-seed-crl"
            )
            self._crl_watch.daemon = True
            self._crl_watch.start()

    def stop_serving(self) -> None:
        watch, self._crl_watch = self._crl_watch, None
        self._stopping.set()
        if watch is not None:
            watch.join(timeout=CRL_POLL + 10)
        self.server.stop(signal.SIGTERM, timeout=10)

    # -- the mirror's pull ---------------------------------------------------------------

    def pull(self, folder: str, source: str, address: str) -> bool:
        """Copy ``folder`` from ``source``'s seed server at ``address`` (host:port); False
        when it could not, whatever it copied (Syncthing checks every file anyway)."""
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit():
            log.warning("syncthing: %s's seed address %r is not host:port", source, address)
            return False
        argv = [self.config.binary, *PULL_OPTIONS, f"--timeout={IO_TIMEOUT}"]
        argv.append(f"--contimeout={IO_TIMEOUT}")
        if self.bwlimit_kbps:
            argv.append(f"--bwlimit={self.bwlimit_kbps}")
        argv += [f"rsync://{host_port(host, int(port))}/{folder}/", f"{self.folders[folder]}/"]
        env = child_environment()
        began = time.monotonic()
        try:
            self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
            config = self.home / f"client-{folder}.conf"
            env["RSYNC_CONNECT_PROG"] = self.tls.stunnel_connect_command(host, int(port), config)
            done = subprocess.run(argv, capture_output=True, text=True, env=env)
        except (OSError, HacoreError) as err:
            log.warning("syncthing: cannot run %s for a seed: %s", argv[0], err)
            return False
        if done.returncode != 0:
            tls_log = ""
            with contextlib.suppress(OSError):
                tls_log = config.with_suffix(".log").read_text().strip()
            tls_log = tls_log.splitlines()[-1] if tls_log else ""
            log.warning(
                "syncthing: the seed of %s from %s failed (Syncthing copies the rest): %s%s",
                folder,
                source,
                failure_reason(done.stderr, done.returncode),
                f" (TLS: {tls_log})" if tls_log else "",
            )
            return False
        log.info(
            "syncthing: %s seeded %s from %s in %.1f s",
            self.node_name,
            folder,
            source,
            time.monotonic() - began,
        )
        return True


def fill(
    seeder: Seeder | None,
    api: SyncthingApi,
    folder: str,
    path: Path,
    source: Peer,
    *,
    home: Path,
    held: bool,
) -> None:
    """Fill an empty ``folder`` (at ``path``) from ``source``'s seed server, paused
    meanwhile; Syncthing then fetches whatever it lacks. Either way an empty folder is a
    first copy (its mark in ``home``, no fsync per file) from before it runs, and a folder
    ``held`` paused while empty (waiting for its role) runs again."""
    empty = bare(path)
    if seeder is None or source.seed is None or not empty:
        if held:
            if empty:
                first_copy.begin(home, folder)
            api.patch_folder(folder, {"paused": False, "disableFsync": empty})
        return
    first_copy.begin(home, folder)
    api.patch_folder(folder, {"paused": True, "disableFsync": True})
    try:
        seeder.pull(folder, source.name, source.seed)
    finally:
        api.patch_folder(folder, {"paused": False})
