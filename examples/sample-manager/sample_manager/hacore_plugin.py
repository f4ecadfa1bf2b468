"""The manager's hacore plugin: what the manager needs from hacore beyond configuration.

Everything else (which services run on the active, which directory is mirrored) is plain
``node.yaml``. Two things need code:

- ``hacore_after_promote``: settle the workflows the previous active left ``running`` (the
  seed's rule: resumable ones resume on the new active, the others fail at once);
- ``hacore_health_checks``: the active is only healthy while its API answers.

Settings, in ``node.yaml``::

    plugins:
      settings:
        sample_manager:
          dsn: "host=/var/lib/hacore/replication/run port=5432 dbname=manager user=postgres"
          api_url: http://127.0.0.1:8100   # the API of this node (default shown)
          check_timeout: 2                 # seconds the API has to answer the check
          startup_grace: 10                # seconds after a promotion the API may take to start

``dsn`` defaults to the local PostgreSQL that hacore's postgresql backend runs: its socket
directory, ``replication.port``, ``replication.database``, user ``postgres`` (hacore's agent
runs as root, which that server lets in as ``postgres`` over the socket).

The plugin acts only on a node whose ``node.yaml`` has a ``sample_manager`` section (``{}``
takes every default). hacore loads every installed plugin into every agent of the
environment, and an agent that does not run the manager must not get its health check
(which would step that node down) or its recovery.
"""

from __future__ import annotations

import logging
import math
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

import attrs
import psycopg
from psycopg.conninfo import make_conninfo

from hacore import CheckResult, ConfigError, HacoreError, HealthCheck, hookimpl
from hacore.backends.records import ClusterView
from hacore.config.node import NodeConfig
from hacore.plugins.factory import REPLICATION_DIR
from hacore_plugins.postgresql.layout import Layout
from sample_manager.api import DEFAULT_PORT
from sample_manager.db import connect, first_line
from sample_manager.workflows import FAILOVER_REASON, recover_interrupted

PLUGIN_NAME = "sample_manager"
KNOWN = ("dsn", "api_url", "check_timeout", "startup_grace")
DEFAULT_API_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
DEFAULT_CHECK_TIMEOUT = 2.0
DEFAULT_STARTUP_GRACE = 10.0

log = logging.getLogger("sample_manager.hacore_plugin")


@attrs.frozen
class ManagerSettings:
    dsn: str = attrs.field(repr=False)  # may hold a password
    api_url: str = DEFAULT_API_URL
    check_timeout: float = DEFAULT_CHECK_TIMEOUT
    startup_grace: float = DEFAULT_STARTUP_GRACE

    @classmethod
    def from_config(cls, config: NodeConfig) -> ManagerSettings:
        where = f"plugins.settings.{PLUGIN_NAME}"
        raw: Mapping[str, Any] = config.plugins.settings.get(PLUGIN_NAME, {})
        unknown = sorted(set(raw) - set(KNOWN))
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(KNOWN)})"
            )
        dsn = raw.get("dsn") or default_dsn(config)
        if not isinstance(dsn, str):
            raise ConfigError(f"{where}.dsn must be a PostgreSQL connection string")
        api_url = raw.get("api_url", DEFAULT_API_URL)
        if not isinstance(api_url, str) or not api_url.startswith(("http://", "https://")):
            raise ConfigError(f"{where}.api_url must be an http(s) URL (got {api_url!r})")
        return cls(
            dsn,
            api_url.rstrip("/"),
            _seconds(raw, "check_timeout", DEFAULT_CHECK_TIMEOUT, where),
            _seconds(raw, "startup_grace", DEFAULT_STARTUP_GRACE, where),
        )


def _seconds(raw: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{where}.{key} must be a number of seconds > 0 (got {value!r})")
    return float(value)


def default_dsn(config: NodeConfig) -> str:
    """The node's own PostgreSQL as hacore's postgresql backend runs it, over its socket."""
    replication = config.replication
    if replication is None or replication.backend != "postgresql":
        raise ConfigError(
            f"plugins.settings.{PLUGIN_NAME}.dsn is required unless replication.backend is "
            "postgresql (the default DSN is that server's)"
        )
    settings = replication.settings
    socket_dir = Layout((config.node.data_dir / REPLICATION_DIR).absolute()).run_dir
    return make_conninfo(
        host=str(socket_dir),
        port=str(settings.get("port", 5432)),
        dbname=str(settings.get("database", "postgres")),
        user="postgres",
    )


class ApiAnswersCheck(HealthCheck):
    """The active's API answers ``GET /health`` (which also proves the database is writable).

    hacore starts the API when the node becomes active and runs this check from then on; a
    failing first answer would make a new active step down at once (``check_fail_fast``)
    while the API is merely starting. So failures count only ``startup_grace`` seconds after
    the check began running again; a pause longer than that means the node was not active.
    """

    name = "sample-manager-api"
    ttl = 10.0
    active_only = True

    def __init__(self, api_url: str, timeout: float, startup_grace: float) -> None:
        self.url = f"{api_url}/health"
        self.timeout = timeout
        self.startup_grace = startup_grace
        self._since = 0.0
        self._last_run: float | None = None

    def run(self) -> CheckResult:
        now = time.monotonic()
        if self._last_run is None or now - self._last_run > self.startup_grace:
            self._since = now
        self._last_run = now
        result = self.probe()
        if not result.ok and now - self._since < self.startup_grace:
            return CheckResult(True, f"starting (grace {self.startup_grace:g}s): {result.detail}")
        return result

    def probe(self) -> CheckResult:
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout) as answer:
                return CheckResult(True, f"{self.url}: {answer.status}")
        except urllib.error.HTTPError as err:
            return CheckResult(False, f"{self.url}: {err.code} {_error_of(err)}")
        except (OSError, ValueError) as err:
            reason = getattr(err, "reason", None) or err
            return CheckResult(False, f"{self.url}: {reason}")


def _error_of(err: urllib.error.HTTPError) -> str:
    try:
        body = err.read(512).decode(errors="replace")
    except OSError:
        return str(err.reason)
    return body.strip() or str(err.reason)


def configured(config: NodeConfig) -> bool:
    """Whether this node runs the manager: its ``node.yaml`` has our settings section."""
    return PLUGIN_NAME in config.plugins.settings


@hookimpl
def hacore_health_checks(config: NodeConfig) -> list[HealthCheck]:
    if not configured(config):
        return []
    settings = ManagerSettings.from_config(config)
    return [ApiAnswersCheck(settings.api_url, settings.check_timeout, settings.startup_grace)]


@hookimpl
def hacore_after_promote(config: NodeConfig, view: ClusterView) -> None:
    """Resume or fail the workflows the previous active left ``running``.

    Runs on hacore's loop, so it is kept short: one connection with the loop's own
    ``retry_timeout`` and commits that do not wait for a standby (in synchronous mode none
    may be attached yet right after a promotion; a recovery lost in another failover is
    simply done again by the next active).
    """
    if not configured(config):
        return
    settings = ManagerSettings.from_config(config)
    timeout = config.timing.retry_timeout
    try:
        with connect(
            settings.dsn, timeout=max(1, math.ceil(timeout)), application="hacore sample_manager"
        ) as conn:
            conn.execute("SET synchronous_commit = local")
            done = recover_interrupted(conn, reason=FAILOVER_REASON, lock_timeout=timeout)
    except psycopg.Error as err:
        raise HacoreError(
            f"sample_manager: could not settle interrupted workflows ({first_line(err)}); "
            "run python -m sample_manager.recover once the database answers"
        ) from None
    log.info(
        "%s promoted (leader %s): workflows resumed %s, failed %s, still held by a worker %s",
        config.node.name,
        view.leader.name if view.leader else None,
        list(done.resumed),
        list(done.failed),
        list(done.live),
    )
