"""The ``process`` and ``supervisor`` services backends under the services contract suite.

Every service is a small Python loop whose command line carries a marker unique to the
harness and the service, so the harness counts and kills its processes from ``/proc``,
without asking the backend. :class:`SupervisorHarness` runs its own ``supervisord`` (a
generated configuration, a unix socket with credentials, ``nodaemon``) and stops it by pid.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from hacore import ServiceBackend
from hacore.testing.family_harness import ServicesHarness
from hacore.testing.procs import ServerProcess, wait_for
from hacore_plugins.services.process import ProcessServices
from hacore_plugins.services.supervisor import SupervisorServices

#: one line each: supervisord reads its commands from an ini file
LOOP = "import itertools, time; [time.sleep(1) for _ in itertools.count()]"
CRASH = "import sys; sys.stderr.write('boom'); sys.exit(3)"


def marked_pids(marker: str) -> list[int]:
    """Processes (not zombies) with ``marker`` as one of their arguments."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker.encode() in argv:
            pids.append(int(entry.name))
    return pids


class _MarkedServices(ServicesHarness):
    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.token = secrets.token_hex(4)

    def marker(self, name: str) -> str:
        return f"hacore-contract-{self.token}-{name}"

    def argv(self, name: str) -> list[str]:
        body = CRASH if name == self.failing else LOOP
        return [sys.executable, "-c", body, self.marker(name)]

    def pids(self, name: str) -> frozenset[int]:
        return frozenset(marked_pids(self.marker(name)))

    def kill(self, name: str) -> None:
        for pid in marked_pids(self.marker(name)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        for name in (*self.runnable, self.failing or ""):
            if name:
                self.kill(name)


class ProcessHarness(_MarkedServices):
    backend_name = "process"

    def settings(self) -> dict[str, Any]:
        names = [*self.runnable, *([self.failing] if self.failing else [])]
        return {
            "run_dir": str(self.workdir / "run"),
            "stop_timeout": 5,
            "start_grace": 0.5,
            "commands": {name: self.argv(name) for name in names},
        }

    def make_backend(self) -> ServiceBackend:
        return ProcessServices(self.settings())


USER, PASSWORD = "hacore", "contract-pass"


class SupervisorHarness(_MarkedServices):
    backend_name = "supervisor"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.server: ServerProcess | None = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return None if shutil.which("supervisord") else "supervisord is not installed"

    @property
    def socket(self) -> Path:
        return self.workdir / "supervisor.sock"

    def _program(self, name: str, *, startsecs: int) -> str:
        command = shlex.join(self.argv(name))
        return (
            f"[program:{name}]\ncommand={command}\nautostart=false\nautorestart=false\n"
            f"startsecs={startsecs}\nstartretries=0\nstopwaitsecs=5\n"
        )

    def start(self) -> None:
        binary = shutil.which("supervisord")
        assert binary is not None
        tmp = self.workdir
        programs = [self._program(name, startsecs=1) for name in self.runnable]
        if self.failing:
            # long enough that even a loaded machine sees the exit within it: FATAL
            programs.append(self._program(self.failing, startsecs=10))
        conf = tmp / "supervisord.conf"
        conf.write_text(
            f"[unix_http_server]\nfile={self.socket}\nchmod=0700\n"
            f"username={USER}\npassword={PASSWORD}\n\n"
            f"[supervisord]\nnodaemon=true\nuser=root\nlogfile={tmp}/supervisord.log\n"
            f"pidfile={tmp}/supervisord.pid\nchildlogdir={tmp}\n\n"
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
            + "\n".join(programs)
        )
        self.server = ServerProcess(
            "supervisord", [binary, "-c", str(conf)], tmp / "supervisord.out"
        ).start()
        probe = self.make_backend()
        wait_for(lambda: probe.status(self.runnable[0]), 30, what="supervisord to answer")

    def make_backend(self) -> ServiceBackend:
        return SupervisorServices(
            {"socket": str(self.socket), "username": USER, "password": PASSWORD}
        )

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(timeout=30)
            self.server = None
        super().stop()
