"""Health checks over the configured services: which of them are down.

Two checks per node: one for the ``everywhere`` services (run on every node) and one for the
``active_only`` services (``HealthCheck.active_only``: the agent runs it on the active only,
since a standby keeps them stopped on purpose).
"""

from __future__ import annotations

from collections.abc import Iterable

from hacore.config import ServicesSection
from hacore.errors import HacoreError
from hacore.health import CheckResult, HealthCheck
from hacore.services import ServiceBackend


class ServicesHealthCheck(HealthCheck):
    def __init__(
        self,
        backend: ServiceBackend,
        names: Iterable[str],
        active_only: bool,
        *,
        ttl: float = HealthCheck.ttl,
    ) -> None:
        self.backend = backend
        self.names = tuple(names)
        self.active_only = active_only
        self.ttl = ttl
        self.name = "services-active-only" if active_only else "services-everywhere"

    def run(self) -> CheckResult:
        down = []
        for name in self.names:
            try:
                status = self.backend.status(name)
            except HacoreError as err:
                down.append(f"{name} ({err})")
                continue
            if not status.running:
                down.append(f"{name} ({status.detail or 'not running'})")
        if down:
            return CheckResult(False, f"{len(down)} of {len(self.names)} down: " + "; ".join(down))
        return CheckResult(True, f"running: {', '.join(self.names)}")


def services_checks(section: ServicesSection, backend: ServiceBackend) -> list[HealthCheck]:
    """The checks for a node's ``services`` section (none for an empty list)."""
    checks: list[HealthCheck] = []
    if section.everywhere:
        checks.append(ServicesHealthCheck(backend, section.everywhere, active_only=False))
    if section.active_only:
        checks.append(ServicesHealthCheck(backend, section.active_only, active_only=True))
    return checks
