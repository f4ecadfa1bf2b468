"""The agent's handle on its fence keeper, with real processes: a keeper that keeps dying is
started again every time, and reported failing (docs/fencing.md). The keeper's fencing itself
is proven in tests/fault/test_agent_death.py."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from hacore.agent.hooks import NodeLog
from hacore.agent.keeper import RESTARTS_FAILING, KeeperProcess
from hacore.testing.procs import wait_for


def test_a_keeper_that_keeps_exiting_is_restarted_and_fails_its_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keeper = KeeperProcess(tmp_path / "node.yaml", tmp_path)
    dies = "import time; time.sleep(0.5); raise SystemExit(3)"
    monkeypatch.setattr(keeper, "argv", lambda: [sys.executable, "-c", dies])
    log = NodeLog(logging.getLogger("test"), "n1")
    keeper.ensure(log)
    assert keeper.health().ok, "a keeper that was just started passes"
    for _ in range(RESTARTS_FAILING):
        wait_for(lambda: keeper.process.pid() is None, 30.0, what="the keeper to exit")
        keeper.ensure(log)
    assert keeper.starts == RESTARTS_FAILING + 1
    result = keeper.health()
    assert not result.ok and "keeps exiting" in result.detail, result
    assert not keeper.health("disk full").ok
    keeper.stop()
