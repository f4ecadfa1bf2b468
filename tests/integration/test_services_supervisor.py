"""The ``supervisor`` services backend against a real supervisord.

One supervisord per session (generated config in a temp dir, ``nodaemon``, a unix socket and
a loopback HTTP port, both with credentials), stopped by pid at the end. Every program has
``autostart=false``: only the backend starts them.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import hacore_plugins.services as services_plugin
from hacore.agent.checks import ActiveServices, LoopFacts
from hacore.errors import ConfigError, ServiceError
from hacore.plugins.registry import load_plugins
from hacore.testing.procs import ServerProcess, free_port, wait_for
from hacore_plugins.services.supervisor import SupervisorServices

SUPERVISORD = shutil.which("supervisord")
pytestmark = pytest.mark.skipif(SUPERVISORD is None, reason="supervisord is not installed")

USER, PASSWORD = "hacore", "s3cret:p@ss/word"
PROGRAMS = ("sleeper", "other", "slow", "stubborn", "crasher")
STUBBORN = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(1000)"


def supervisord_conf(tmp: Path, port: int) -> str:
    py = sys.executable
    stubborn = tmp / "stubborn.py"
    stubborn.write_text(STUBBORN)
    return f"""
[unix_http_server]
file={tmp}/supervisor.sock
chmod=0700
username={USER}
password={PASSWORD}

[inet_http_server]
port=127.0.0.1:{port}
username={USER}
password={PASSWORD}

[supervisord]
nodaemon=true
user=root
logfile={tmp}/supervisord.log
pidfile={tmp}/supervisord.pid
childlogdir={tmp}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[program:sleeper]
command=/bin/sleep 1000
autostart=false
startsecs=1

[program:other]
command=/bin/sleep 1001
autostart=false
startsecs=0

[program:slow]
command=/bin/sleep 1002
autostart=false
startsecs=2

[program:stubborn]
command={py} {stubborn}
autostart=false
startsecs=1
stopwaitsecs=1

[program:crasher]
command=/bin/sh -c "echo boom >&2; exit 3"
autostart=false
; long enough that even a loaded machine sees the exit within it: FATAL, never EXITED
startsecs=15
startretries=0
autorestart=false
"""


class Supervisord:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        conf = tmp / "supervisord.conf"
        conf.write_text(supervisord_conf(tmp, self.port))
        assert SUPERVISORD is not None
        self.process = ServerProcess(
            "supervisord", [SUPERVISORD, "-c", str(conf)], tmp / "supervisord.out"
        ).start()

    @property
    def socket(self) -> str:
        return str(self.tmp / "supervisor.sock")

    def settings(self, **extra: Any) -> dict[str, Any]:
        return {"socket": self.socket, "username": USER, "password": PASSWORD, **extra}


@pytest.fixture(scope="session")
def supervisord(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervisord]:
    server = Supervisord(tmp_path_factory.mktemp("supervisord"))
    try:
        probe = SupervisorServices(server.settings())
        wait_for(lambda: probe.status("sleeper"), 30, what="supervisord answering")
        yield server
    finally:
        server.process.stop(timeout=30)


@pytest.fixture
def services(supervisord: Supervisord) -> Iterator[SupervisorServices]:
    backend = SupervisorServices(supervisord.settings())
    yield backend
    backend.stop_all(PROGRAMS)


def pid_of(backend: SupervisorServices, name: str) -> int:
    info = backend.client.call("getProcessInfo", name)
    assert info["statename"] == "RUNNING"
    return int(info["pid"])


def test_start_status_stop(services: SupervisorServices) -> None:
    assert not services.status("sleeper").running
    assert services.status("sleeper").detail.startswith("STOPPED")
    services.start("sleeper")
    status = services.status("sleeper")
    assert status.running
    pid = pid_of(services, "sleeper")
    assert status.detail.startswith(f"RUNNING: pid {pid}, uptime")
    assert Path(f"/proc/{pid}/cmdline").read_bytes() == b"/bin/sleep\x001000\x00"

    services.stop("sleeper")
    assert not services.status("sleeper").running
    assert services.status("sleeper").detail.startswith("STOPPED")
    assert not Path(f"/proc/{pid}").exists()


def test_start_and_stop_are_idempotent(services: SupervisorServices) -> None:
    services.start("other")
    pid = pid_of(services, "other")
    services.start("other")
    assert pid_of(services, "other") == pid
    services.stop("other")
    services.stop("other")
    assert not services.status("other").running


def test_start_while_another_start_is_under_way_waits_until_it_runs(
    services: SupervisorServices,
) -> None:
    first = threading.Thread(target=services.start, args=("slow",))
    first.start()
    try:
        wait_for(lambda: services.status("slow").detail.startswith("STARTING"), 10, what="STARTING")
        SupervisorServices(services.settings).start("slow")  # ALREADY_STARTED: waits
        assert services.status("slow").running
    finally:
        first.join(timeout=30)


def test_stop_waits_for_supervisord_to_kill_a_stubborn_program(
    services: SupervisorServices,
) -> None:
    services.start("stubborn")
    pid = pid_of(services, "stubborn")
    began = time.monotonic()
    services.stop("stubborn")
    assert time.monotonic() - began >= 1.0  # stopwaitsecs, then SIGKILL
    assert not Path(f"/proc/{pid}").exists()
    assert services.status("stubborn").detail.startswith("STOPPED")


def test_a_program_that_exits_at_once_fails_to_start(services: SupervisorServices) -> None:
    with pytest.raises(ServiceError, match=r"^supervisor could not start crasher: .+ \(FATAL\)$"):
        services.start("crasher")
    assert not services.status("crasher").running


def test_an_unknown_program_is_a_clear_error(services: SupervisorServices) -> None:
    for operation in (services.start, services.stop, services.status):
        with pytest.raises(ServiceError, match=r"^supervisor has no program named nosuch \("):
            operation("nosuch")


def test_the_loopback_http_port_works_too(supervisord: Supervisord) -> None:
    backend = SupervisorServices(
        {"url": f"http://127.0.0.1:{supervisord.port}", "username": USER, "password": PASSWORD}
    )
    assert backend.config.url == f"http://127.0.0.1:{supervisord.port}/RPC2"
    backend.start("sleeper")
    try:
        assert SupervisorServices(supervisord.settings()).status("sleeper").running
    finally:
        backend.stop("sleeper")


def test_bad_credentials_and_unreachable_servers_are_clear_errors(
    supervisord: Supervisord, tmp_path: Path
) -> None:
    wrong = SupervisorServices(supervisord.settings(password="wrong"))
    with pytest.raises(ServiceError, match=r"refused the credentials \(HTTP 401\)"):
        wrong.status("sleeper")
    anonymous = SupervisorServices({"url": f"http://127.0.0.1:{supervisord.port}"})
    with pytest.raises(ServiceError, match=r"refused the credentials"):
        anonymous.status("sleeper")
    nowhere = SupervisorServices({"socket": str(tmp_path / "none.sock")})
    with pytest.raises(
        ServiceError, match=r"cannot reach supervisord at unix://.*none\.sock: No such file"
    ):
        nowhere.start("sleeper")
    refused = SupervisorServices({"url": f"http://127.0.0.1:{free_port()}"})
    with pytest.raises(ServiceError, match=r"cannot reach supervisord at http://127\.0\.0\.1"):
        refused.status("sleeper")


def test_the_active_services_check_reports_stopped_programs(
    services: SupervisorServices,
) -> None:
    check = ActiveServices(LoopFacts("n1", active=True), 10.0, services, ["sleeper", "other"])
    services.start("sleeper")
    result = check.run()
    assert not result.ok
    assert result.detail.startswith("not running: other (STOPPED")
    services.start("other")
    assert check.run().ok


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"socket": "/a.sock", "url": "http://127.0.0.1:9001"}, r"socket or url .* not both"),
        ({"socket": "relative.sock"}, r"services\.socket must be an absolute path"),
        ({"url": "https://127.0.0.1:9001"}, r"services\.url must be an http:// URL"),
        ({"url": "http://u:p@127.0.0.1:9001"}, r"give the credentials as username and password"),
        ({"url": "http://127.0.0.1:notaport"}, r"services\.url has an invalid port"),
        ({"username": "u"}, r"username and password must be given together"),
        ({"timeout": -1}, r"services\.timeout must be a number of seconds > 0"),
        ({"sockt": "/x"}, r'unknown key "sockt" in services; did you mean "socket"'),
    ],
)
def test_settings_are_checked(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SupervisorServices.validate_settings(settings)


def test_defaults_and_registration() -> None:
    backend = SupervisorServices({})
    assert (backend.config.socket, backend.config.timeout) == ("/var/run/supervisor.sock", 60.0)
    assert "password" not in repr(SupervisorServices({"username": "u", "password": "p"}).config)
    registry = load_plugins([services_plugin], entry_points=False).registry
    assert registry.services("supervisor") is SupervisorServices
