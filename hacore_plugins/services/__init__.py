"""The services reference plugin: plain processes, supervisord programs, systemd units."""

from __future__ import annotations

from hacore.plugins.hookspecs import hookimpl
from hacore.plugins.registry import BackendRegistry
from hacore_plugins.services.process import ProcessServices
from hacore_plugins.services.supervisor import SupervisorServices
from hacore_plugins.services.systemd import SystemdServices

__all__ = ["ProcessServices", "SupervisorServices", "SystemdServices"]


@hookimpl
def hacore_register_backends(registry: BackendRegistry) -> None:
    registry.add_services("process", ProcessServices)
    registry.add_services("supervisor", SupervisorServices)
    registry.add_services("systemd", SystemdServices)
