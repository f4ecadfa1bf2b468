"""``hacore agent unit --priority``: the systemd lines that put the agent and what it starts
ahead of ordinary processes for the CPU and the disk (hacore/cli/agent_unit.py)."""

from __future__ import annotations

from click.testing import CliRunner

from hacore.cli import cli
from hacore.cli.agent_unit import agent_unit

PRIORITY_LINES = ("Nice=-10", "IOSchedulingClass=best-effort", "IOSchedulingPriority=0")


def _service(text: str) -> list[str]:
    section = text.split("[Service]", 1)[1].split("[Install]", 1)[0]
    return [line for line in section.splitlines() if line and not line.startswith("#")]


def test_raised_is_the_default_and_normal_leaves_the_priority_alone() -> None:
    raised = _service(agent_unit("/etc/hacore/node.yaml"))
    assert all(line in raised for line in PRIORITY_LINES), raised
    normal = _service(agent_unit("/etc/hacore/node.yaml", priority="normal"))
    assert not any(line.startswith(("Nice=", "IOScheduling")) for line in normal), normal


def test_the_cli_option_reaches_the_unit() -> None:
    runner = CliRunner()
    text = runner.invoke(cli, ["agent", "unit", "-c", "/etc/hacore/node.yaml"]).output
    assert "Nice=-10" in text
    args = ["agent", "unit", "-c", "/etc/hacore/node.yaml", "--priority", "normal"]
    assert "Nice=" not in runner.invoke(cli, args).output
