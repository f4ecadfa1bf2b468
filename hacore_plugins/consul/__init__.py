"""The Consul reference plugin: a consensus backend on Consul sessions and KV locks.

Only the client side: hacore does not run Consul servers (no ``managed_servers`` capability);
point ``consensus.settings.endpoints`` at your Consul agents.
"""

from __future__ import annotations

import logging

from hacore.plugins.hookspecs import hookimpl
from hacore.plugins.registry import BackendRegistry

log = logging.getLogger(__name__)


@hookimpl
def hacore_register_backends(registry: BackendRegistry) -> None:
    """Register the Consul backend (when py-consul is installed) and its test harness."""
    try:
        from hacore_plugins.consul.backend import ConsulConsensus
    except ImportError as exc:
        log.debug("consul backend not available: %s", exc)
        why = f"{exc.name or exc} is missing: pip install 'hacore[consul]'"
        for family in ("consensus", "test_harness"):
            registry.add_missing(family, "consul", why)
        return
    registry.add_consensus("consul", ConsulConsensus)
    registry.add_test_harness("consul", "hacore_plugins.consul.testing:ConsulHarness")
