"""The ``supervisor`` services backend: programs of a running supervisord.

The programs are defined in supervisord's own configuration, with ``autostart=false`` for the
active-only ones (hacore decides when they run). A service name is the program's name as
``supervisorctl`` shows it (``worker``, or ``group:worker_00``).
"""

from __future__ import annotations

import time
import xmlrpc.client
from collections.abc import Mapping
from typing import Any, NoReturn

from hacore.backends.services import ServiceBackend, ServiceStatus
from hacore.errors import ServiceError
from hacore_plugins.services.supervisor_rpc import Faults, SupervisorClient, SupervisorSettings

#: a status query must stay short: the health checks run it every loop
QUERY_TIMEOUT = 5.0
_STARTING = ("STARTING", "BACKOFF")


class SupervisorServices(ServiceBackend):
    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        self.config = SupervisorSettings.parse(settings)
        self.client = SupervisorClient(self.config)

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        SupervisorSettings.parse(settings)

    def start(self, name: str) -> None:
        try:
            self.client.call("startProcess", name, True)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode == Faults.ALREADY_STARTED:
                self._wait_running(name)
                return
            self._fail("start", name, fault)

    def stop(self, name: str) -> None:
        try:
            self.client.call("stopProcess", name, True)
        except xmlrpc.client.Fault as fault:
            if fault.faultCode != Faults.NOT_RUNNING:
                self._fail("stop", name, fault)

    def status(self, name: str) -> ServiceStatus:
        info = self._info(name)
        state = str(info.get("statename", "UNKNOWN"))
        description = str(info.get("description", ""))
        detail = f"{state}: {description}" if description else state
        return ServiceStatus(name, state == "RUNNING", detail)

    def _info(self, name: str) -> dict[str, Any]:
        try:
            info: dict[str, Any] = self.client.call("getProcessInfo", name, timeout=QUERY_TIMEOUT)
        except xmlrpc.client.Fault as fault:
            self._fail("query", name, fault)
        return info

    def _wait_running(self, name: str) -> None:
        """Another start is under way (STARTING, or BACKOFF between retries): wait for it."""
        deadline = time.monotonic() + self.config.timeout
        while True:
            status = self.status(name)
            state = status.detail.split(":", 1)[0]
            if status.running:
                return
            if state not in _STARTING:
                raise ServiceError(f"supervisor could not start {name}: {status.detail}")
            if time.monotonic() >= deadline:
                raise ServiceError(
                    f"supervisor program {name} is still {state} after {self.config.timeout:g} s"
                )
            time.sleep(0.1)

    def _fail(self, verb: str, name: str, fault: xmlrpc.client.Fault) -> NoReturn:
        if fault.faultCode == Faults.BAD_NAME:
            raise ServiceError(
                f"supervisor has no program named {name} (at {self.config.where}); "
                "check supervisorctl status"
            )
        reason = fault.faultString
        if fault.faultCode in (Faults.SPAWN_ERROR, Faults.ABNORMAL_TERMINATION):
            try:
                info = self._info(name)
                state = info.get("statename")
                spawnerr = info.get("spawnerr") or info.get("description")
                reason = f"{spawnerr} ({state})"
            except ServiceError:
                pass
        raise ServiceError(f"supervisor could not {verb} {name}: {reason}")
