"""The ``systemd`` services backend: the commands it issues and how it reads the answers.

There is no running systemd on the test machine, so this tests what can be tested honestly:
the exact ``systemctl`` command lines (and that the real systemctl 252 binary accepts them),
and the parsing of systemctl's output, from captures in ``tests/data/systemctl`` (see its
README: hand-written in systemd 252's format). It does not prove that a real systemd starts
or stops anything.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

import hacore_plugins.services as services_plugin
from hacore.agent.checks import ActiveServices, LoopFacts
from hacore.errors import ConfigError, ServiceError
from hacore.plugins.registry import load_plugins
from hacore_plugins.services.systemd import CommandResult, SystemdServices, run_command
from hacore_plugins.services.systemd_show import UnitState

DATA = Path(__file__).parent.parent / "data" / "systemctl"
SHOW = (
    "show --property=Id,LoadState,ActiveState,SubState,MainPID,Result,ExecMainCode,ExecMainStatus"
)


def capture(name: str, returncode: int = 0) -> CommandResult:
    text = (DATA / name).read_text()
    if name.endswith(".stderr"):
        return CommandResult(returncode, "", text)
    return CommandResult(returncode, text, "")


OK = CommandResult(0, "", "")


class FakeSystemctl:
    """Answers each verb from a capture, and records every command line and timeout."""

    def __init__(self, **answers: CommandResult) -> None:
        self.answers = answers
        self.calls: list[tuple[str, float]] = []

    def __call__(self, argv: Sequence[str], timeout: float) -> CommandResult:
        self.calls.append((" ".join(argv), timeout))
        verb = next(arg for arg in argv[1:] if not arg.startswith("-"))
        return self.answers[verb]


def backend(fake: FakeSystemctl, **settings: object) -> SystemdServices:
    return SystemdServices(settings, runner=fake)


# -- command lines ---------------------------------------------------------------------------


def test_the_exact_commands_for_the_system_manager() -> None:
    fake = FakeSystemctl(start=OK, stop=OK, show=capture("show-active.txt"))
    services = backend(fake)
    services.start("manager-worker")
    services.stop("manager-worker")
    services.status("manager-worker")
    assert fake.calls == [
        ("systemctl --no-ask-password start -- manager-worker", 100.0),
        (f"systemctl {SHOW} -- manager-worker", 5.0),
        ("systemctl --no-ask-password stop -- manager-worker", 100.0),
        (f"systemctl {SHOW} -- manager-worker", 5.0),
    ]


def test_the_exact_commands_for_a_user_manager_and_another_systemctl() -> None:
    fake = FakeSystemctl(start=OK, stop=OK, show=capture("show-active.txt"))
    services = backend(fake, user=True, systemctl="/usr/local/bin/systemctl", timeout=30)
    services.start("worker.service")
    services.stop("worker.service")
    assert fake.calls == [
        ("/usr/local/bin/systemctl --user --no-ask-password start -- worker.service", 30.0),
        (f"/usr/local/bin/systemctl --user {SHOW} -- worker.service", 5.0),
        ("/usr/local/bin/systemctl --user --no-ask-password stop -- worker.service", 30.0),
    ]


SYSTEMCTL = shutil.which("systemctl")


@pytest.mark.skipif(SYSTEMCTL is None, reason="no systemctl binary")
@pytest.mark.parametrize("user", [False, True])
@pytest.mark.parametrize("verb", ["start", "stop", "show"])
def test_the_real_systemctl_accepts_the_command_lines(verb: str, user: bool) -> None:
    """systemctl parses its options before it talks to systemd, so a wrong option shows here.

    The unit does not exist: on a host with a running systemd this only fails "not found".
    """
    assert SYSTEMCTL is not None
    argv = SystemdServices({"systemctl": SYSTEMCTL, "user": user}).command(
        verb, "hacore-test-no-such-unit.service"
    )
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    for complaint in ("unrecognized option", "invalid option", "Unknown command verb", "Usage"):
        assert complaint not in done.stderr, done.stderr


# -- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "running", "detail"),
    [
        ("show-active.txt", True, "active (running), main pid 4242"),
        ("show-inactive.txt", False, "inactive (dead)"),
        ("show-failed.txt", False, "failed (failed), result exit-code, exited with status 1"),
        ("show-failed-signal.txt", False, "failed (failed), result signal, killed by SIGKILL"),
        ("show-activating.txt", False, "activating (start), main pid 4317"),
        (
            "show-auto-restart.txt",
            False,
            "activating (auto-restart), result exit-code, exited with status 2",
        ),
        ("show-deactivating.txt", False, "deactivating (stop-sigterm), main pid 4242"),
        ("show-masked.txt", False, "masked, inactive (dead)"),
    ],
)
def test_status_reads_the_unit_state(name: str, running: bool, detail: str) -> None:
    status = backend(FakeSystemctl(show=capture(name))).status("manager-worker")
    assert (status.name, status.running, status.detail) == ("manager-worker", running, detail)


def test_the_parser_keeps_every_field() -> None:
    state = UnitState.parse((DATA / "show-failed-signal.txt").read_text())
    assert state == UnitState(
        id="manager-worker.service",
        load_state="loaded",
        active_state="failed",
        sub_state="failed",
        main_pid=0,
        result="signal",
        exec_main_code=2,
        exec_main_status=9,
    )


def test_output_without_the_asked_properties_is_an_error() -> None:
    with pytest.raises(ServiceError, match=r"systemctl show gave no Id, LoadState"):
        UnitState.parse("ActiveState=active\nSubState=running\n")
    with pytest.raises(ServiceError, match=r"MainPID=abc is not a number"):
        UnitState.parse(
            "Id=a.service\nLoadState=loaded\nActiveState=active\nSubState=x\nMainPID=abc"
        )


def test_a_unit_that_does_not_exist_is_a_clear_error() -> None:
    fake = FakeSystemctl(
        show=capture("show-not-found.txt"),
        start=capture("start-not-found.stderr", 5),
        stop=capture("stop-not-loaded.stderr", 5),
    )
    services = backend(fake)
    with pytest.raises(ServiceError, match=r"^systemd has no unit named nosuch.service$"):
        services.status("nosuch")
    for operation in (services.start, services.stop):
        with pytest.raises(ServiceError, match=r"^systemd has no unit named nosuch$"):
            operation("nosuch")


# -- start and stop --------------------------------------------------------------------------


def test_start_checks_the_unit_runs_afterwards() -> None:
    services = backend(FakeSystemctl(start=OK, show=capture("show-failed.txt")))
    with pytest.raises(ServiceError) as err:
        services.start("manager-worker")
    assert str(err.value) == (
        "systemd unit manager-worker.service is failed (failed), result exit-code, exited with "
        "status 1 right after it was started; see journalctl -u manager-worker.service"
    )
    auto_restart = backend(FakeSystemctl(start=OK, show=capture("show-auto-restart.txt")))
    with pytest.raises(ServiceError, match=r"is activating \(auto-restart\)"):
        auto_restart.start("manager-worker")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (
            "start-job-failed.stderr",
            r"^systemctl start manager-worker failed: Job for manager-worker.service failed "
            r'because the control process exited with error code. See "systemctl status',
        ),
        (
            "start-auth-required.stderr",
            r"^systemctl start manager-worker failed: Failed to start manager-worker.service: "
            r"Interactive authentication required\.",
        ),
    ],
)
def test_a_failed_start_says_what_systemctl_said(name: str, message: str) -> None:
    fake = FakeSystemctl(start=capture(name, 1))
    with pytest.raises(ServiceError, match=message):
        backend(fake).start("manager-worker")
    assert len(fake.calls) == 1


def test_stop_of_a_stopped_unit_succeeds() -> None:
    # systemctl stop of an inactive unit exits 0 and prints nothing
    fake = FakeSystemctl(stop=OK)
    backend(fake).stop("manager-worker")
    backend(fake).stop("manager-worker")
    assert len(fake.calls) == 2


def test_the_active_services_check_reads_systemd_states() -> None:
    services = backend(FakeSystemctl(show=capture("show-failed.txt")))
    check = ActiveServices(LoopFacts("n1", active=True), 10.0, services, ["w"])
    result = check.run()
    assert not result.ok
    assert (
        result.detail == "not running: w (failed (failed), result exit-code, exited with status 1)"
    )


# -- the default runner and the settings -----------------------------------------------------


def test_the_default_runner_reports_a_missing_program_and_a_timeout() -> None:
    with pytest.raises(ServiceError, match=r"cannot run /nonexistent/systemctl: no such program"):
        run_command(["/nonexistent/systemctl", "show"], 5)
    with pytest.raises(ServiceError, match=r"^sleep 10 did not finish within 0.2 s$"):
        run_command(["sleep", "10"], 0.2)
    assert run_command(["sh", "-c", "echo out; echo err >&2; exit 3"], 10) == CommandResult(
        3, "out\n", "err\n"
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"user": "yes"}, r"services\.user must be true or false"),
        ({"timeout": 0}, r"services\.timeout must be a number of seconds > 0"),
        ({"systemctl": 3}, r"services\.systemctl must be a non-empty string"),
        (
            {"unit": "x"},
            r'unknown key "unit" in services \(known keys: active_only, backend, everywhere, '
            r"systemctl, timeout, user\)",
        ),
        ({"everywher": ["x"]}, r'unknown key "everywher" in services; did you mean "everywhere"'),
    ],
)
def test_settings_are_checked(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SystemdServices.validate_settings(settings)


def test_registration() -> None:
    registry = load_plugins([services_plugin], entry_points=False).registry
    assert registry.services("systemd") is SystemdServices
    assert registry.names("services") == ["process", "supervisor", "systemd"]
