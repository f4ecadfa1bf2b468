"""A node running another hacore version is refused a join with a message that names both
versions and the way out (the same version on the node, or the upgrade procedure). The
refusal through the real CLI, with nothing changed, is in tests/integration/test_cluster_cli.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import pytest

from hacore.agent.runtime import Agent
from hacore.api.errors import ConflictError
from hacore.cluster.grant import _check_compatible
from hacore.cluster.operation_state import ClusterState
from hacore.cluster.record import VERSION_OVERRIDE_ENV
from hacore.cluster.ticket import JoinRequest
from hacore.config.node import load_config


def test_another_version_is_refused_naming_both_and_the_procedure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(VERSION_OVERRIDE_ENV, "2.0.0")
    config = load_config(
        {
            "node": {"name": "n1", "host": "127.0.0.1", "data_dir": "/tmp/unused"},
            "consensus": {"backend": "memory"},
        }
    )
    agent = cast(Agent, SimpleNamespace(config=config))
    state = cast(ClusterState, SimpleNamespace(record=SimpleNamespace(name="prod")))
    request = JoinRequest(
        name="n4",
        host="127.0.0.1",
        api_url="https://127.0.0.1:8008",
        version="1.9.0",
        empty=True,
        not_empty="",
        consensus_backend=config.consensus.backend,
        managed=config.consensus.managed,
        replication_backend=config.replication.backend if config.replication else "",
    )
    with pytest.raises(ConflictError) as refused:
        _check_compatible(agent, state, request)
    message = str(refused.value)
    assert "n4 runs hacore 1.9.0 but cluster prod runs hacore 2.0.0" in message
    assert "install hacore 2.0.0 on n4 first" in message
    assert "move the cluster to hacore 1.9.0 with the upgrade procedure" in message
    assert 'docs/snapshots.md, "Upgrading hacore"' in message
    assert "\n" not in message
