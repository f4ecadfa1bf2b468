"""The agent's self-fencing deadline as the composition root wires it (lease, failsafe,
pause, minority, deadline), over an in-memory store: what the deadline and renewal unit
tests build around the part they test."""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path

import attrs

from hacore.agent.deadline import Deadline
from hacore.agent.failsafe_edge import FailsafeEdge
from hacore.agent.hooks import NodeLog
from hacore.agent.jobs import Jobs
from hacore.agent.lease import LeaseState
from hacore.agent.minority import MinorityEdge
from hacore.agent.pause_control import PauseControl
from hacore.agent.vocabulary import DecisionConfig
from hacore.agent.wiring import decision_config
from hacore.config.node import load_config
from hacore.testing.memory import MemoryConsensus, drop_store


@attrs.frozen
class DeadlineChain:
    consensus: MemoryConsensus
    dcfg: DecisionConfig
    log: NodeLog
    lease: LeaseState
    failsafe: FailsafeEdge
    pause: PauseControl
    deadline: Deadline


@contextlib.contextmanager
def deadline_chain(
    data_dir: Path,
    *,
    ttl: float,
    loop_wait: float,
    retry_timeout: float,
    safety_margin: float,
    failsafe: bool = False,
) -> Iterator[DeadlineChain]:
    """Node ``a`` of a store of its own, with these timings (and failsafe mode on or off)."""
    store = f"deadline-{secrets.token_hex(4)}"
    settings: dict[str, object] = {
        "node": {"name": "a", "host": "127.0.0.1", "data_dir": str(data_dir)},
        "consensus": {"backend": "memory", "settings": {"store": store}},
        "timing": {
            "ttl": ttl,
            "loop_wait": loop_wait,
            "retry_timeout": retry_timeout,
            "safety_margin": safety_margin,
        },
    }
    if failsafe:
        settings["failover"] = {"failsafe_mode": "on"}
    config = load_config(settings)
    consensus = MemoryConsensus(
        {"store": store}, namespace="ns", node_name="a", ttl=ttl, retry_timeout=retry_timeout
    )
    log = NodeLog(logging.getLogger("test"), "a")
    dcfg = decision_config(config)
    lease = LeaseState()
    edge = FailsafeEdge(config, dcfg, lease, log)
    pause = PauseControl("a", consensus, lease, Jobs("a", on_done=lambda: None), log)
    minority = MinorityEdge("a", dcfg, None, data_dir, log)
    deadline = Deadline(dcfg, lease, minority, edge, pause)
    try:
        yield DeadlineChain(consensus, dcfg, log, lease, edge, pause, deadline)
    finally:
        edge.close()
        consensus.close()
        drop_store(store)
