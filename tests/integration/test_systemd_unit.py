"""The unit ``hacore agent unit`` prints, run by a real systemd.

systemd is installed here but is not PID 1, so the test runs its own ``systemd --user``
instance (the recipe is in :func:`user_systemd`): in a private mount namespace, where an
empty ``/run/systemd/system`` makes it believe the host booted with systemd, and in a cgroup
of its own, so the only processes it adopts and moves are its own. ``systemctl --user``
reaches it through ``$XDG_RUNTIME_DIR/systemd/private``.

One node forms a cluster (managed etcd + PostgreSQL) under the unit, then:

- ``systemctl restart``: a new agent process; the etcd member keeps its pid, the database is
  stopped by the agent itself (a fast shutdown after it handed over), never by systemd (a
  SIGTERM from systemd would show as a *smart* shutdown in PostgreSQL's log); the node is
  active again.
- the agent SIGKILLed alone (``systemctl kill --kill-whom=main``): ``Restart=on-failure``
  starts a new one; the etcd member and the fence keeper keep their pids (with the default
  ``KillMode=control-group`` systemd would have killed both with the agent).
- ``systemctl reload``: SIGHUP; the new logging level and format take effect (DEBUG lines,
  as JSON, in the log file), and a changed timing is reported as needing a restart.
- ``systemctl stop``: the agent exits cleanly (status 0, "agent service stopped"); the etcd
  member still runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_fixtures import HACORE, TIMING, WAIT, CliCluster, Node, make_root

from hacore.testing.procs import pid_alive, wait_for
from hacore_plugins.postgresql.settings import default_bin_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(default_bin_dir() is None, reason="no PostgreSQL binaries installed"),
]

UNIT = "hacore-agent.service"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _systemd_binary() -> str | None:
    for path in ("/lib/systemd/systemd", "/usr/lib/systemd/systemd"):
        if os.access(path, os.X_OK):
            return path
    return None


class UserSystemd:
    """A running ``systemd --user`` and ``systemctl --user`` against it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runtime = root / "run"
        self.config_home = root / "config"
        self.unit_dir = self.config_home / "systemd" / "user"
        self.cgroup = f"hacore-test-{secrets.token_hex(4)}"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "XDG_RUNTIME_DIR": str(self.runtime),
            "XDG_CONFIG_HOME": str(self.config_home),
        }

    def cgroup_dirs(self) -> list[Path]:
        """Where this instance's cgroup is, in every mounted hierarchy (v1, hybrid or v2)."""
        found = [CGROUP_ROOT / self.cgroup]
        if CGROUP_ROOT.is_dir():
            found += [entry / self.cgroup for entry in CGROUP_ROOT.iterdir() if entry.is_dir()]
        return found

    def start(self) -> None:
        binary = _systemd_binary()
        if binary is None:
            pytest.skip("systemd is not installed")
        if os.geteuid() != 0 or shutil.which("unshare") is None:
            pytest.skip("running a user systemd here needs root and unshare (util-linux)")
        self.runtime.mkdir(mode=0o700, parents=True)
        self.unit_dir.mkdir(parents=True)
        # Its own cgroup: systemd moves every process of the cgroup it starts in into its
        # init.scope, which at the root would be every process on the machine.
        tracking = [CGROUP_ROOT / "systemd", CGROUP_ROOT / "unified"]
        if (CGROUP_ROOT / "cgroup.procs").exists():
            tracking = [CGROUP_ROOT]  # pure cgroup v2
        joins = []
        for hierarchy in tracking:
            if (hierarchy / "cgroup.procs").exists():
                (hierarchy / self.cgroup).mkdir()
                joins.append(f"echo $$ > {hierarchy / self.cgroup / 'cgroup.procs'}")
        if not joins:
            pytest.skip("no cgroup hierarchy to give the user systemd its own cgroup")
        booted = (
            ""
            if Path("/run/systemd/system").is_dir()
            else (
                "mkdir -p /run/systemd && mount -t tmpfs tmpfs /run/systemd && "
                "mkdir /run/systemd/system && "
            )
        )
        script = " && ".join(joins) + f" && {booted}exec {binary} --user"
        log = open(self.root / "systemd.log", "ab")  # noqa: SIM115 - kept for the process
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        log.close()

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, (
                "systemd --user exited: " + (self.root / "systemd.log").read_text()
            )
            # not is-system-running: outside the namespace it sees no booted systemd
            state = self.systemctl("show", "-p", "SystemState", "--value", check=False)
            state = state.stdout.strip()
            return state in ("running", "degraded")

        try:
            wait_for(up, 30.0, interval=0.2, what="systemd --user")
        except (AssertionError, TimeoutError) as err:
            pytest.skip(f"systemd --user cannot run here: {err}")

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["systemctl", "--user", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
        if check:
            assert done.returncode == 0, f"systemctl {' '.join(args)}: {done.stderr}"
        return done

    def show(self, prop: str) -> str:
        return self.systemctl("show", "-p", prop, "--value", UNIT).stdout.strip()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.systemctl("exit", check=False)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for directory in self.cgroup_dirs():
            if directory.is_dir():
                for sub, _dirs, _files in sorted(os.walk(directory), reverse=True):
                    with contextlib.suppress(OSError):
                        os.rmdir(sub)


@pytest.fixture
def user_systemd() -> Iterator[UserSystemd]:
    root = make_root()
    instance = UserSystemd(root)
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()
        if os.environ.get("HACORE_KEEP_TEST_DIRS"):
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def unit_node(user_systemd: UserSystemd) -> Iterator[tuple[CliCluster, Node]]:
    cluster = CliCluster(make_root(), "etcd")
    node = Node(
        "n1",
        cluster.root,
        "etcd",
        cluster.namespace,
        extra={"logging": {"level": "INFO", "file": str(cluster.root / "agent.log")}},
    )
    cluster.nodes["n1"] = node
    try:
        yield cluster, node
    finally:
        with contextlib.suppress(Exception):
            user_systemd.systemctl("stop", UNIT, check=False)
        cluster.cleanup()
        if os.environ.get("HACORE_KEEP_TEST_DIRS"):
            print(f"kept {cluster.root}")
        else:
            shutil.rmtree(cluster.root, ignore_errors=True)


def _main_pid(systemd: UserSystemd) -> int:
    return int(systemd.show("MainPID") or 0)


def _active(node: Node) -> dict[str, Any] | None:
    probe = node.probe()
    return probe if probe is not None and probe["http_status"] == 200 else None


def _log(node: Node) -> str:
    return (node.root / "agent.log").read_text(errors="replace")


def _pg_log(node: Node) -> str:
    text = ""
    for path in (node.data_dir / "replication").rglob("*.log"):
        text += path.read_text(errors="replace")
    return text


def _nofile(pid: int) -> tuple[int, int]:
    """The process's (soft, hard) descriptor limits."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3]), int(line.split()[4])
    raise AssertionError(f"no open file limit for {pid}")


def test_the_agent_unit_under_a_real_systemd(
    user_systemd: UserSystemd, unit_node: tuple[CliCluster, Node]
) -> None:
    cluster, node = unit_node
    node.write_config()
    unit = subprocess.run(
        [HACORE, "agent", "unit", "-c", str(node.config_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "KillMode=process" in unit and "ExecReload=/bin/kill -HUP $MAINPID" in unit
    (user_systemd.unit_dir / UNIT).write_text(unit)
    user_systemd.systemctl("daemon-reload")

    # -- start via the unit; the node becomes active --------------------------------------
    user_systemd.systemctl("start", UNIT)
    wait_for(node.answers, WAIT, interval=0.2, what="the agent started by systemd")
    cluster.cli("cluster", "start", "-c", str(node.config_path), "--timeout", str(WAIT))
    wait_for(lambda: _active(node), WAIT, interval=0.2, what="n1 active")
    agent = _main_pid(user_systemd)
    etcd, postmaster = node.store_server(), node.postmaster()
    assert agent and etcd and postmaster
    # Nice=-10 and best-effort I/O at level 0 (--priority raised, the default): the agent and
    # the servers it started inherit both, ahead of ordinary processes on a busy machine
    for pid in (agent, etcd, postmaster):
        assert os.getpriority(os.PRIO_PROCESS, pid) == -10, f"pid {pid} not at nice -10"
        io = subprocess.run(["ionice", "-p", str(pid)], capture_output=True, text=True).stdout
        assert io.strip() == "best-effort: prio 0", f"pid {pid}: {io.strip()}"
    # LimitNOFILE=65536 (capped by what the manager itself may grant), then the agent's own
    # raise of its soft limit to that hard limit
    assert user_systemd.proc is not None
    granted = min(65536, _nofile(user_systemd.proc.pid)[1])
    assert _nofile(agent) == (granted, granted)

    # -- systemctl restart: the store member survives; PostgreSQL is the agent's to stop --
    user_systemd.systemctl("restart", UNIT)
    assert _main_pid(user_systemd) not in (0, agent)
    wait_for(lambda: _active(node), WAIT, interval=0.2, what="n1 active after the restart")
    assert node.store_server() == etcd, "the etcd member was killed by the restart"
    assert "received fast shutdown request" in _pg_log(node), "the agent stops its database"
    assert "received smart shutdown request" not in _pg_log(node), (
        "systemd signalled PostgreSQL itself"
    )

    # -- the agent alone dies: Restart=on-failure; the keeper and the store member stay ---
    agent = _main_pid(user_systemd)
    wait_for(node.keeper, WAIT, interval=0.2, what="the fence keeper")
    keeper = node.keeper()
    assert keeper is not None
    user_systemd.systemctl("kill", "--kill-whom=main", "--signal=SIGKILL", UNIT)
    wait_for(
        lambda: _main_pid(user_systemd) not in (0, agent),
        60.0,
        interval=0.2,
        what="systemd restarting the killed agent",
    )
    assert pid_alive(keeper) and node.keeper() == keeper, "the fence keeper died with the agent"
    assert node.store_server() == etcd, "the etcd member died with the agent"
    wait_for(lambda: _active(node), WAIT, interval=0.2, what="n1 active after the crash")
    assert "received smart shutdown request" not in _pg_log(node)

    # -- systemctl reload: SIGHUP applies the logging section, reports the rest -----------
    agent = _main_pid(user_systemd)
    node.extra["logging"] = {
        "level": "DEBUG",
        "format": "json",
        "file": str(cluster.root / "agent.log"),
    }
    node.extra["timing"] = {**TIMING, "loop_wait": 0.5}
    node.write_config()
    before = len(_log(node))
    assert not any(" DEBUG " in line for line in _log(node).splitlines())
    user_systemd.systemctl("reload", UNIT)

    def debug_json() -> bool:
        added = _log(node)[before:].splitlines()
        entries = [json.loads(line) for line in added if line.startswith("{")]
        return any(e["level"] == "DEBUG" and e["logger"].startswith("hacore") for e in entries)

    wait_for(debug_json, 60.0, interval=0.2, what="DEBUG lines as JSON after the reload")
    added = _log(node)[before:]
    assert "reload applied logging.level: INFO -> DEBUG" in added
    assert "timing.loop_wait changed; restart the agent to apply it" in added
    assert _main_pid(user_systemd) == agent, "a reload must not restart the agent"
    assert _active(node)

    # -- systemctl stop: a clean exit; the store member outlives the agent ---------------
    user_systemd.systemctl("stop", UNIT)
    assert user_systemd.show("ActiveState") == "inactive"
    assert user_systemd.show("Result") == "success"
    assert not pid_alive(agent)
    assert "agent service stopped" in _log(node)
    assert node.store_server() == etcd and pid_alive(etcd)
