"""The replication ABC's default ``address()``: where the other nodes reach the database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hacore.backends.replication import ReplicationBackend
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
