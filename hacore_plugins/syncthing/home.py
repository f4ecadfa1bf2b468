"""The home directory of the Syncthing instance hacore runs: keys, config.xml, database.

Syncthing reaches out to the internet (discovery, relays, NAT traversal, usage reports,
upgrades) from the moment it starts, so those are switched off in config.xml *before* the
first start, never through the API afterwards.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

from hacore.atomic_files import write_atomic
from hacore.backends.processes import child_environment, host_port
from hacore.errors import FilesyncError
from hacore.pki.errors import TlsMaterialError
from hacore.pki.tls_files import private_dir

CONFIG = "config.xml"
#: the REST API's Unix socket, in the home directory (0700): no other user reaches it
API_SOCKET = "api.sock"
#: what a Unix socket path may hold (``sun_path`` is 108 bytes with its terminating NUL)
MAX_SOCKET_PATH = 107

#: options/<name> -> value, for a cluster-internal instance that dials its peers directly
OPTIONS = {
    "globalAnnounceEnabled": "false",
    "localAnnounceEnabled": "false",
    "relaysEnabled": "false",
    "natEnabled": "false",
    "startBrowser": "false",
    "urAccepted": "-1",
    "urSeen": "3",
    "autoUpgradeIntervalH": "0",
    "crashReportingEnabled": "false",
    # the least Syncthing accepts (it raises 1 to 5); the default 60 delays reconnections
    "reconnectionIntervalS": "5",
    "overwriteRemoteDeviceNamesOnConnect": "false",
}


def hashing(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """Syncthing's SHA-256 code for this CPU: ``minio`` (sha256-simd) where the CPU has the SHA
    instructions, ``standard`` (Go's own) elsewhere.

    Go's crypto/sha256 uses the SHA instructions only from Go 1.21; Debian's Syncthing 1.19 is
    built with Go 1.19. Measured on a 2-core host with them, a 50 MiB file cost the source
    0.3 instead of 0.5 CPU seconds and each mirror 0.2 instead of 0.4: Syncthing hashes a file
    when it scans it and every block it receives. Naming it also spares the benchmark of both
    that Syncthing runs at start when STHASHING is unset.
    """
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return "standard"
    for line in text.splitlines():
        if line.startswith("flags") and "sha_ni" in line.split(":", 1)[-1].split():
            return "minio"
    return "standard"


def log_problem(log_path: Path) -> str:
    """The last warning in Syncthing's log (the reason it failed), else its last line."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        for marker in ("FATAL:", "WARNING:"):
            if marker in line:
                return line.split(marker, 1)[1].strip()
    return lines[-1].strip() if lines else ""


def make_private(home: Path) -> None:
    """The home holds the keys, the API key and the API's socket: its owner's alone."""
    try:
        private_dir(home)
    except TlsMaterialError as err:
        raise FilesyncError(str(err)) from None


def socket_path(home: Path) -> Path:
    path = home / API_SOCKET
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise FilesyncError(
            f"the Syncthing API socket {path} is longer than {MAX_SOCKET_PATH} bytes, the most "
            "a Unix socket path may be: set a shorter syncthing 'home'"
        )
    return path


def generate(binary: str, home: Path) -> None:
    """Create the device key and certificate and a default config.xml, once."""
    make_private(home)
    if (home / CONFIG).exists():
        return
    argv = [binary, "generate", "--home", str(home), "--no-default-folder", "--skip-port-probing"]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, check=False, env=child_environment()
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise FilesyncError(f"cannot run {binary} generate: {err}") from None
    if done.returncode != 0 or not (home / CONFIG).exists():
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise FilesyncError(f"{binary} generate failed in {home}: {last[0]}")


def _child(parent: ET.Element, tag: str) -> ET.Element:
    found = parent.find(tag)
    return found if found is not None else ET.SubElement(parent, tag)


def api_key(home: Path) -> str:
    """The API key in config.xml, for an instance that already runs."""
    try:
        found = ET.parse(home / CONFIG).getroot().findtext("gui/apikey")
    except (OSError, ET.ParseError) as err:
        raise FilesyncError(f"cannot read Syncthing config {home / CONFIG}: {err}") from None
    if not found:
        raise FilesyncError(f"Syncthing config {home / CONFIG} has no API key")
    return found


def device_id(binary: str, home: Path) -> str:
    """This node's device ID, derived from its certificate by Syncthing itself."""
    argv = [binary, "serve", "--device-id", "--home", str(home)]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=30, check=False, env=child_environment()
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise FilesyncError(f"cannot run {binary} to read the device ID: {err}") from None
    found = done.stdout.strip()
    if done.returncode != 0 or not found:
        raise FilesyncError(f"cannot read the Syncthing device ID in {home}: {done.stderr.strip()}")
    return found


def reset_database(binary: str, home: Path) -> None:
    """Delete the instance's database (Syncthing not running): at its next start it hashes
    every file of every folder again and fetches its peers' indexes anew."""
    argv = [binary, "serve", "--reset-database", "--home", str(home)]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, check=False, env=child_environment()
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        raise FilesyncError(f"cannot run {binary} to reset its database: {err}") from None
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise FilesyncError(f"cannot reset the Syncthing database in {home}: {last[0]}")


def harden(
    home: Path,
    *,
    node_name: str,
    own_id: str,
    host: str,
    api_socket: Path,
    listen_port: int,
    max_send_kbps: int = 0,
    max_recv_kbps: int = 0,
    low_priority: bool = False,
    receive_only: Iterable[str] = (),
) -> str:
    """Rewrite config.xml for hacore (idempotent); returns the API key.

    The API listens on a Unix socket (0600, in the 0700 home): the agent on the same node is
    its only client. On a loopback port, any local user could load the GUI, which hands out
    a CSRF token that opens the whole REST API when no GUI user is set. The key made at the
    first run is kept, so a restarted agent finds the same instance. The
    ``receive_only`` folders start so: until the agent says which node is the source, this
    one sends nothing it changed.

    Syncthing's own default puts itself at nice 9 and best-effort I/O priority 5 (of 0-7);
    hacore's default is ``low_priority`` off. On a busy 2-core host (load 11-13), a joining
    node received 1 GiB at ~10 MiB/s at low priority and ~40 MiB/s without, while the
    ``rsync -a`` it is compared with ran at normal priority.
    """
    path = home / CONFIG
    try:
        tree = ET.parse(path)
    except (OSError, ET.ParseError) as err:
        raise FilesyncError(f"cannot read Syncthing config {path}: {err}") from None
    root = tree.getroot()
    gui = _child(root, "gui")
    gui.set("enabled", "true")
    gui.set("tls", "false")
    # Syncthing takes an absolute path as a Unix socket address (a unix:// URL only from
    # the STGUIADDRESS environment variable)
    _child(gui, "address").text = str(api_socket)
    _child(gui, "unixSocketPermissions").text = "0600"
    apikey = _child(gui, "apikey")
    if not apikey.text or len(apikey.text) < 32:
        apikey.text = secrets.token_urlsafe(32)
    options = _child(root, "options")
    for element in options.findall("listenAddress"):
        options.remove(element)
    ET.SubElement(options, "listenAddress").text = f"tcp://{host_port(host, listen_port)}"
    for name, value in OPTIONS.items():
        _child(options, name).text = value
    _child(options, "maxSendKbps").text = str(max_send_kbps)
    _child(options, "maxRecvKbps").text = str(max_recv_kbps)
    _child(options, "setLowPriority").text = "true" if low_priority else "false"
    # Without this, the limits above do not apply between hosts of one LAN.
    limited = bool(max_send_kbps or max_recv_kbps)
    _child(options, "limitBandwidthInLan").text = "true" if limited else "false"
    quiet = set(receive_only)
    for folder in root.findall("folder"):
        if folder.get("id") in quiet:
            folder.set("type", "receiveonly")
            # a first copy (.first_copy) a crash cut short left it off
            _child(folder, "disableFsync").text = "false"
    for device in root.findall("device"):
        if device.get("id") == own_id:
            device.set("name", node_name)
    try:
        write_atomic(path, ET.tostring(root, encoding="unicode").encode(), 0o600)
    except OSError as err:
        raise FilesyncError(f"cannot write {path}: {err.strerror}") from None
    return str(apikey.text)
