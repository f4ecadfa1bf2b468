"""The replication ABC's default ``address()`` (where the other nodes reach the database) and
the typed role of its status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hacore.backends.replication import ReplicationBackend, ReplicationRole, ReplicationStatus
from hacore.errors import ReplicationError


class Minimal(ReplicationBackend):
    """A backend that only says where it listens (nothing else is called here)."""


Minimal.__abstractmethods__ = frozenset()


def _backend(settings: dict[str, Any]) -> ReplicationBackend:
    return Minimal(settings, node_name="n1", host="10.0.0.7", data_dir=Path("/nonexistent"))


def test_default_address_is_the_host_and_the_port_setting() -> None:
    assert _backend({"port": 5433}).address() == ("10.0.0.7", 5433)


@pytest.mark.parametrize("settings", [{}, {"port": "5433"}, {"port": True}])
def test_default_address_needs_an_integer_port(settings: dict[str, Any]) -> None:
    with pytest.raises(ReplicationError, match="must implement address"):
        _backend(settings).address()


def test_the_role_is_an_enum_that_prints_and_serialises_as_before() -> None:
    status = ReplicationStatus(running=True, role=ReplicationRole.PRIMARY)
    assert status.role is ReplicationRole.PRIMARY
    assert f"a {status.role}" == "a primary"
    assert json.dumps({"role": status.role}) == '{"role": "primary"}'
    assert not ReplicationStatus(running=False, role=ReplicationRole.UNKNOWN).known


def test_a_plugin_that_returns_the_word_gets_the_enum_and_a_wrong_word_fails() -> None:
    # a replication plugin written before the role was typed
    assert ReplicationStatus(running=True, role="standby").role is ReplicationRole.STANDBY
    with pytest.raises(ValueError):
        ReplicationStatus(running=True, role="replica")
