"""The namespace helper: hosts reach each other, each fault cuts exactly what it says, heal
restores everything, and a crashed run's namespaces and links are removed by the next one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from functools import partial

import netns
import pytest
from netns import Host, Network

from hacore.testing.procs import wait_for

pytestmark = [pytest.mark.fault, pytest.mark.root]
PORTS = (7001, 7002)
LISTEN = (
    "import socket, sys, threading\n"
    "def serve(port):\n"
    "    s = socket.create_server((sys.argv[1], port))\n"
    "    while True:\n"
    "        s.accept()[0].close()\n"
    "for port in (7001, 7002):\n"
    "    threading.Thread(target=serve, args=(port,)).start()\n"
)
CONNECT = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], int(sys.argv[2])), 0.5).close()\n"
    "except OSError:\n"
    "    sys.exit(1)\n"
)

#: Exit 3 when the connection is refused, 4 when nothing answers within 5 s.
REFUSED_OR_DROPPED = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], int(sys.argv[2])), 5).close()\n"
    "except ConnectionRefusedError:\n"
    "    sys.exit(3)\n"
    "except TimeoutError:\n"
    "    sys.exit(4)\n"
)


@pytest.fixture(scope="module")
def net(fault_network: Network) -> Iterator[Network]:
    """The session's hosts, each with TCP listeners on 7001 and 7002 at its address."""
    servers = [
        fault_network.popen(host, [sys.executable, "-c", LISTEN, host.address])
        for host in fault_network.hosts
    ]
    try:
        for host in fault_network.hosts:
            wait_for(partial(reaches, None, host), 30, what=f"the listener of {host.address}")
        yield fault_network
    finally:
        fault_network.heal()
        for proc in servers:
            proc.kill()
            proc.wait(10)


def reaches(source: Host | None, target: Host, port: int = PORTS[0]) -> bool:
    """A TCP connect from ``source`` (None: the root namespace) to ``target`` succeeds."""
    argv = [sys.executable, "-c", CONNECT, target.address, str(port)]
    return subprocess.run(source.argv(argv) if source else argv, timeout=30).returncode == 0


def reach_map(net: Network) -> dict[tuple[int, int], bool]:
    return {(a.index, b.index): reaches(a, b) for a in net.hosts for b in net.hosts if a is not b}


def test_every_host_reaches_every_other_and_the_root_namespace(net: Network) -> None:
    assert all(reach_map(net).values())
    assert all(reaches(None, host) for host in net.hosts)


def test_cut_drops_only_the_pair_and_heal_restores_it(net: Network) -> None:
    a, b, _ = net.hosts
    net.cut(a, b)
    try:
        seen = reach_map(net)
        assert not seen[(0, 1)] and not seen[(1, 0)]
        assert seen[(0, 2)] and seen[(2, 0)] and seen[(1, 2)] and seen[(2, 1)]
    finally:
        net.heal(a)
    assert all(reach_map(net).values())


def test_a_port_cut_leaves_other_ports_alone(net: Network) -> None:
    a, b, _ = net.hosts
    net.cut(a, b, ports=[PORTS[0]])
    try:
        assert not reaches(a, b, PORTS[0]) and not reaches(b, a, PORTS[0])
        assert reaches(a, b, PORTS[1]) and reaches(b, a, PORTS[1])
    finally:
        net.heal(a)


def test_isolate_cuts_everything_but_loopback(net: Network) -> None:
    a, b, _ = net.hosts
    net.isolate(a)
    try:
        assert not any(ok for (x, y), ok in reach_map(net).items() if 0 in (x, y))
        assert not reaches(None, a)
        local = [sys.executable, "-c", REFUSED_OR_DROPPED, "127.0.0.1", "1"]
        # loopback still works: refused (exit 3) rather than dropped (exit 4, its timeout)
        assert subprocess.run(a.argv(local), timeout=60).returncode == 3
    finally:
        net.heal(a)
    net.isolate(a, keep_root=True)
    try:
        assert reaches(None, a) and not reaches(a, b) and not reaches(b, a)
    finally:
        net.heal(a)
    assert all(reach_map(net).values())


def test_total_loss_is_a_cut_until_healed(net: Network) -> None:
    a, b, _ = net.hosts
    net.loss(a, 100)
    try:
        assert not reaches(a, b) and not reaches(b, a)
    finally:
        net.heal(a)
    assert reaches(a, b) and reaches(b, a)


def kernel_has_netem() -> bool:
    """Asked of the kernel directly, in a scratch namespace, not through the code under test."""
    if shutil.which("tc") is None:
        return False
    scratch = f"hacore-netem-probe-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", scratch], check=True, timeout=30)
    try:
        probe = [
            "ip",
            "netns",
            "exec",
            scratch,
            "tc",
            "qdisc",
            "add",
            "dev",
            "lo",
            "root",
            "netem",
            "delay",
            "1ms",
        ]
        return subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    finally:
        subprocess.run(["ip", "netns", "delete", scratch], timeout=30)


def connect_seconds(source: Host, target: Host, port: int = PORTS[0]) -> float:
    """One TCP connect's round trip, timed inside the connecting process."""
    script = (
        "import socket, sys, time\n"
        "t = time.monotonic()\n"
        "socket.create_connection((sys.argv[1], int(sys.argv[2])), 5).close()\n"
        "print(time.monotonic() - t)\n"
    )
    argv = source.argv([sys.executable, "-c", script, target.address, str(port)])
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    return float(out.stdout)


def test_delay_adds_its_delay_or_says_plainly_that_the_kernel_cannot(net: Network) -> None:
    source, target = net.hosts[0], net.hosts[1]
    if not kernel_has_netem():
        with pytest.raises(netns.NetnsError, match=r"no tc netem|`tc` is not installed"):
            net.delay(source, 200)
        assert reaches(source, target), "a refused delay leaves the host as it was"
        return
    before = min(connect_seconds(source, target) for _ in range(3))
    net.delay(source, 200)
    try:
        assert connect_seconds(source, target) >= before + 0.15
    finally:
        net.heal(source)
    assert min(connect_seconds(source, target) for _ in range(3)) < before + 0.15


def test_a_crashed_runs_network_is_removed_by_the_next_one(fault_network: Network) -> None:
    script = (
        "import os, signal, subprocess, sys\n"
        f"sys.path.insert(0, {os.path.dirname(netns.__file__)!r})\n"
        "from netns import Network\n"
        "net = Network(2).create()\n"
        "quiet = {'stdout': subprocess.DEVNULL, 'stderr': subprocess.DEVNULL}\n"
        "net.popen(net.hosts[0], ['sleep', '600'], **quiet)\n"
        "print(net.tag, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    tag = out.stdout.strip()
    assert len(tag) == 6, out.stderr
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"-{tag}-0" in names, "the crashed run left no namespace to clean"
    removed = netns.cleanup_stale()
    assert any(f"-{tag}-" in name for name in removed)
    assert f"hf{tag}br" in removed
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert tag not in names and tag not in links
    # this session's own network is alive and untouched
    assert all(host.namespace in names for host in fault_network.hosts)
    assert fault_network.bridge in links
