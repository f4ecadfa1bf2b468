"""The ``process`` services backend and the services health check, on real processes.

Every service here is a small Python program started by the backend in its own process
group; each test stops what it started (the ``services`` fixture stops every configured
service after the test, by pid file).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import hacore.testing.memory as memory_plugin
import hacore_plugins.services as services_plugin
from hacore.agent.checks import ActiveServices, LoopFacts, builtin_checks
from hacore.config.node import load_config
from hacore.errors import ConfigError, ServiceError
from hacore.plugins.registry import load_plugins
from hacore.testing.procs import wait_for
from hacore_plugins.services.proc import ProcessIdentity, group_members
from hacore_plugins.services.process import ProcessServices

# Installs its handlers, then says so, then idles; the test waits for "ready".
SERVICE = textwrap.dedent(
    """
    import signal, sys, time
    mode = sys.argv[1]
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, lambda *_: print("got TERM, ignoring it", flush=True))
    print("ready", flush=True)
    while True:
        time.sleep(0.2)
    """
)


@pytest.fixture
def program(tmp_path: Path) -> Path:
    path = tmp_path / "service.py"
    path.write_text(SERVICE)
    return path


def settings_for(tmp_path: Path, program: Path, **extra: Any) -> dict[str, Any]:
    py = sys.executable
    return {
        "run_dir": str(tmp_path / "run"),
        "stop_timeout": 5,
        "start_grace": 0.3,
        "commands": {
            "worker": [py, str(program), "plain"],
            "broker": f"{py} {program} plain",
            "stubborn": {"command": [py, str(program), "stubborn"], "stop_timeout": 1},
            "forker": ["/bin/sh", "-c", "sleep 1000 & sleep 1000 & wait"],
            "crasher": ["/bin/sh", "-c", "echo something went wrong; exit 3"],
            "missing": ["/nonexistent/program", "--flag"],
        },
        **extra,
    }


@pytest.fixture
def services(tmp_path: Path, program: Path) -> Iterator[ProcessServices]:
    backend = ProcessServices(settings_for(tmp_path, program))
    yield backend
    backend.stop_all(backend.config.commands)


def running_pid(backend: ProcessServices, name: str) -> int:
    identity = ProcessIdentity.from_json(json.loads(backend.pid_path(name).read_text()))
    assert identity is not None and identity.alive()
    return identity.pid


def wait_ready(backend: ProcessServices, name: str) -> None:
    wait_for(lambda: "ready" in backend.log_path(name).read_text(), 10, what=f"{name} ready")


def gone(pid: int) -> bool:
    return ProcessIdentity.of(pid) is None


# -- start, stop, status -------------------------------------------------------------------


def test_start_runs_the_service_in_its_own_process_group_with_a_log(
    services: ProcessServices,
) -> None:
    services.start("worker")
    pid = running_pid(services, "worker")
    assert os.getpgid(pid) == pid
    assert os.getsid(pid) == pid != os.getsid(0)
    wait_ready(services, "worker")
    assert services.status("worker").running
    assert services.status("worker").detail == f"pid {pid}"
    # a command line given as one string is split like a shell would, without a shell
    services.start("broker")
    cmdline = Path(f"/proc/{running_pid(services, 'broker')}/cmdline").read_bytes()
    assert cmdline.decode().split("\0")[:-1] == list(services.config.commands["broker"].argv)
    assert services.config.commands["broker"].argv[2] == "plain"


def test_start_and_stop_are_idempotent(services: ProcessServices) -> None:
    services.start("worker")
    pid = running_pid(services, "worker")
    services.start("worker")
    assert running_pid(services, "worker") == pid

    services.stop("worker")
    assert gone(pid)
    assert not services.pid_path("worker").exists()
    status = services.status("worker")
    assert not status.running
    assert "SIGTERM" in status.detail  # the backend reaped its own child
    services.stop("worker")
    assert not services.status("worker").running


def test_stop_stops_the_whole_process_group(services: ProcessServices) -> None:
    services.start("forker")
    pgid = running_pid(services, "forker")
    wait_for(lambda: len(group_members(pgid)) == 3, 10, what="sh and its two sleeps")
    services.stop("forker")
    assert group_members(pgid) == []


def test_status_sees_a_service_that_died(services: ProcessServices) -> None:
    services.start("worker")
    pid = running_pid(services, "worker")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not services.status("worker").running, 10, what="the death noticed")
    assert "is gone" in services.status("worker").detail
    assert "killed by SIGKILL" in services.status("worker").detail

    services.start("worker")
    assert running_pid(services, "worker") != pid


def test_leftovers_of_a_dead_leader_are_stopped_before_a_new_start(
    services: ProcessServices,
) -> None:
    services.start("forker")
    pgid = running_pid(services, "forker")
    wait_for(lambda: len(group_members(pgid)) == 3, 10, what="sh and its two sleeps")
    os.kill(pgid, signal.SIGKILL)  # the leader only; its two sleeps stay in the group
    wait_for(lambda: len(group_members(pgid)) == 2, 10, what="the leader gone")
    assert not services.status("forker").running

    services.start("forker")
    assert group_members(pgid) == []
    new = running_pid(services, "forker")
    assert new != pgid


# Runs as pid 1 of a pid namespace of its own, where nothing else takes pids: the kernel
# gives the stopped worker's pid to the next process every time.
RECYCLE = textwrap.dedent(
    """
    import json, subprocess, sys
    from pathlib import Path
    from hacore_plugins.services.process import ProcessServices
    from hacore_plugins.services.proc import ProcessIdentity

    services = ProcessServices(json.loads(sys.argv[1]))
    pid_path = services.pid_path("worker")

    def running_pid():
        return ProcessIdentity.from_json(json.loads(pid_path.read_text())).pid

    services.start("worker")
    pid = running_pid()
    pid_file = pid_path.read_text()
    services.stop("worker")
    # The agent crashed before removing the pid file; the kernel then gave the pid away.
    pid_path.write_text(pid_file)
    Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
    stranger = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    out = {"pid": pid, "stranger": stranger.pid}
    status = services.status("worker")
    out["running"], out["detail"] = status.running, status.detail
    services.stop("worker")
    out["stranger_after_stop"] = stranger.poll() is None
    services.start("worker")
    out["new_pid"] = running_pid()
    out["stranger_after_start"] = stranger.poll() is None
    services.stop("worker")
    stranger.kill()
    print(json.dumps(out))
    """
)


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="a pid namespace and setting the next pid need root")
def test_a_recycled_pid_is_not_the_service(tmp_path: Path, program: Path) -> None:
    settings = settings_for(tmp_path, program)
    result = subprocess.run(
        [
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            sys.executable,
            "-c",
            RECYCLE,
            json.dumps(settings),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["stranger"] == out["pid"], "the kernel did not give the pid away: case not tried"
    assert not out["running"]
    assert f"pid {out['pid']} now belongs to another process" in out["detail"]
    assert out["stranger_after_stop"], "stop must not touch a stranger with the old pid"
    assert out["new_pid"] != out["pid"]
    assert out["stranger_after_start"]


def test_a_new_agent_adopts_the_services_an_earlier_one_started(
    tmp_path: Path, program: Path, services: ProcessServices
) -> None:
    settings = settings_for(tmp_path, program)
    starter = (
        "import json, sys\n"
        "from hacore_plugins.services.process import ProcessServices\n"
        "ProcessServices(json.loads(sys.argv[1])).start('worker')\n"
    )
    # An earlier agent process started the service, then exited (or crashed).
    subprocess.run([sys.executable, "-c", starter, json.dumps(settings)], check=True, timeout=60)
    pid = running_pid(services, "worker")

    adopter = ProcessServices(settings)
    assert adopter.status("worker").running
    adopter.start("worker")
    assert running_pid(adopter, "worker") == pid
    adopter.stop("worker")
    wait_for(lambda: gone(pid), 10, what="the adopted service gone")
    assert not services.status("worker").running


def test_a_service_ignoring_sigterm_is_killed_after_the_timeout(
    services: ProcessServices,
) -> None:
    services.start("stubborn")
    pid = running_pid(services, "stubborn")
    wait_ready(services, "stubborn")
    began = time.monotonic()
    services.stop("stubborn")
    took = time.monotonic() - began
    assert gone(pid)
    assert took >= 1.0  # its stop_timeout
    assert "got TERM, ignoring it" in services.log_path("stubborn").read_text()
    assert "killed by SIGKILL" in services.status("stubborn").detail


def test_a_service_that_exits_at_once_fails_to_start(services: ProcessServices) -> None:
    with pytest.raises(ServiceError) as err:
        services.start("crasher")
    message = str(err.value)
    assert "service crasher exited with status 3 right after it started" in message
    assert "something went wrong" in message
    assert not services.pid_path("crasher").exists()

    with pytest.raises(ServiceError, match=r"/nonexistent/program: No such file or directory"):
        services.start("missing")
    with pytest.raises(ServiceError, match=r"no command for service nosuch"):
        services.start("nosuch")


# -- settings --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"run_dir": None}, r"services\.run_dir is required"),
        ({"run_dir": "relative/dir"}, r"services\.run_dir must be an absolute path"),
        ({"commands": {}}, r"services\.commands must map each service name"),
        ({"commands": {"w": 3}}, r"services\.commands\.w must be a command line"),
        ({"commands": {"w": ""}}, r"services\.commands\.w must be .*not empty"),
        ({"commands": {"w": "a 'b"}}, r"cannot split .* No closing quotation"),
        ({"commands": {"bad/name": "x"}}, r"service name \"bad/name\" must be a service name"),
        ({"commands": {"w": {"command": "x", "stop_signal": "KILL"}}}, r"one of TERM, INT"),
        ({"commands": {"w": {"command": "x", "env": {"A": 1}}}}, r"env\.A must be a string"),
        ({"commands": {"w": {"comand": "x"}}}, r'unknown key "comand".*did you mean "command"'),
        ({"stop_timeout": 0}, r"services\.stop_timeout must be a number of seconds > 0"),
        ({"run_dri": "/x"}, r'unknown key "run_dri" in services; did you mean "run_dir"'),
    ],
)
def test_settings_are_checked(
    tmp_path: Path, program: Path, change: dict[str, Any], message: str
) -> None:
    settings = {**settings_for(tmp_path, program), **change}
    settings = {key: value for key, value in settings.items() if value is not None}
    with pytest.raises(ConfigError, match=message):
        ProcessServices.validate_settings(settings)


def test_per_service_settings_are_read(tmp_path: Path, program: Path) -> None:
    settings = settings_for(tmp_path, program)
    settings["commands"]["w"] = {
        "command": "run --x",
        "cwd": "/tmp",
        "env": {"A": "1"},
        "stop_signal": "sigint",
    }
    w = ProcessServices(settings).config.commands["w"]
    assert (w.argv, str(w.cwd), dict(w.env), w.stop_signal, w.stop_timeout) == (
        ("run", "--x"),
        "/tmp",
        {"A": "1"},
        signal.SIGINT,
        5.0,
    )


def test_the_backend_is_registered_and_checks_its_section(tmp_path: Path, program: Path) -> None:
    registry = load_plugins([services_plugin, memory_plugin], entry_points=False).registry
    assert registry.services("process") is ProcessServices
    raw = {
        "node": {"name": "n1", "host": "127.0.0.1"},
        "consensus": {"backend": "memory", "store": "services-test"},
        "services": {"backend": "process", "active_only": ["worker"], "run_dir": "rel"},
    }
    with pytest.raises(ConfigError, match=r"services \(process\): services\.run_dir must be"):
        load_config(raw, registry=registry)
    raw["services"] = {"backend": "process", "active_only": ["worker"]} | settings_for(
        tmp_path, program
    )
    config = load_config(raw, registry=registry)
    assert config.services is not None
    ProcessServices.validate_services(config.services.settings, ["worker", "broker"])
    with pytest.raises(ConfigError, match=r"no command for queue, web"):
        ProcessServices.validate_services(config.services.settings, ["worker", "queue", "web"])


# -- the health check ------------------------------------------------------------------------


def test_the_active_services_check_lists_the_services_that_are_down(
    services: ProcessServices,
) -> None:
    check = ActiveServices(LoopFacts("n1", active=True), 10.0, services, ["worker", "broker"])
    assert check.active_only and check.name == "active_services"
    services.start("worker")
    result = check.run()
    assert not result.ok
    assert result.detail.startswith("not running: broker")
    assert "worker" not in result.detail

    services.start("broker")
    ok = check.run()
    assert ok.ok and ok.detail == "running: worker, broker"

    os.kill(running_pid(services, "broker"), signal.SIGKILL)
    wait_for(
        lambda: check.run().detail.startswith("not running: broker (not running: pid"),
        10,
        what="the broker's death in the check",
    )
    # a service the backend cannot look at fails the check: the runner reports the error
    unknown = ActiveServices(LoopFacts("n1", active=True), 10.0, services, ["nosuch"])
    with pytest.raises(ServiceError, match="the process backend has no command for service"):
        unknown.run()


def test_the_agent_checks_the_active_only_services_only(services: ProcessServices) -> None:
    def service_checks(active_only: tuple[str, ...]) -> list[ActiveServices]:
        checks = builtin_checks(
            LoopFacts("n1"),
            ttl=10.0,
            address=("127.0.0.1", 1),
            services=services,
            active_only_services=active_only,
        )
        return [check for check in checks if isinstance(check, ActiveServices)]

    (active,) = service_checks(("worker",))
    assert (active.names, active.active_only, active.name) == (("worker",), True, "active_services")
    assert service_checks(()) == []
