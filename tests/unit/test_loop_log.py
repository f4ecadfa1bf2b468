"""The loop says a repeated decision or error once at its level, then at debug level."""

from __future__ import annotations

import logging

import pytest

from hacore.agent.hooks import NodeLog
from hacore.agent.loop_log import LoopLog
from hacore.agent.vocabulary import Action, Decision, NodeState

LOGGER = "hacore.test.loop_log"


def levels(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == LOGGER]


def test_an_error_warns_once_while_it_repeats_and_stands_until_a_step_succeeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    out = LoopLog(NodeLog(logging.getLogger(LOGGER), "n1"))
    out.failed("promote failed: boom")
    out.failed("promote failed: boom")
    assert out.error == "promote failed: boom"
    out.succeeded()
    assert out.error == ""
    out.failed("promote failed: boom")
    assert levels(caplog) == [
        (logging.WARNING, "n1: promote failed: boom"),
        (logging.DEBUG, "n1: promote failed: boom"),
        (logging.WARNING, "n1: promote failed: boom"),
    ]


def test_a_decision_is_said_once_until_it_changes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, LOGGER)
    out = LoopLog(NodeLog(logging.getLogger(LOGGER), "n1"))
    stay = Decision(Action.NONE, NodeState.STANDBY, "following a")
    out.decision(stay)
    out.decision(stay)
    out.decision(Decision(Action.CAMPAIGN, NodeState.PROMOTING, "the lease is free"))
    assert [level for level, _ in levels(caplog)] == [logging.INFO, logging.DEBUG, logging.INFO]
