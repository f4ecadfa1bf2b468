"""A hook plugin that real ``hacore agent run`` processes load in test_agent_real.py and
test_agent_real_companions.py.

It is loaded as an operator's plugin would be (its module named in ``$HACORE_PLUGINS``), and
is steered from outside the agent through files in ``<data_dir>/hooktest/``, because the test
cannot reach into another process:

- every lifecycle hook appends one JSON line to ``calls.jsonl`` (hook, ``time.monotonic()``,
  pid, its arguments), so the test reads the order the agent really used;
- ``veto`` present: ``hacore_before_promote`` returns its text as the veto reason (with
  ``HACORE_AGENT_REAL_IGNORE_VETO=1`` it records the veto and returns None, a node that does
  not honour it: the veto test must then fail);
- ``hold-<hook>`` present: that hook writes ``held-<hook>`` and sleeps, so the test lands a
  SIGKILL at a known point of a promotion instead of racing it;
- ``slow-<hook>`` present: that hook sleeps as many seconds as the file says, then returns
  (a promotion slower than the lease's ttl).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from hacore import hookimpl

CALLS = "calls.jsonl"
HOLD_SECONDS = 600.0


def control_dir(data_dir: Path | str) -> Path:
    return Path(data_dir) / "hooktest"


def _record(config: Any, hook: str, **fields: Any) -> None:
    where = control_dir(config.node.data_dir)
    where.mkdir(exist_ok=True)
    line = {"hook": hook, "at": time.monotonic(), "pid": os.getpid(), **fields}
    with open(where / CALLS, "a") as out:
        out.write(json.dumps(line) + "\n")


def _hold(config: Any, hook: str) -> None:
    where = control_dir(config.node.data_dir)
    if (where / f"hold-{hook}").exists():
        (where / f"held-{hook}").write_text(str(os.getpid()))
        time.sleep(HOLD_SECONDS)
    slow = where / f"slow-{hook}"
    if slow.exists():
        time.sleep(float(slow.read_text()))


@hookimpl
def hacore_before_promote(config: Any) -> str | None:
    veto = control_dir(config.node.data_dir) / "veto"
    if veto.exists():
        reason = veto.read_text().strip() or "vetoed by the test"
        _record(config, "before_promote", veto=reason)
        return None if os.environ.get("HACORE_AGENT_REAL_IGNORE_VETO") == "1" else reason
    _record(config, "before_promote", veto=None)
    _hold(config, "before_promote")
    return None


@hookimpl
def hacore_after_promote(config: Any) -> None:
    _record(config, "after_promote")
    _hold(config, "after_promote")


@hookimpl
def hacore_before_demote(config: Any, reason: str) -> None:
    _record(config, "before_demote", reason=reason)


@hookimpl
def hacore_after_demote(config: Any, reason: str) -> None:
    _record(config, "after_demote", reason=reason)


@hookimpl
def hacore_role_changed(config: Any, old: Any, new: Any) -> None:
    _record(config, "role_changed", old=str(old.value), new=str(new.value))
