"""The services family: processes that run only on the active, or on every node."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

import attrs


@attrs.frozen
class ServiceStatus:
    name: str
    running: bool
    detail: str = ""


class ServiceBackend(abc.ABC):
    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        """Raise :class:`~hacore.errors.ConfigError` when ``settings`` cannot work."""

    @abc.abstractmethod
    def start(self, name: str) -> None:
        """Start one service and return once it runs; idempotent."""

    @abc.abstractmethod
    def stop(self, name: str) -> None:
        """Stop one service; idempotent."""

    @abc.abstractmethod
    def status(self, name: str) -> ServiceStatus:
        """Whether the service runs now."""
