"""Nodes of the file sync benchmark: hacore's filesync plugins driven as the agent drives them.

Each node is the registered backend class, built with the arguments ``build_backends`` gives
it (the node's data directory, its one mirrored directory) on loopback ports. Roles and peers
come as the agent hands them out: every member's ``identity()`` to ``set_peers``, then
``become_source`` on the active and ``become_mirror(active)`` on the others; a join is a
fresh node that starts its engine, is added to everyone's peers and mirrors the active.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from hacore import pki
from hacore.backends.filesync import FilesyncBackend, SyncState
from hacore.backends.records import TlsFiles
from hacore.plugins.registry import load_plugins
from hacore.testing.procs import free_port

#: the password the rsync nodes share, as a real cluster would set one
RSYNC_PASSWORD = "benchmark-secret"


@attrs.define
class Node:
    name: str
    backend: FilesyncBackend
    files: Path
    started_s: float = 0.0


def process_cpu_s(marker: str) -> float:
    """CPU seconds (user + system) used so far by the running processes whose command line
    holds ``marker`` (a Syncthing's ``--home``): the engine's cost, whatever the load."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if os.fsencode(marker) in argv:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def engine_settings(engine: str, extra: Mapping[str, Any]) -> dict[str, Any]:
    """The plugin's defaults, with its ports on free loopback ports and ``extra`` on top."""
    if engine == "syncthing":
        settings: dict[str, Any] = {
            "api_port": free_port(),
            "listen_port": free_port(),
            "seed_port": free_port(),
        }
    elif engine == "rsync":
        settings = {"port": free_port(), "password": RSYNC_PASSWORD}
    else:
        raise ValueError(f"unknown engine {engine!r}")
    settings.update(extra)
    return settings


class Authority:
    """A cluster CA under ``root`` and a node certificate for each node, as ``cluster start``
    and ``join`` make them: the nodes' ``tls`` material."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = pki.ensure_ca("filesync-bench", root / "ca")

    def issue(self, node: str) -> TlsFiles:
        cert = pki.ensure_node_certificate(
            self.ca, node, ("127.0.0.1", "localhost"), self.root / "nodes" / node
        )
        return TlsFiles(ca_file=cert.ca_file, cert_file=cert.cert_file, key_file=cert.key_file)


class Cluster:
    """Nodes of one engine under ``root``; ``files`` may name an existing directory (the
    active's tree). With ``tls`` every node gets its certificate, as with TLS on."""

    def __init__(
        self,
        engine: str,
        root: Path,
        settings: Mapping[str, Any] | None = None,
        *,
        tls: bool = False,
    ):
        self.engine = engine
        self.root = root
        self.settings = dict(settings or {})
        self.authority = Authority(root / "pki") if tls else None
        self.kind = load_plugins().registry.filesync(engine)
        self.nodes: dict[str, Node] = {}
        self.source: str | None = None

    def node(self, name: str, files: Path | None = None) -> Node:
        home = self.root / name
        files = files or home / "files"
        # the rsync plugin's daemon serves the directory, it does not create it
        files.mkdir(parents=True, exist_ok=True)
        backend = self.kind(
            engine_settings(self.engine, self.settings),
            node_name=name,
            host="127.0.0.1",
            data_dir=home / "data" / "filesync",
            directories=[files],
            **({} if self.authority is None else {"tls": self.authority.issue(name)}),
        )
        node = self.nodes[name] = Node(name, backend, files)
        return node

    def start(self, *nodes: Node) -> None:
        """Start the engines side by side, as each node's agent would."""
        errors: list[BaseException] = []

        def run(node: Node) -> None:
            began = time.monotonic()
            try:
                node.backend.start()
            except BaseException as err:
                errors.append(err)
            node.started_s = time.monotonic() - began

        threads = [threading.Thread(target=run, args=(n,)) for n in nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]

    def set_all_peers(self) -> None:
        identities = {n: node.backend.identity() for n, node in self.nodes.items()}
        for node in self.nodes.values():
            node.backend.set_peers(identities)

    def roles(self, source: str) -> None:
        self.source = source
        self.nodes[source].backend.become_source()
        for node in self.nodes.values():
            if node.name != source:
                node.backend.become_mirror(source)

    def up(self, names: list[str], source: str, *, timeout: float = 120) -> None:
        """Start, peer and give roles to ``names`` (created if needed); wait until in sync."""
        nodes = [self.nodes.get(n) or self.node(n) for n in names]
        self.start(*nodes)
        self.set_all_peers()
        self.roles(source)
        for node in nodes:
            if node.name != source:
                node.backend.wait_in_sync(timeout)
        if self.engine == "syncthing":
            self.nodes[source].backend.wait_in_sync(timeout)

    def join(self, name: str) -> Node:
        """A new empty node joins: its engine starts, every member learns its identity and
        it mirrors the active. Returns once it is told its role; the copy goes on."""
        assert self.source is not None
        node = self.node(name)
        self.start(node)
        self.set_all_peers()
        node.backend.become_mirror(self.source)
        return node

    def cpu_s(self) -> float | None:
        """The CPU seconds the nodes' Syncthing processes used so far; None for rsync, whose
        pulls and per-connection daemons come and go."""
        if self.engine != "syncthing":
            return None
        return sum(process_cpu_s(str(getattr(n.backend, "home", ""))) for n in self.nodes.values())

    def stop(self) -> None:
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                node.backend.stop()


class StatePoller(threading.Thread):
    """Polls a node's ``state()`` until it says in sync and ``accept()`` agrees (the files
    are really there); notes when, and when it first said so at all."""

    def __init__(
        self, backend: FilesyncBackend, interval: float, accept: Callable[[], bool]
    ) -> None:
        super().__init__(name="state-poller", daemon=True)
        self.backend = backend
        self.interval = interval
        self.accept = accept
        self.first_in_sync: float | None = None
        self.first_claim: float | None = None
        self.last: SyncState | None = None
        self.errors = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.last = self.backend.state()
            except Exception:
                self.errors += 1
            else:
                if self.last.in_sync:
                    now = time.monotonic()
                    if self.first_claim is None:
                        self.first_claim = now
                    if self.accept():
                        self.first_in_sync = now
                        return
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=60)


class ConnectionWatch(threading.Thread):
    """Notes when a node is first connected to ``peer`` (asked every 0.1 s), for an engine
    that can tell (Syncthing's ``connected_peers()``); ``at`` stays None for one that cannot."""

    def __init__(self, backend: FilesyncBackend, peer: str) -> None:
        super().__init__(name="connection-watch", daemon=True)
        self.ask: Callable[[], list[str]] | None = getattr(backend, "connected_peers", None)
        self.peer = peer
        self.at: float | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        while self.ask is not None and not self._halt.is_set():
            with contextlib.suppress(Exception):
                if self.peer in self.ask():
                    self.at = time.monotonic()
                    return
            self._halt.wait(0.1)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)
