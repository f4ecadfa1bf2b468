"""The systemd unit of the agent service (``hacore agent unit``).

The choices that matter, and why (docs/agent.md, "Running under systemd"):

- ``KillMode=process``: on ``systemctl stop`` or ``restart`` systemd signals the agent alone.
  The agent's clean stop hands over and stops its own database in order; the managed store
  member (etcd, ZooKeeper) and the fence keeper are detached processes meant to outlive the
  agent (restarting an agent must not cost the store a member, and a keeper that dies with a
  hung agent guards nothing). With the default ``control-group`` systemd would SIGTERM all of
  them at once: the store loses a member on every agent upgrade, PostgreSQL is shut down
  behind the agent's back while it still hands over, and the keeper is gone.
- ``ExecReload`` sends SIGHUP: the agent re-reads ``node.yaml`` and applies what can change
  at runtime (the ``logging`` section), and logs what needs a restart.
- ``TimeoutStopSec`` covers a clean stop: the agent's last loop and hand-over (up to 60 s),
  its jobs (up to 60 s) and PostgreSQL's shutdown. Past it systemd SIGKILLs the agent only,
  which the keeper and the next agent treat as a crash.
- ``Nice=-10``, ``IOSchedulingClass=best-effort``, ``IOSchedulingPriority=0`` with
  ``priority="raised"``: the agent, its keeper, its store member and the database it starts
  (children inherit both) win the CPU and the disk queue against ordinary processes, so a
  busy machine delays a lease renewal or a store heartbeat less (etcd's tuning guide asks the
  same for etcd). Measured in ``benchmarks/soak.py --priority raised``.
- ``LimitNOFILE``: the agent raises its soft descriptor limit to the hard one by itself
  (:func:`hacore.api.limits.raise_open_file_limit`); the unit raises the hard limit, which an
  unprivileged process cannot.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

#: seconds for a clean stop (see the module docstring)
TIMEOUT_STOP = 180
#: the hard descriptor limit the agent's soft limit is raised to
NOFILE = 65536
RESTART_SEC = 2
#: ``--priority raised``: the niceness (-20..19; lower runs first) and I/O level (0..7)
RAISED_NICE = -10
RAISED_IO_LEVEL = 0


def hacore_argv() -> list[str]:
    """How this hacore is started: its console script next to the interpreter, else
    ``python -m hacore.cli`` (an absolute path either way, as systemd requires)."""
    script = Path(sys.executable).parent / "hacore"
    if script.is_file():
        return [str(script.absolute())]
    return [str(Path(sys.executable).absolute()), "-m", "hacore.cli"]


def agent_unit(
    config_path: str | Path,
    *,
    user: str | None = None,
    command: list[str] | None = None,
    description: str = "hacore agent",
    priority: str = "raised",
) -> str:
    """The unit file's text for ``hacore agent run -c CONFIG_PATH``."""
    config = str(Path(config_path).absolute())
    argv = [*(command or hacore_argv()), "agent", "run", "-c", config]
    lines = [
        "[Unit]",
        f"Description={description} ({config})",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=exec",
    ]
    if user:
        lines.append(f"User={user}")
    lines += [
        f"ExecStart={shlex.join(argv)}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "# Signal the agent alone: the store member and the fence keeper it started outlive",
        "# it, and the agent stops its own database after handing over (docs/agent.md).",
        "KillMode=process",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={TIMEOUT_STOP}",
        "Restart=on-failure",
        f"RestartSec={RESTART_SEC}",
        f"LimitNOFILE={NOFILE}",
    ]
    if priority == "raised":
        lines += [
            "# Ahead of ordinary processes for the CPU and the disk: renewals and the store's",
            "# heartbeats wait less on a busy machine (docs/agent.md).",
            f"Nice={RAISED_NICE}",
            "IOSchedulingClass=best-effort",
            f"IOSchedulingPriority={RAISED_IO_LEVEL}",
        ]
    lines += [
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return "\n".join(lines)
