"""``node uninstall``: remove what hacore put on this machine for one node.

In order: the systemd units ``hacore agent unit`` produced for this node's configuration are
stopped and disabled (else systemd would start the agent again), the agent service is
stopped (SIGTERM: an active hands over, as any clean stop), then its managed servers by their
pid files (fence keeper, database, store server), then any process left that still runs from
the node's data directory or configuration. Then the files: the unit files, what hacore
writes in the data directory, the CLI profile when it is this cluster's.

What is deleted, and why nothing else is:

- in the data directory only the entries hacore itself creates (:data:`OWN_ENTRIES`: the
  database, store and file-sync directories, pki, state and pid files); anything else found
  there is left and reported;
- the data directory itself only when hacore created it (the service leaves
  :data:`CREATED_MARKER` in a directory it made) and it is empty once hacore's entries are
  gone (``rmdir``, which cannot remove a non-empty directory); its parent is never touched;
- a symbolic link is removed as a link, never followed (``shutil.rmtree`` does not follow
  links inside a tree, and a path is checked to be inside the data directory first);
- a unit file only when its ``ExecStart`` runs ``agent run -c`` on this very configuration;
- the profile only when it names this node's cluster.

The configuration file, the logging files node.yaml points at, and the directories a file
sync engine mirrors (the application's files) are the operator's: they stay.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs

from hacore.agent.errors import StateConflictError
from hacore.agent.failsafe import KEY_FILE as FAILSAFE_KEY_FILE
from hacore.agent.keeper import KeeperProcess, pid_alive
from hacore.agent.tls_paths import PKI_DIR, tls_files
from hacore.backends.processes import read_proc
from hacore.client.profile import load_profile, remove_profile
from hacore.cluster import snapshot
from hacore.cluster.bootstrap_token import TOKEN_FILE
from hacore.cluster.operation_state import STATE_FILE, Phase, StateFile
from hacore.cluster.parts import local_parts
from hacore.config.node import NodeConfig
from hacore.errors import HacoreError
from hacore.plugins.configured import load_config_and_plugins
from hacore.plugins.factory import FILESYNC_DIR, REPLICATION_DIR, STORE_DIR

#: left in a data directory the agent service created: only then does uninstall remove it
CREATED_MARKER = ".hacore-created"
#: what hacore creates in a node's data directory (every other entry is left alone)
OWN_ENTRIES = (
    REPLICATION_DIR,
    STORE_DIR,
    FILESYNC_DIR,
    PKI_DIR,
    STATE_FILE,
    TOKEN_FILE,
    "keeper.json",
    "keeper.pid",
    "keeper.log",
    "failsafe-promise.json",
    FAILSAFE_KEY_FILE,
    snapshot.MARKER,
    snapshot.STAGING,
    CREATED_MARKER,
)
#: where ``hacore agent unit``'s output is installed, as docs/agent.md says
SYSTEMD_DIR = Path("/etc/systemd/system")
#: seconds the agent service gets for its clean stop (an active hands over, its jobs end)
AGENT_STOP_TIMEOUT = 120.0
#: seconds any other process gets after SIGTERM before SIGKILL
KILL_TIMEOUT = 15.0


def mark_created(data_dir: Path) -> None:
    """Make the node's data directory; when this call creates it, mark it as hacore's."""
    if data_dir.exists():
        return
    data_dir.mkdir(parents=True)
    (data_dir / CREATED_MARKER).write_text(
        "created by the hacore agent service; hacore node uninstall removes this directory\n"
    )


@attrs.frozen
class Report:
    node: str
    cluster: str | None
    phase: str
    stopped: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    left: tuple[str, ...] = ()
    still_running: tuple[str, ...] = ()
    listening: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def membership(config: NodeConfig) -> tuple[str | None, str]:
    """(cluster name, phase) from the node's ``cluster.json``; (None, "none") without one."""
    state = StateFile(config.node.data_dir).load()
    if state is None:
        return None, "none"
    return state.record.name, state.phase.value


def refusal(config: NodeConfig, force: bool) -> str:
    """Why uninstall must not run without ``-f`` ("" when it may)."""
    cluster, phase = membership(config)
    if force or phase in ("none", Phase.REMOVED.value):
        return ""
    name = config.node.name
    return (
        f"{name} is still {'a member of' if phase == 'member' else phase} cluster {cluster}: "
        f"remove it first (hacore cluster nodes remove {name}, on any machine with the "
        "cluster's profile) or take the whole cluster down (hacore cluster teardown); "
        "-f uninstalls anyway (an active then hands over to a standby)"
    )


def uninstall(
    config_path: Path,
    *,
    force: bool,
    say: Callable[[str], None],
    systemd_dir: Path = SYSTEMD_DIR,
    profile: Path | None = None,
) -> Report:
    config_path = config_path.absolute()
    config, plugins = load_config_and_plugins(config_path)
    why = refusal(config, force)
    if why:
        raise StateConflictError(why)
    data_dir = config.node.data_dir.absolute()
    cluster, phase = membership(config)
    stopped: list[str] = []
    removed: list[str] = []
    left: list[str] = []

    units = agent_units(systemd_dir, config_path)
    for unit in units:
        if _systemd_running() and systemd_dir == SYSTEMD_DIR:
            say(f"stopping and disabling {unit.name}")
            subprocess.run(["systemctl", "disable", "--now", unit.name], check=False)
    for pid in _processes(lambda argv: _runs_agent(argv, config_path)):
        say(f"stopping the agent service (pid {pid})")
        _terminate(pid, AGENT_STOP_TIMEOUT)
        stopped.append(f"agent service (pid {pid})")
    stopped += _stop_servers(config, plugins, config_path, data_dir, say)
    for pid in _processes(lambda argv: _refers_to(argv, data_dir, config_path)):
        say(f"stopping pid {pid} ({_command(pid)}): it runs from {data_dir}")
        _terminate(pid, KILL_TIMEOUT)
        stopped.append(f"pid {pid}")

    for unit in units:
        unit.unlink()
        removed.append(str(unit))
    if units and _systemd_running() and systemd_dir == SYSTEMD_DIR:
        subprocess.run(["systemctl", "daemon-reload"], check=False)
    for gone, kept in (
        remove_own_files(data_dir, say),
        _remove_profile(profile, cluster or config.cluster.name, say),
    ):
        removed += gone
        left += kept
    running = tuple(
        f"pid {pid} ({_command(pid)})"
        for pid in _processes(lambda argv: _refers_to(argv, data_dir, config_path))
    )
    return Report(
        node=config.node.name,
        cluster=cluster,
        phase=phase,
        stopped=tuple(stopped),
        removed=tuple(removed),
        left=tuple(left),
        still_running=running,
        listening=tuple(sorted(listening_ports(node_ports(config)))),
    )


# -- processes ------------------------------------------------------------------------------


def _stop_servers(
    config: NodeConfig, plugins: Any, config_path: Path, data_dir: Path, say: Callable[[str], None]
) -> list[str]:
    """The fence keeper, the database and the store server, each by its own stop."""
    stopped = []
    keeper = KeeperProcess(config_path, data_dir)
    if keeper.process.pid() is not None:
        say("stopping the fence keeper")
        keeper.stop()
        stopped.append("fence keeper")
    try:
        parts = local_parts(config, plugins, tls_files(config))
    except HacoreError as err:
        say(f"the database and store server are not stopped by their own means: {err}")
        return stopped
    if parts.replication.data_dir.is_dir():
        say(f"stopping the database, if it runs ({parts.replication.data_dir})")
        stopped.append("database")
    if parts.store is not None and parts.store.is_running():
        say(f"stopping the store server ({parts.store.data_dir})")
        stopped.append("store server")
    parts.stop()
    return stopped


def _processes(match: Callable[[list[str]], bool]) -> list[int]:
    """Pids whose command line ``match``es, never this process or one of its ancestors."""
    mine = _ancestors(os.getpid())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
        if argv and match(argv):
            found.append(int(entry.name))
    return found


def _ancestors(pid: int) -> set[int]:
    found = {pid}
    entry = read_proc(pid)
    while entry is not None and entry.ppid > 1 and entry.ppid not in found:
        found.add(entry.ppid)
        entry = read_proc(entry.ppid)
    return found


def _runs_agent(argv: list[str], config_path: Path) -> bool:
    """``… hacore agent run -c CONFIG`` (or ``--config``) for this configuration."""
    if "agent" not in argv or "run" not in argv:
        return False
    return _config_arg(argv) == config_path


def _config_arg(argv: list[str]) -> Path | None:
    for i, arg in enumerate(argv):
        if arg in ("-c", "--config") and i + 1 < len(argv):
            return Path(argv[i + 1]).absolute()
        if arg.startswith("--config="):
            return Path(arg.split("=", 1)[1]).absolute()
    return None


def _refers_to(argv: list[str], data_dir: Path, config_path: Path) -> bool:
    """A command line naming a path inside the data directory, or this configuration."""
    if _config_arg(argv) == config_path:
        return True
    inside = str(data_dir) + os.sep
    return any(inside in arg or arg == str(data_dir) for arg in argv)


def _command(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "exited"
    return " ".join(a.decode(errors="replace") for a in raw.split(b"\0") if a)[:120]


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.2)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + KILL_TIMEOUT
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.2)


def _systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None


# -- ports ----------------------------------------------------------------------------------


def node_ports(config: NodeConfig) -> set[int]:
    """The TCP ports node.yaml gives this node: the API's and every ``*port`` setting."""
    ports = {config.node.api_port}
    sections = [config.consensus.settings]
    for section in (config.replication, config.filesync):
        if section is not None:
            sections.append(section.settings)
    for settings in sections:
        for key, value in settings.items():
            if key.endswith("port") and isinstance(value, int):
                ports.add(value)
    return ports


def listening_ports(ports: Iterable[int]) -> set[int]:
    """Which of ``ports`` something listens on (TCP, IPv4 or IPv6), from /proc/net."""
    wanted = set(ports)
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A":  # TCP_LISTEN
                port = int(fields[1].rsplit(":", 1)[1], 16)
                if port in wanted:
                    found.add(port)
    return found


# -- files ----------------------------------------------------------------------------------


def agent_units(systemd_dir: Path, config_path: Path) -> list[Path]:
    """The unit files in ``systemd_dir`` whose ExecStart runs this node's agent service."""
    found: list[Path] = []
    if not systemd_dir.is_dir():
        return found
    for unit in sorted(systemd_dir.glob("*.service")):
        if unit.is_symlink() or not unit.is_file():
            continue
        try:
            text = unit.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        for line in text.splitlines():
            if line.startswith("ExecStart="):
                with contextlib.suppress(ValueError):
                    if _runs_agent(shlex.split(line.split("=", 1)[1]), config_path):
                        found.append(unit)
                        break
    return found


def remove_own_files(data_dir: Path, say: Callable[[str], None]) -> tuple[list[str], list[str]]:
    """Delete hacore's entries in ``data_dir``, then the directory if hacore made it and
    nothing else is in it. Returns (removed, left)."""
    removed: list[str] = []
    left: list[str] = []
    if not data_dir.is_dir() or data_dir.is_symlink():
        return removed, left
    created = (data_dir / CREATED_MARKER).is_file()
    for entry in sorted(data_dir.iterdir()):
        if entry.name in OWN_ENTRIES or _is_tmp_of_own(entry.name):
            if entry.name == CREATED_MARKER:
                continue
            _delete(entry)
            removed.append(str(entry))
        else:
            left.append(str(entry))
    if created:
        (data_dir / CREATED_MARKER).unlink()
        if not left:
            data_dir.rmdir()
            removed.append(str(data_dir))
        else:
            (data_dir / CREATED_MARKER).write_text(
                "created by the hacore agent service; hacore node uninstall removes this "
                "directory\n"
            )
    if removed:
        say(f"removed {len(removed)} paths hacore created under {data_dir}")
    for path in left:
        say(f"left {path}: hacore did not create it")
    if not created and data_dir.exists() and not left:
        say(f"left {data_dir} (empty): it existed before hacore used it")
        left.append(str(data_dir))
    return removed, left


def _is_tmp_of_own(name: str) -> bool:
    """A temporary file hacore's atomic writes leave after a crash: ``.cluster.json.*.tmp``."""
    return name.endswith(".tmp") and any(name.startswith(f".{own}.") for own in OWN_ENTRIES)


def _delete(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink()
    else:
        shutil.rmtree(path)


def _remove_profile(
    explicit: Path | None, cluster: str, say: Callable[[str], None]
) -> tuple[list[str], list[str]]:
    from hacore.client.profile import profile_path

    path = profile_path(explicit)
    if not path.is_file():
        return [], []
    try:
        profile = load_profile(path)
    except HacoreError as err:
        say(f"left the CLI profile {path}: unreadable ({err})")
        return [], [str(path)]
    if profile is None or profile.cluster != cluster:
        say(f"left the CLI profile {path}: it is not cluster {cluster}'s")
        return [], [str(path)]
    remove_profile(path)
    say(f"removed the CLI profile {path}")
    return [str(path)], []
