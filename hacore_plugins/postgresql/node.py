"""The base of the backend: one node's own server and the node-local files it reads.

Everything here touches only this node: the checked settings, the directory layout, the
server's OS user, rendering ``node/`` from the node state (and the TLS copies), and starting,
stopping and reloading the postmaster. Talking to other nodes is in ``sources.py``.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from hacore.backends.log_files import LogTrimmer
from hacore.backends.records import TlsFiles
from hacore.backends.replication import ReplicationBackend, ReplicationSource
from hacore.errors import ConfigError, ReplicationError
from hacore_plugins.postgresql import clone as copying
from hacore_plugins.postgresql import server, tls_files
from hacore_plugins.postgresql.commands import PgTools, ServerUser
from hacore_plugins.postgresql.config_files import (
    UNUSED_HBA,
    parse_pgpass,
    render_hba,
    render_ident,
    render_node_conf,
    render_pgpass,
    with_include,
    without_managed,
)
from hacore_plugins.postgresql.layout import Layout
from hacore_plugins.postgresql.settings import PgSettings, check_synchronous, parse_settings
from hacore_plugins.postgresql.sql import Conn, connect_local
from hacore_plugins.postgresql.state import NodeState, load_state

if TYPE_CHECKING:
    from hacore.config.node import FailoverSettings

log = logging.getLogger(__name__)

NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class PgNode(ReplicationBackend):
    """This node's server and files; the operations are added by the subclasses."""

    accepts_tls: ClassVar[bool] = True

    def __init__(
        self,
        settings: Any,
        *,
        node_name: str,
        host: str,
        data_dir: Path,
        tls: TlsFiles | None = None,
    ) -> None:
        super().__init__(settings, node_name=node_name, host=host, data_dir=data_dir)
        if not isinstance(node_name, str) or not NODE_NAME.fullmatch(node_name):
            raise ConfigError(
                f"node name {node_name!r} must be 1-63 letters, digits, '.', '-' or '_' "
                "(it names the node's replication slot and standby entry)"
            )
        if not isinstance(host, str) or not host or any(c.isspace() for c in host):
            raise ConfigError(f"node host {host!r} must be an IP address or a DNS name")
        self.config: PgSettings = parse_settings(self.settings)
        #: The node's TLS files; None: plain connections, as before TLS existed.
        self.tls = tls
        if tls is not None:
            clash = sorted(tls_files.TLS_PARAMETERS & set(self.config.parameters))
            if clash:
                raise ConfigError(
                    f"postgresql parameter(s) {', '.join(clash)} are set by hacore when the "
                    "node runs with TLS: remove them"
                )
        elif any(c.method == "cert" or c.client_cert for c in self.config.clients):
            raise ConfigError(
                "postgresql setting 'clients' asks for client certificates (method cert or "
                "client_cert: true), which need tls.enabled: true"
            )
        self.layout = Layout(self.data_dir.absolute())
        #: the server log (pg_ctl -l) is read for divergence, so it is not handed to the
        #: logging collector: it is bounded by copy and truncate (hacore.backends.log_files)
        self.log_trimmer = LogTrimmer(self.layout.log_file)
        self.user = ServerUser.lookup(self.config.os_user)
        self.tools = PgTools(self.config.bin_dir, self.user, self.layout.home)
        #: the source a clone made this node's slot on, and when (sources.py)
        self._slot_checked: tuple[ReplicationSource, float] | None = None
        socket = self.layout.run_dir / f".s.PGSQL.{self.config.port}"
        if len(str(socket)) > 107:
            raise ConfigError(
                f"data_dir {self.data_dir} is too long: the socket path {socket} exceeds the "
                "107 bytes a Unix socket allows"
            )

    @classmethod
    def validate_settings(cls, settings: Any) -> None:
        parse_settings(settings)

    @classmethod
    def validate_failover(cls, settings: Any, failover: FailoverSettings) -> None:
        check_synchronous(settings, failover.synchronous_mode)
        if getattr(failover, "minority_mode", "off") == "on":
            wal_level = parse_settings(settings).server_parameters().get("wal_level")
            if wal_level != "logical":
                raise ConfigError(
                    "failover.minority_mode: on salvages a losing node's writes by logical "
                    "decoding: set replication.parameters.wal_level: logical (on every node)"
                )

    def is_initialized(self) -> bool:
        copying.recover_interrupted(self.layout)
        # a copy under way straight into pgdata is no database yet
        return not self.layout.cloning.exists() and (self.layout.pgdata / "PG_VERSION").is_file()

    def postmaster_pid(self) -> int | None:
        """The running server's pid, None when it is stopped."""
        return server.postmaster_pid(self.layout)

    # ---------------------------------------------------------------------------------------
    # Node state and files

    @contextmanager
    def _local(self, *, dbname: str | None = None, timeout: int = 10) -> Iterator[Conn]:
        conn = connect_local(self.layout, self.config, dbname=dbname, timeout=timeout)
        try:
            yield conn
        finally:
            conn.close()

    def _state(self) -> NodeState:
        return load_state(self.layout.state)

    def _save(self, state: NodeState) -> None:
        self.tools.write_file(self.layout.state, state.to_json())

    def _streams(self, state: NodeState) -> bool:
        return state.upstream is not None and not state.was_primary

    def _write_node_files(self, state: NodeState) -> None:
        renewed = self._install_tls()
        secure = self.tls is not None
        shown = state if self._streams(state) else attrs.evolve(state, upstream=None)
        conf = render_node_conf(
            self.config,
            self.layout,
            node_name=self.node_name,
            host=self.host,
            state=shown,
            tls=secure,
        )
        self.tools.write_file(self.layout.node_conf, conf)
        self.tools.write_file(
            self.layout.hba, render_hba(self.config, state.allowed_hosts(self.host), tls=secure)
        )
        local_users = ["root", self.user.name, _current_user()]
        self.tools.write_file(self.layout.ident, render_ident(local_users))
        if renewed and self.postmaster_pid() is not None:
            log.info("%s: TLS files changed; reloading the server", self.node_name)
            self._reload()

    def remember_password(self, user: str, password: str) -> None:
        """Every passfile entry of ``user`` gets ``password`` (the cluster rotated it): the
        WAL receiver reads the passfile at its next connection, so a running stream is not
        cut, and the next reconnect logs in with the new password."""
        try:
            entries = parse_pgpass(self.layout.pgpass.read_text())
        except FileNotFoundError:
            return
        new = {key: password if key[2] == user else old for key, old in entries.items()}
        if new != entries:
            self.tools.write_file(self.layout.pgpass, render_pgpass(new))

    def reload_tls(self) -> None:
        """The node's TLS files (the CRL above all) changed: refresh the server user's
        copies and reload the server, which re-reads ``ssl_crl_file`` on SIGHUP."""
        if self.tls is not None:
            self._write_node_files(self._state())

    def apply_parameters(self, parameters: Mapping[str, str]) -> None:
        """The cluster-wide ``parameters`` changed: check them as ``config check`` would,
        render ``postgresql.conf`` again and reload a running server. What needs a restart
        stays pending (``pending_restart`` in the status) until the server restarts."""
        settings = {**self.settings, "parameters": dict(parameters)}
        config = parse_settings(settings)
        if self.tls is not None:
            clash = sorted(tls_files.TLS_PARAMETERS & set(config.parameters))
            if clash:
                raise ConfigError(
                    f"postgresql parameter(s) {', '.join(clash)} are set by hacore when the "
                    "node runs with TLS: remove them"
                )
        self.settings, self.config = settings, config
        if self.is_initialized() and self.postmaster_pid() is not None:
            log.info("%s: server parameters changed; reloading the server", self.node_name)
            self._write_node_files(self._state())
            self._reload()

    def _install_tls(self) -> bool:
        """Refresh the server user's copies of the TLS files; True when they changed."""
        if self.tls is None:
            return False
        return tls_files.install(self.tls, self.layout, self.user)

    def _without_managed(self, auto_conf: str) -> str:
        return without_managed(auto_conf, tls_files.TLS_PARAMETERS if self.tls else ())

    def _prepare_home(self) -> None:
        blocked = self.user.can_enter(self.layout.home.parent)
        if blocked is not None:
            raise ReplicationError(
                f"the {self.user.name} user cannot enter {blocked} (mode "
                f"{blocked.stat().st_mode & 0o777:04o}); PostgreSQL runs as {self.user.name}: "
                "make that directory traversable or choose another data_dir"
            )
        for directory in self.layout.owned_dirs():
            self.tools.make_dir(directory)

    def _prepare_data(self, pgdata: Path, *, standby: bool) -> None:
        """Make a data directory (new, cloned or rewound) read this node's settings only."""
        main = pgdata / "postgresql.conf"
        text = main.read_text() if main.exists() else ""
        self.tools.write_file(main, with_include(text))
        self.tools.write_file(pgdata / "pg_hba.conf", UNUSED_HBA)
        auto = pgdata / "postgresql.auto.conf"
        if auto.exists():
            self.tools.write_file(auto, self._without_managed(auto.read_text()))
        signal_file = pgdata / "standby.signal"
        if standby and not signal_file.exists():
            self.tools.write_file(signal_file, "")
        for leftover in ("recovery.signal", "postmaster.opts"):
            (pgdata / leftover).unlink(missing_ok=True)

    # ---------------------------------------------------------------------------------------
    # The server process

    def _start(self, *, what: str) -> None:
        self._write_node_files(self._state())
        auto = self.layout.pgdata / "postgresql.auto.conf"
        if auto.exists():
            self.tools.write_file(auto, self._without_managed(auto.read_text()))
        server.start(
            self.tools,
            self.layout,
            timeout=self.config.start_timeout,
            what=f"{self.node_name} ({what})",
        )

    def _stop(self) -> None:
        server.stop(self.layout, timeout=self.config.stop_timeout)

    def _reload(self) -> None:
        pid = self.postmaster_pid()
        if pid is not None:
            os.kill(pid, signal.SIGHUP)

    def _reload_and_confirm(self, name: str, value: str, timeout: float = 15.0) -> None:
        """Reload, and return once new sessions see ``name = value``."""
        self._reload()
        deadline = time.monotonic() + timeout
        while True:
            with self._local() as conn:
                if one(conn, f"SHOW {name}") == value:
                    return
            if time.monotonic() > deadline:
                raise ReplicationError(
                    f"{self.node_name} did not load {name} = {value!r} within {timeout:.0f}s; "
                    f"server log:\n{server.log_tail(self.layout)}"
                )
            time.sleep(0.05)


def one(conn: Conn, query: str) -> Any:
    row = conn.execute(query).fetchone()
    return row[0] if row else None


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _current_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def check_hosts(hosts: Sequence[str]) -> list[str]:
    checked = []
    for host in hosts:
        if not isinstance(host, str) or not re.fullmatch(r"[A-Za-z0-9.:_-]+", host):
            raise ConfigError(f"allowed host {host!r} must be an IP address or a DNS name")
        checked.append(host)
    return checked
