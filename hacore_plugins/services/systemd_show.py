"""A unit's state from ``systemctl show --property=...`` (``Key=Value`` lines, any order)."""

from __future__ import annotations

import signal

import attrs

from hacore.errors import ServiceError

PROPERTIES = (
    "Id",
    "LoadState",
    "ActiveState",
    "SubState",
    "MainPID",
    "Result",
    "ExecMainCode",
    "ExecMainStatus",
)
#: ``reloading`` still serves; ``refreshing`` is systemd 256's name for a refresh in place
RUNNING_STATES = ("active", "reloading", "refreshing")
#: ``ExecMainCode`` holds a ``siginfo`` ``si_code``
_CLD_EXITED, _CLD_KILLED, _CLD_DUMPED = 1, 2, 3


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@attrs.frozen
class UnitState:
    id: str
    load_state: str
    active_state: str
    sub_state: str
    main_pid: int = 0
    result: str = ""
    exec_main_code: int = 0
    exec_main_status: int = 0

    @classmethod
    def parse(cls, text: str) -> UnitState:
        values: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip()] = value.strip()
        missing = [
            key for key in ("Id", "LoadState", "ActiveState", "SubState") if key not in values
        ]
        if missing:
            shown = " | ".join(text.strip().splitlines()[:4]) or "nothing"
            raise ServiceError(f"systemctl show gave no {', '.join(missing)} (it printed: {shown})")

        def number(key: str) -> int:
            try:
                return int(values.get(key) or 0)
            except ValueError:
                raise ServiceError(f"systemctl show: {key}={values[key]} is not a number") from None

        return cls(
            id=values["Id"],
            load_state=values["LoadState"],
            active_state=values["ActiveState"],
            sub_state=values["SubState"],
            main_pid=number("MainPID"),
            result=values.get("Result", ""),
            exec_main_code=number("ExecMainCode"),
            exec_main_status=number("ExecMainStatus"),
        )

    @property
    def running(self) -> bool:
        return self.load_state != "not-found" and self.active_state in RUNNING_STATES

    def last_exit(self) -> str:
        """How the main process last ended, or "" when it has not."""
        if self.exec_main_code == _CLD_EXITED:
            return f"exited with status {self.exec_main_status}"
        if self.exec_main_code == _CLD_KILLED:
            return f"killed by {_signal_name(self.exec_main_status)}"
        if self.exec_main_code == _CLD_DUMPED:
            return f"dumped core on {_signal_name(self.exec_main_status)}"
        return ""

    def describe(self) -> str:
        parts = [f"{self.active_state} ({self.sub_state})"]
        if self.load_state not in ("loaded", ""):
            parts.insert(0, self.load_state)
        if self.main_pid:
            parts.append(f"main pid {self.main_pid}")
        if self.result not in ("success", ""):
            parts.append(f"result {self.result}")
            if self.last_exit():
                parts.append(self.last_exit())
        return ", ".join(parts)
