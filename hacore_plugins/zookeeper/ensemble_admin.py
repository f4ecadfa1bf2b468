"""The administration of a ZooKeeper ensemble hacore runs: a superuser session that
reconfigures it, and the registry of server names and ids it keeps in a znode.

Kept apart from :mod:`hacore_plugins.zookeeper.managed` (one server's files and process):
everything here talks to a running ensemble, bounded in time, and is repeated after the lost
connections a reconfiguration causes.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs
from kazoo.client import KazooClient
from kazoo.exceptions import (
    BadVersionError,
    ConnectionLoss,
    KazooException,
    NewConfigNoQuorumError,
    NodeExistsError,
    NoNodeError,
    ReconfigInProcessError,
    SessionExpiredError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.retry import KazooRetry
from kazoo.security import make_acl

from hacore.backends.client_tls import ClientTls
from hacore.backends.records import StoreMember
from hacore.errors import ManagedStoreError
from hacore_plugins.zookeeper import server as zk
from hacore_plugins.zookeeper.client import PersistentWatchClient
from hacore_plugins.zookeeper.tls import kazoo_options

NAMES_PATH = "/hacore-zookeeper/servers"
SUPERUSER = "super"
OPERATION_TIMEOUT = 60.0
TRANSIENT = (
    ConnectionLoss,
    SessionExpiredError,
    KazooTimeoutError,
    NewConfigNoQuorumError,
    ReconfigInProcessError,
)


def entry_of(member: StoreMember, server_id: int) -> zk.ServerEntry:
    try:
        host, peer, election = member.peer_url.rsplit(":", 2)
        client_host, client_port = member.client_url.rsplit(":", 1)
        return zk.ServerEntry(
            server_id=server_id,
            host=host,
            peer_port=int(peer),
            election_port=int(election),
            client_port=int(client_port),
            client_host=client_host,
        )
    except ValueError:
        raise ManagedStoreError(
            f"{member.name}: a ZooKeeper peer_url is host:peer_port:election_port and a "
            f"client_url host:port, not {member.peer_url!r} / {member.client_url!r}"
        ) from None


@attrs.frozen
class ServerRegistry:
    """Server names and ids, in the znode ``NAMES_PATH``; ``version`` is the znode's."""

    names: dict[str, int]
    next_id: int
    version: int | None
    #: secure client address per server id (TLS only)
    clients: dict[int, str] = attrs.field(factory=dict)

    def with_name(self, name: str, server_id: int, client: str | None = None) -> ServerRegistry:
        names = {**self.names, name: server_id}
        clients = {**self.clients, server_id: client} if client else self.clients
        return ServerRegistry(names, max(self.next_id, server_id + 1), self.version, clients)

    def without(self, name: str) -> ServerRegistry:
        names = {k: v for k, v in self.names.items() if k != name}
        gone = self.names.get(name)
        clients = {k: v for k, v in self.clients.items() if k != gone}
        return ServerRegistry(names, self.next_id, self.version, clients)

    def to_bytes(self) -> bytes:
        data: dict[str, Any] = {"names": self.names, "next_id": self.next_id}
        if self.clients:
            data["clients"] = {str(k): v for k, v in self.clients.items()}
        return json.dumps(data, sort_keys=True).encode()


class EnsembleAdmin:
    """A superuser session for reconfiguration, every call bounded in time."""

    def __init__(self, client: KazooClient, timeout: float) -> None:
        self.client = client
        self.timeout = timeout

    def _call(self, start: Callable[[], Any]) -> Any:
        """``start()`` an async request and wait for it; issued again after a lost connection
        (which reconfigs cause), so only for requests that are safe to repeat."""
        deadline = time.monotonic() + OPERATION_TIMEOUT
        while True:
            try:
                return start().get(timeout=self.timeout)
            except (ConnectionLoss, SessionExpiredError, KazooTimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def config(self) -> zk.DynamicConfig:
        self._call(lambda: self.client.sync_async("/zookeeper/config"))
        data, _ = self._call(lambda: self.client.get_async("/zookeeper/config"))
        return zk.DynamicConfig.parse(data.decode())

    def sees(self, entry: zk.ServerEntry) -> bool:
        try:
            return self.config().server(entry.server_id) == entry
        except TRANSIENT:
            return False

    def registry(self) -> ServerRegistry:
        try:
            data, stat = self._call(lambda: self.client.get_async(NAMES_PATH))
        except NoNodeError:
            return ServerRegistry({}, 1, None)
        raw = json.loads(data or b"{}")
        names = {str(k): int(v) for k, v in raw.get("names", {}).items()}
        clients = {int(k): str(v) for k, v in raw.get("clients", {}).items()}
        return ServerRegistry(names, int(raw.get("next_id", 1)), stat.version, clients)

    def save(self, registry: ServerRegistry) -> bool:
        """Compare-and-set of the registry; False when someone else changed it first."""
        data = registry.to_bytes()
        acl = [make_acl("world", "anyone", read=True)]
        # Repeating a write whose answer was lost is safe here: it then fails its version
        # check, and every caller re-reads the registry before trying again.
        try:
            if registry.version is None:
                self._call(
                    lambda: self.client.create_async(NAMES_PATH, data, acl=acl, makepath=True)
                )
            else:
                self._call(lambda: self.client.set_async(NAMES_PATH, data, registry.version))
        except (NodeExistsError, BadVersionError):
            return False
        return True

    def forget_name(self, name: str) -> None:
        while True:
            registry = self.registry()
            if name not in registry.names or self.save(registry.without(name)):
                return

    def reconfig_until(
        self,
        done: Any,
        *,
        joining: str | None = None,
        leaving: str | None = None,
        whole: bool = False,
    ) -> None:
        """Reconfigure until ``done(config)``. ``whole``: send the complete new server list
        (checked against the version read) instead of an incremental change, which ZooKeeper
        refuses for a joining server without a plain client port."""
        deadline = time.monotonic() + OPERATION_TIMEOUT
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                config = self.config()
                if done(config):
                    return
                if whole and joining is not None:
                    joiner = zk.ServerEntry.parse(joining).server_id
                    others = [s.line() for s in config.servers if s.server_id != joiner]
                    version = int(config.version, 16) if config.version else -1
                    request = self.client.reconfig_async(
                        None, None, ",".join([*others, joining]), version
                    )
                else:
                    request = self.client.reconfig_async(joining, leaving, None, -1)
                request.get(timeout=self.timeout)
            except (*TRANSIENT, BadVersionError) as exc:
                last = exc
                time.sleep(0.3)
        raise ManagedStoreError(
            f"ZooKeeper reconfig (joining={joining}, leaving={leaving}) did not take effect "
            f"within {OPERATION_TIMEOUT:g}s: {last!r}"
        )


@contextlib.contextmanager
def admin_session(
    hosts: list[str], password: str, tls: ClientTls | None
) -> Iterator[EnsembleAdmin]:
    client = PersistentWatchClient(
        **kazoo_options(tls),
        hosts=",".join(hosts),
        timeout=10.0,
        auth_data=[("digest", f"{SUPERUSER}:{password}")],
        connection_retry=KazooRetry(max_tries=-1, delay=0.1, backoff=1.5, max_delay=1.0),
        command_retry=KazooRetry(max_tries=0),
    )
    try:
        client.start(timeout=OPERATION_TIMEOUT)
    except KazooTimeoutError:
        raise ManagedStoreError(
            f"no ZooKeeper server of {', '.join(hosts)} answered within {OPERATION_TIMEOUT:g}s"
        ) from None
    try:
        yield EnsembleAdmin(client, OPERATION_TIMEOUT / 4)
    except (KazooException, KazooTimeoutError) as exc:
        raise ManagedStoreError(f"ZooKeeper did not carry out the change: {exc!r}") from exc
    finally:
        stopper = threading.Thread(target=_stop, args=(client,), daemon=True)
        stopper.start()
        stopper.join(5.0)


def _stop(client: KazooClient) -> None:
    with contextlib.suppress(Exception):
        client.stop()
        client.close()
