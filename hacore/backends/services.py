"""The services family: processes that run only on the active, or on every node."""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from hacore.backends.declarations import Declarations
from hacore.errors import ServiceError


@attrs.frozen
class ServiceStatus:
    name: str
    running: bool
    detail: str = ""


class ServiceBackend(Declarations, abc.ABC):
    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)

    @classmethod
    def validate_services(cls, settings: Mapping[str, Any], names: Iterable[str]) -> None:
        """Raise :class:`~hacore.errors.ConfigError` when a listed service cannot exist here.

        Called with the names of ``active_only`` and ``everywhere`` after
        :meth:`validate_settings`, so a backend that defines its services in its own settings
        (the process backend) refuses a name it has no command for when the file is loaded,
        not at the first promotion. Backends that ask a service manager accept any name.
        """

    @abc.abstractmethod
    def start(self, name: str) -> None:
        """Start one service and return once it runs; idempotent."""

    @abc.abstractmethod
    def stop(self, name: str) -> None:
        """Stop one service; idempotent."""

    @abc.abstractmethod
    def status(self, name: str) -> ServiceStatus:
        """Whether the service runs now."""

    def start_all(self, names: Iterable[str]) -> None:
        """Start in the order given (list a broker before the workers that need it).

        Stops at the first failure: a later service may depend on the one that failed.
        """
        for name in names:
            self.start(name)

    def stop_all(self, names: Iterable[str]) -> None:
        """Stop in the reverse order, every one even when some fail, then report all failures.

        Fencing must not leave a service running because another one would not stop.
        """
        failures: list[str] = []
        for name in reversed(list(names)):
            try:
                self.stop(name)
            except ServiceError as err:
                failures.append(str(err))
        if failures:
            raise ServiceError("; ".join(failures))
