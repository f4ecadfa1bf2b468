"""This node's own ZooKeeper server, grown and shrunk by dynamic reconfiguration.

Settings::

    managed_store:
      client_port: 2181
      peer_port: 2888
      election_port: 3888
      server_id: 1           # optional; bootstrap uses 1, join takes the id add_member assigns
      tick_time_ms: 250      # optional; sessions of 2 ticks to 60 s are granted
      jvm_options: [-Xmx256m, -XX:+UseSerialGC]   # optional

A :class:`~hacore.backends.records.StoreMember`'s ``peer_url`` is
``host:peer_port:election_port`` and its ``client_url`` ``host:client_port``.

With ``tls`` (the node's :class:`~hacore.backends.records.TlsFiles`) quorum and election traffic use
TLS, and ``client_port`` is the server's ``secureClientPort``: there is no plain client port,
clients must show a certificate from the CA, and the Python side trusts that CA alone. A
secure client port is static configuration, absent from the ``server.N`` lines that dynamic
reconfiguration spreads, so the servers' client addresses are kept in the registry znode
(below) and cached in ``hacore-zookeeper-clients.json`` for :meth:`client_settings`.

Files in ``data_dir``: ``zoo.cfg`` (regenerated before each start), ``zoo.cfg.dynamic*``
(the ensemble; ZooKeeper writes a new one after every reconfig), ``data/`` (snapshots, logs,
``myid``), ``zookeeper.log``, ``zookeeper.pid``, ``hacore-zookeeper.json`` (0600: this
server's name, id, the ensemble's superuser password and whether it checks revocation) and,
when it does, ``crl.pem``, a link to the node's CRL (:mod:`hacore_plugins.zookeeper.revocation`).

Reconfiguration needs the ZooKeeper superuser. ``bootstrap`` makes a random password; the
server knows only its digest; ``add_member`` hands the password to the newcomer in its join
spec (which therefore travels only over the authenticated agent API). Server ids are unique
and never reused (a removed server still running must not pass for a new one): the znode
``/hacore-zookeeper/servers`` holds ``{"names": {name: id}, "next_id": n}`` and, with TLS,
``"clients": {id: "host:port"}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import ssl
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import attrs
from kazoo.security import make_digest_acl_credential

from hacore.atomic_files import write_atomic
from hacore.backends.client_tls import ClientTls
from hacore.backends.consensus import ManagedStore
from hacore.backends.log_files import LogTrimmer
from hacore.backends.processes import DetachedProcess
from hacore.backends.records import StoreMember, TlsFiles
from hacore.errors import ManagedStoreError
from hacore_plugins.zookeeper import revocation
from hacore_plugins.zookeeper import server as zk
from hacore_plugins.zookeeper.ensemble_admin import (
    OPERATION_TIMEOUT,
    SUPERUSER,
    EnsembleAdmin,
    ServerRegistry,
    admin_session,
    entry_of,
)
from hacore_plugins.zookeeper.settings import ManagedSettings
from hacore_plugins.zookeeper.tls import client_context, write_server_pem

STATE_FILE = "hacore-zookeeper.json"
CLIENTS_FILE = "hacore-zookeeper-clients.json"
TLS_DIR = "tls"
#: JVM start and ensemble changes on a busy machine
START_TIMEOUT = 120.0


@attrs.frozen
class _State:
    name: str
    server_id: int
    password: str = attrs.field(repr=False)
    #: the ensemble refuses revoked certificates (:mod:`hacore_plugins.zookeeper.revocation`)
    check_crl: bool = False


class ZooKeeperManagedStore(ManagedStore):
    accepts_tls: ClassVar[bool] = True

    def __init__(
        self,
        settings: Mapping[str, Any],
        *,
        name: str,
        host: str,
        data_dir: Path,
        tls: TlsFiles | None = None,
    ) -> None:
        super().__init__(settings, name=name, host=host, data_dir=data_dir)
        self.config = ManagedSettings.parse(settings)
        self.tls = tls
        self._client_tls = ClientTls.from_node(tls) if tls is not None else None
        self._ssl_context: ssl.SSLContext | None = None
        java = zk.java_executable() or "java"
        self._process = DetachedProcess(
            f"ZooKeeper server of {name}",
            log_path=self.data_dir / "zookeeper.log",
            pid_path=self.data_dir / "zookeeper.pid",
            executable_name=os.path.basename(java),
        )
        #: slf4j-simple writes to stderr and cannot rotate: bounded by copy and truncate
        self._log_trimmer = LogTrimmer(self._process.log_path)
        self._launched = False

    # -- identity and local files ------------------------------------------------------------

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        ManagedSettings.parse(settings)

    @property
    def client_address(self) -> str:
        return f"{self.host}:{self.config.client_port}"

    def identity(self) -> StoreMember:
        return StoreMember(
            name=self.name,
            peer_url=f"{self.host}:{self.config.peer_port}:{self.config.election_port}",
            client_url=self.client_address,
            healthy=self.is_running(),
        )

    def _entry(self, server_id: int) -> zk.ServerEntry:
        secure = self.tls is not None
        return zk.ServerEntry(
            server_id=server_id,
            host=self.host,
            peer_port=self.config.peer_port,
            election_port=self.config.election_port,
            client_port=0 if secure else self.config.client_port,
            client_host="" if secure else self.host,
        )

    def _context(self) -> ssl.SSLContext | None:
        """The client context for four-letter words over TLS, None without TLS."""
        if self._client_tls is None:
            return None
        if self._ssl_context is None:
            self._ssl_context = client_context(self._client_tls)
        return self._ssl_context

    def _mode(self, address: str, timeout: float = 1.0) -> str | None:
        return zk.server_mode(address, timeout, self._context())

    def _admin(
        self, hosts: list[str], password: str
    ) -> contextlib.AbstractContextManager[EnsembleAdmin]:
        return admin_session(hosts, password, self._client_tls)

    def _cached_clients(self) -> dict[int, str]:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            data = json.loads((self.data_dir / CLIENTS_FILE).read_text())
            return {int(k): str(v) for k, v in data.items()}
        return {}

    def _cache_clients(self, clients: Mapping[int, str]) -> None:
        """Remember the servers' secure client addresses (TLS only: else the dynamic file
        has them), the newest knowledge winning; servers long gone are dropped."""
        if self.tls is None:
            return
        config = self._local_config()
        current = {s.server_id for s in config.servers} if config else set()
        merged = {**self._cached_clients(), **clients}
        kept = {k: v for k, v in merged.items() if k in clients or k in current}
        write_atomic(
            self.data_dir / CLIENTS_FILE,
            json.dumps({str(k): v for k, v in sorted(kept.items())}),
        )

    def _client_hosts(self) -> list[str]:
        """The client address of every server in the local view of the ensemble."""
        config = self._local_config()
        if self.tls is None:
            return config.client_addresses() if config else []
        clients = self._cached_clients()
        servers = config.servers if config else ()
        hosts = [clients[s.server_id] for s in servers if s.server_id in clients]
        return hosts if self.client_address in hosts else [*hosts, self.client_address]

    def _limits(self, tick_ms: int | None = None) -> zk.ServerLimits:
        tick = tick_ms or self.config.tick_time_ms
        return zk.ServerLimits(tick_ms=tick, min_session_ms=2 * tick, max_session_ms=60_000)

    def _state(self) -> _State | None:
        try:
            data = json.loads((self.data_dir / STATE_FILE).read_text())
            check_crl = bool(data.get("check_crl", False))
            return _State(data["name"], int(data["server_id"]), data["password"], check_crl)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ManagedStoreError(f"unreadable {self.data_dir / STATE_FILE}: {exc}") from exc

    def _require_state(self) -> _State:
        state = self._state()
        if state is None:
            raise ManagedStoreError(
                f"no ZooKeeper server was bootstrapped or joined in {self.data_dir}"
            )
        return state

    def _write_state(self, state: _State, tick_ms: int) -> None:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        body = json.dumps({**attrs.asdict(state), "tick_time_ms": tick_ms})
        write_atomic(self.data_dir / STATE_FILE, body, 0o600)

    def _saved_tick(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, KeyError):
            return int(json.loads((self.data_dir / STATE_FILE).read_text())["tick_time_ms"])
        return None

    def _refuse_non_empty(self, action: str) -> None:
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise ManagedStoreError(
                f"refusing to {action}: {self.data_dir} is not empty (it holds another "
                f"ZooKeeper server's data); empty it or choose another data_dir"
            )

    def _local_config(self) -> zk.DynamicConfig | None:
        path = zk.newest_dynamic_file(self.data_dir)
        return zk.DynamicConfig.parse(path.read_text()) if path else None

    # -- the process -------------------------------------------------------------------------

    def _launch(self, state: _State) -> None:
        dynamic = zk.newest_dynamic_file(self.data_dir)
        if dynamic is None:
            raise ManagedStoreError(f"no ZooKeeper dynamic configuration in {self.data_dir}")
        server_tls = None
        properties: dict[str, str] = {}
        if self.tls is not None:
            if state.check_crl:
                revocation.link_crl(self.tls, self.data_dir)
                properties.update(revocation.SYSTEM_PROPERTIES)
            server_tls = zk.ServerTls(
                key_store=write_server_pem(self.tls, self.data_dir / TLS_DIR),
                trust_store=Path(self.tls.ca_file),
                client_host=self.host,
                client_port=self.config.client_port,
                check_crl=state.check_crl,
            )
        static = zk.write_static_config(
            self.data_dir,
            data_dir=self.data_dir / "data",
            dynamic_file=dynamic,
            limits=self._limits(self._saved_tick()),
            tls=server_tls,
        )
        digest = make_digest_acl_credential(SUPERUSER, state.password)
        argv = zk.server_argv(
            static,
            jvm_options=self.config.jvm_options,
            system_properties={
                "zookeeper.DigestAuthenticationProvider.superDigest": digest,
                **properties,
            },
            tls=server_tls is not None,
        )
        # snapshots and transaction logs hold the store's data: the server's user's only
        self._log_trimmer.now()
        self._process.start(argv, cwd=self.data_dir, umask=0o077)
        self._launched = True

    def _exited(self) -> bool:
        # Right after exec /proc/<pid>/cmdline can be empty, so DetachedProcess.running()
        # may briefly say no: the exit status of a server started here is the surer sign.
        code = self._process.exit_code()
        return code is not None if self._launched else not self._process.running()

    def _wait_until(self, ready: Any, what: str, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if self._exited():
                raise ManagedStoreError(
                    f"the ZooKeeper server of {self.name} exited while {what}:\n"
                    f"{self._process.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise ManagedStoreError(
                    f"the ZooKeeper server of {self.name} was not {what} after {timeout:g}s:\n"
                    f"{self._process.log_tail()}"
                )
            time.sleep(0.2)

    def start(self) -> None:
        state = self._require_state()
        if self._process.running():
            return
        self._launch(state)
        context = self._context()
        self._wait_until(lambda: zk.answers(self.client_address, context=context), "listening")

    def stop(self) -> None:
        self._process.stop()

    def is_running(self) -> bool:
        self._log_trimmer.tick()  # asked every loop by the agent's supervisor
        return self._process.running()

    def client_settings(self) -> dict[str, Any]:
        hosts = self._client_hosts() or [self.client_address]
        if self._client_tls is None:
            return {"hosts": hosts}
        return {"hosts": hosts, **self._client_tls.settings()}

    # -- forming the ensemble ----------------------------------------------------------------

    def bootstrap(self) -> StoreMember:
        self._refuse_non_empty("bootstrap a new ZooKeeper ensemble")
        server_id = self.config.server_id or 1
        check_crl = revocation.certificate_names_crl(self.tls)
        state = _State(self.name, server_id, secrets.token_urlsafe(24), check_crl)
        try:
            self._write_state(state, self.config.tick_time_ms)
            zk.write_myid(self.data_dir / "data", server_id)
            config = zk.DynamicConfig((self._entry(server_id),))
            (self.data_dir / zk.DYNAMIC_FILE).write_text(config.render())
            self._cache_clients({server_id: self.client_address})
            self._launch(state)
            self._wait_until(lambda: self._mode(self.client_address) == "leader", "serving")
            clients = {server_id: self.client_address} if self.tls is not None else {}
            with self._admin([self.client_address], state.password) as admin:
                admin.save(ServerRegistry({self.name: server_id}, server_id + 1, None, clients))
        except Exception as exc:
            self._undo("bootstrap", exc)
        return self.identity()

    def add_member(self, member: StoreMember) -> dict[str, Any]:
        state = self._require_state()
        entry = entry_of(member, 0)
        secure = self.tls is not None
        with self._admin(self._admin_hosts(), state.password) as admin:
            while True:
                config = admin.config()
                registry = admin.registry()
                known = registry.names.get(member.name)
                # Ids are never reused: a removed server still running must not pass for a new one.
                server_id = known or max(
                    [registry.next_id, *(s.server_id + 1 for s in config.servers)]
                )
                for other in config.servers:
                    other_client = (
                        registry.clients.get(other.server_id) if secure else other.client_address
                    )
                    clash = other.peer_address == entry.peer_address or (
                        other_client == entry.client_address
                    )
                    if clash and other.server_id != server_id:
                        raise ManagedStoreError(
                            f"{member.name} uses the addresses of ZooKeeper server "
                            f"{other.server_id} ({other.line()})"
                        )
                client = entry.client_address if secure else None
                if known is not None or admin.save(
                    registry.with_name(member.name, server_id, client)
                ):
                    break
        tls_keys: dict[str, Any] = {}
        if secure:
            clients = {**registry.clients, server_id: entry.client_address}
            current = {s.server_id for s in config.servers} | {server_id}
            tls_keys = {
                "tls": True,
                "clients": {str(k): v for k, v in clients.items() if k in current},
            }
            self._cache_clients({k: v for k, v in clients.items() if k in current})
        return {
            "name": member.name,
            "server_id": server_id,
            "servers": [
                server.line() for server in config.servers if server.server_id != server_id
            ],
            "config_version": config.version,
            "tick_time_ms": self._saved_tick() or self.config.tick_time_ms,
            "super_password": state.password,
            "check_crl": state.check_crl,
            **tls_keys,
        }

    def join(self, spec: Mapping[str, Any]) -> StoreMember:
        try:
            server_id = int(spec["server_id"])
            servers = [zk.ServerEntry.parse(line) for line in spec["servers"]]
            password = str(spec["super_password"])
            tick = int(spec.get("tick_time_ms") or self.config.tick_time_ms)
            clients = {int(k): str(v) for k, v in dict(spec.get("clients") or {}).items()}
            check_crl = bool(spec.get("check_crl", False))
        except (KeyError, TypeError, ValueError) as exc:
            raise ManagedStoreError(f"not a ZooKeeper join spec: {exc}") from exc
        if spec.get("name", self.name) != self.name:
            raise ManagedStoreError(f"this join spec is for {spec['name']}, not {self.name}")
        if not servers:
            raise ManagedStoreError("the join spec lists no ZooKeeper server to join")
        if bool(spec.get("tls")) != (self.tls is not None):
            mine, theirs = ("with", "without") if self.tls is not None else ("without", "with")
            raise ManagedStoreError(
                f"this node runs ZooKeeper {mine} TLS but the ensemble runs {theirs}: "
                "every server must agree (tls.enabled)"
            )
        if self.tls is not None:
            hosts = [clients[s.server_id] for s in servers if s.server_id in clients]
            if not hosts:
                raise ManagedStoreError("the join spec names no ZooKeeper client address")
        else:
            hosts = [s.client_address for s in servers]
        if check_crl and not revocation.certificate_names_crl(self.tls):
            raise ManagedStoreError(
                "the ZooKeeper ensemble refuses certificates that name no revocation list, "
                f"and {self.name}'s does not (issued by an older hacore): re-issue it"
            )
        state = _State(self.name, server_id, password, check_crl)
        me = self._entry(server_id)
        resuming = self._state() == state
        if not resuming:
            self._refuse_non_empty("join a ZooKeeper ensemble")
        try:
            if not resuming:
                self._write_state(state, tick)
                zk.write_myid(self.data_dir / "data", server_id)
                config = zk.DynamicConfig((*servers, me))
                (self.data_dir / zk.DYNAMIC_FILE).write_text(config.render())
                self._cache_clients({**clients, server_id: self.client_address})
            if not self._process.running():
                self._launch(state)
            self._wait_until(lambda: self._mode(self.client_address) is not None, "serving")
            with self._admin(hosts, password) as admin:
                admin.reconfig_until(
                    lambda cfg: cfg.server(server_id) == me,
                    joining=me.line(),
                    whole=self.tls is not None,
                )
            with self._admin([self.client_address], password) as admin:
                # Our own server must see itself as a voter before we call the join done.
                self._wait_until(lambda: admin.sees(me), "a voting member", OPERATION_TIMEOUT)
        except Exception as exc:
            if resuming:
                raise ManagedStoreError(f"joining the ZooKeeper ensemble failed: {exc}") from exc
            self._undo("join the ZooKeeper ensemble", exc)
        return self.identity()

    def _undo(self, action: str, exc: Exception) -> None:
        """Leave the node as it was: no server, an empty data directory."""
        tail = self._process.log_tail()
        with contextlib.suppress(Exception):
            self._process.stop()
        if self.data_dir.exists():
            for child in self.data_dir.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        detail = f"\n{tail}" if tail else ""
        raise ManagedStoreError(f"could not {action}: {exc}{detail}") from exc

    def remove_member(self, name: str) -> None:
        state = self._require_state()
        with self._admin(self._admin_hosts(), state.password) as admin:
            server_id = admin.registry().names.get(name)
            if server_id is None:
                return
            config = admin.config()
            if config.server(server_id) is not None:
                if len(config.servers) == 1:
                    raise ManagedStoreError(
                        f"{name} is the only ZooKeeper server: it cannot be removed"
                    )
                # Removing the leader drops every connection: reconfig_until reconnects and
                # checks whether the change went through before trying again.
                admin.reconfig_until(
                    lambda cfg: cfg.server(server_id) is None, leaving=str(server_id)
                )
            admin.forget_name(name)
        if name == self.name:
            self.stop()

    def members(self) -> tuple[StoreMember, ...]:
        state = self._require_state()
        with self._admin(self._admin_hosts(), state.password) as admin:
            config = admin.config()
            registry = admin.registry()
        by_id = {server_id: name for name, server_id in registry.names.items()}
        if self.tls is not None:
            self._cache_clients(registry.clients)
            clients = {s.server_id: registry.clients.get(s.server_id, "") for s in config.servers}
        else:
            clients = {s.server_id: s.client_address for s in config.servers}
        return tuple(
            StoreMember(
                name=by_id.get(server.server_id, f"server.{server.server_id}"),
                peer_url=server.peer_address,
                client_url=clients[server.server_id],
                voting=server.role == "participant",
                healthy=bool(clients[server.server_id])
                and self._mode(clients[server.server_id], timeout=0.5) is not None,
            )
            for server in config.servers
        )

    def _admin_hosts(self) -> list[str]:
        return self._client_hosts() or [self.client_address]
