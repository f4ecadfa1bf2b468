"""The store demo: a managed 3-member store and three contenders, one of which crashes.

Each contender is its own process so that "crash" means a real SIGKILL: its session is not
closed, and the others must wait for the lease to expire, as they would after a host death.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from hacore.backends.consensus import LEADER_KEY, ConsensusBackend, ManagedStore
from hacore.backends.records import EventKind
from hacore.errors import HacoreError, StoreUnavailableError
from hacore.plugins.registry import load_plugins
from hacore.testing.contract_support import merge_client_settings
from hacore.testing.local_cluster import managed_store_ports

HOST = "127.0.0.1"
NAMESPACE = "demo"


@contextmanager
def _workdir(path: str | None) -> Iterator[Path]:
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    tmp = Path(tempfile.mkdtemp(prefix="hacore-demo-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _answers(client_url: str) -> bool:
    host, _, port = client_url.rpartition("//")[2].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except (OSError, ValueError):
        return False


def _members_table(store: ManagedStore, title: str) -> Table:
    table = Table(title=title)
    for column in ("member", "peer URL", "client URL", "voting", "server"):
        table.add_column(column)
    for member in store.members():
        table.add_row(
            member.name,
            member.peer_url,
            member.client_url,
            "yes" if member.voting else "learner",
            "[green]up[/green]" if _answers(member.client_url) else "[red]down[/red]",
        )
    return table


def _wait_leader(observer: ConsensusBackend, timeout: float, not_name: str | None = None) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            leader = observer.leader()
        except StoreUnavailableError:
            leader = None
        if leader is not None and leader.name != not_name:
            return leader.name
        time.sleep(0.05)
    raise HacoreError(f"no leader elected within {timeout:.0f}s")


def run_store_demo(*, backend: str, workdir: str | None, ttl: float, console: Console) -> None:
    registry = load_plugins().registry
    store_cls = registry.managed_store(backend)
    consensus_cls = registry.consensus(backend)
    names = ["node1", "node2", "node3"]
    with _workdir(workdir) as root, ExitStack() as stack:
        console.rule(f"[bold]hacore store demo[/bold] — {backend}, ttl {ttl:g}s, in {root}")
        stores: list[ManagedStore] = []
        for name in names:
            store = store_cls(
                managed_store_ports(backend), name=name, host=HOST, data_dir=root / name
            )
            stack.callback(store.stop)
            stores.append(store)

        started = time.monotonic()
        stores[0].bootstrap()
        console.print(f"[green]✓[/green] {names[0]}: bootstrapped a one-member {backend} store")
        for store in stores[1:]:
            spec = stores[0].add_member(store.identity())
            store.join(spec)
            console.print(f"[green]✓[/green] {store.name}: joined the store")
        console.print(f"store of 3 ready in {time.monotonic() - started:.1f}s")
        console.print(_members_table(stores[0], f"{backend} members"))

        settings = merge_client_settings(stores)
        observer = consensus_cls(
            settings, namespace=NAMESPACE, node_name="observer", ttl=ttl, retry_timeout=1.0
        )
        stack.callback(observer.close)
        contenders: dict[str, subprocess.Popen[str]] = {}
        for name in names:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "hacore.demo.store",
                    backend,
                    json.dumps(settings),
                    name,
                    str(ttl),
                ],
                stdout=subprocess.DEVNULL,
                text=True,
                start_new_session=True,
            )
            contenders[name] = proc
            stack.callback(_reap, proc)
        console.print("three contenders campaign for the leader key...")
        leader = _wait_leader(observer, timeout=ttl + 15)
        console.print(f"[bold green]{leader}[/bold green] is the leader")

        with observer.watch(LEADER_KEY) as watcher:
            console.print(f"[red]crash:[/red] SIGKILL {leader}'s contender and its store server")
            killed_at = time.monotonic()
            contenders[leader].send_signal(signal.SIGKILL)
            stores[names.index(leader)].stop()
            gone_at = new_at = None
            while time.monotonic() - killed_at < ttl + 30 and new_at is None:
                event = watcher.get(timeout=0.5)
                if event is None or event.key != LEADER_KEY:
                    continue
                if event.kind is EventKind.DELETE and gone_at is None:
                    gone_at = time.monotonic()
                elif event.kind is EventKind.PUT:
                    new_at = time.monotonic()
        if new_at is None:
            raise HacoreError("no contender took over the leadership")
        successor = _wait_leader(observer, timeout=5, not_name=leader)
        lapse = (gone_at or new_at) - killed_at
        console.print(
            f"lease of {leader} expired {lapse:.2f}s after the crash (ttl {ttl:g}s); "
            f"[bold green]{successor}[/bold green] took over "
            f"{new_at - killed_at:.2f}s after the crash"
        )
        survivors = [s for s in stores if s.name != leader]
        console.print(_members_table(survivors[0], f"{backend} members after the crash"))
        observer.put("demo/after-crash", b"written with 2 of 3 members")
        console.print("[green]✓[/green] the store still accepts writes with 2 of its 3 members")
        console.print("cleaning up: stopping contenders and store servers")


def _reap(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _contend(backend: str, settings: dict[str, Any], name: str, ttl: float) -> None:
    """One contender: campaign until leader, then renew; exits on SIGTERM, dies on SIGKILL."""
    cls = load_plugins().registry.consensus(backend)
    node = cls(settings, namespace=NAMESPACE, node_name=name, ttl=ttl, retry_timeout=1.0)
    running = True

    def _stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, _stop)
    lease = None
    try:
        while running:
            try:
                if lease is None:
                    lease = node.campaign()
                    if lease is None:
                        node.keepalive()
                elif not node.renew(lease):
                    lease = None
            except StoreUnavailableError:
                lease = None
            time.sleep(ttl / 4)
    finally:
        if lease is not None:
            node.resign(lease)
        node.close()


if __name__ == "__main__":
    try:
        _contend(sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], float(sys.argv[4]))
    except KeyboardInterrupt:
        pass
    except HacoreError as err:
        click.echo(f"contender {sys.argv[3]}: {err}", err=True)
        sys.exit(2)
