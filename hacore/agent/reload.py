"""SIGHUP (``systemctl reload``): read ``node.yaml`` again and apply what may change at runtime.

Only the ``logging`` section is applied in place: everything else a node reads from its file
(its name, ports, data directory, backends, TLS, timing) shapes servers and sessions that are
already running, and changing it under them would leave the node half in one configuration
and half in the other. Those changes are logged by key, never by value (a backend section
may hold a password), with "restart the agent to apply", so an operator who reloaded sees at
once what did not take effect. A file that does not validate changes nothing; its problems
are logged with the same one-line messages as ``hacore config check``.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from hacore.config.cluster_settings import is_cluster_wide
from hacore.config.logging_setup import SETUP, LogSetup
from hacore.config.node import NodeConfig, load_config
from hacore.config.write_back import changed_keys, to_mapping
from hacore.errors import ConfigError

log = logging.getLogger("hacore.reload")


class Reloader:
    """Re-reads one ``node.yaml``; ``started`` is the configuration the agent runs with."""

    def __init__(self, config_path: str | Path, started: NodeConfig, setup: LogSetup = SETUP):
        self.config_path = Path(config_path)
        self.started = started
        self.setup = setup
        self._lock = threading.Lock()

    def reload(self) -> list[str]:
        """Apply the file's logging section; returns the keys that need a restart."""
        with self._lock:
            log.info("SIGHUP: reading %s again", self.config_path)
            try:
                config = load_config(self.config_path)
            except ConfigError as err:
                for line in str(err).splitlines():
                    log.error("reload refused, nothing changed: %s", line)
                return []
            try:
                applied = self.setup.apply(config.logging)
            except OSError as err:
                log.error("reload: the logging section could not be applied: %s", err)
                applied = []
            for change in applied:
                log.warning("reload applied %s", change)
            old, new = to_mapping(self.started), to_mapping(config)
            old.pop("logging", None)
            new.pop("logging", None)
            pending = changed_keys(old, new)
            for key in pending:
                log.warning("reload: %s changed; restart the agent to apply it", key)
                if is_cluster_wide(key):
                    log.warning(
                        "reload: %s is a cluster-wide setting: once the cluster runs it comes "
                        "from the store (hacore cluster config set)",
                        key,
                    )
            if not applied and not pending:
                log.info("reload: nothing changed")
            return pending

    def install(self) -> None:
        """Handle SIGHUP from now on; the reload runs on a thread of its own, so the signal
        handler returns at once whatever the main thread was doing."""

        def handler(_signum: int, _frame: object) -> None:
            threading.Thread(target=self._reload_logged, name="hacore-reload", daemon=True).start()

        signal.signal(signal.SIGHUP, handler)

    def _reload_logged(self) -> None:
        try:
            self.reload()
        except Exception:
            log.exception("reload failed")
