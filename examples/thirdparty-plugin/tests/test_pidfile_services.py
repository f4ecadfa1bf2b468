"""The ``pidfile`` services backend under hacore's services contract suite.

This is all a plugin author writes to get the suite: a harness that defines a few services
and finds their processes *without* asking the backend, one fixture that yields it, and a
subclass of :class:`~hacore.testing.services_contract.ServicesContract`. The backend is taken
from hacore's registry, as the agent would: the test also proves that the installed plugin
registers it.

Run it where hacore and this package are installed::

    pytest examples/thirdparty-plugin/tests
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hacore_diskspace.pidfile_services import PidfileServices

from hacore import ConfigError, ServiceBackend, load_plugins
from hacore.testing.family_harness import ServicesHarness
from hacore.testing.pytest_plugin import run_family_harness
from hacore.testing.services_contract import ServicesContract

#: a program that runs until it is stopped, and one that fails at once
LOOP = "import time\nwhile True: time.sleep(1)"
CRASH = "import sys; sys.exit(3)"


def marked_pids(marker: str) -> frozenset[int]:
    """Live processes (not zombies) with ``marker`` as one of their arguments."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if marker.encode() in argv and state not in ("Z", "X"):
            found.add(int(entry.name))
    return frozenset(found)


class PidfileHarness(ServicesHarness):
    """Services that are small Python loops; each carries a marker unique to this harness
    in its command line, so the harness counts and kills them from ``/proc``."""

    backend_name = "pidfile"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.token = secrets.token_hex(4)

    def marker(self, name: str) -> str:
        return f"hacore-diskspace-contract-{self.token}-{name}"

    def settings(self) -> dict[str, Any]:
        names = [*self.runnable, *([self.failing] if self.failing else [])]
        return {
            "run_dir": str(self.workdir / "run"),
            "stop_timeout": 5,
            "start_grace": 0.5,
            "commands": {
                name: [
                    sys.executable,
                    "-c",
                    CRASH if name == self.failing else LOOP,
                    self.marker(name),
                ]
                for name in names
            },
        }

    def make_backend(self) -> ServiceBackend:
        backend_class = load_plugins().registry.services(self.backend_name)
        backend_class.validate_settings(self.settings())
        return backend_class(self.settings())

    def pids(self, name: str) -> frozenset[int]:
        return marked_pids(self.marker(name))

    def kill(self, name: str) -> None:
        for pid in self.pids(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        for name in (*self.runnable, self.failing or ""):
            if name:
                self.kill(name)


@pytest.fixture(scope="module")
def services_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PidfileHarness]:
    yield from run_family_harness(PidfileHarness, tmp_path_factory.mktemp("pidfile"))


class TestPidfileServices(ServicesContract):
    """Every test of the shipped suite, against the ``pidfile`` backend."""


def test_the_installed_plugin_registers_the_backend() -> None:
    assert load_plugins().registry.services("pidfile") is PidfileServices


def test_settings_that_cannot_work_are_refused_in_one_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        PidfileServices.validate_settings(
            {"run_dir": "relative", "stop_timeout": 0, "commands": {"api": "python3"}, "x": 1}
        )
    lines = str(refused.value).splitlines()
    assert lines == [
        "services.x: unknown setting (known: run_dir, commands, stop_timeout, start_grace)",
        "services.run_dir: an absolute path is required (got 'relative')",
        "services.stop_timeout: a number of seconds > 0 (got 0)",
        "services.commands.api: a non-empty list of strings",
    ]
    PidfileServices.validate_settings({"run_dir": str(tmp_path), "commands": {"api": ["true"]}})
