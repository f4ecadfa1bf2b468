"""Hosts as Linux network namespaces, for fault tests that need a real network to break.

Loopback cannot be partitioned: every node of an integration test shares ``127.0.0.1``. Here
each host is a network namespace (``hacore-<pid>-<tag>-<i>``) with one veth into a bridge in
the root namespace and a private address in a random ``10.x.y.0/24`` that nothing on the
machine uses; the root namespace gets ``.254`` on the bridge so tests (the CLI, probes) reach
every host. Processes started with :meth:`Network.popen` inherit the host's namespace, and so
do their children (a node's PostgreSQL and store server).

Faults are nftables rules in the host's own namespace (table ``inet hacore_fault``), so the
root namespace's firewall is never touched: :meth:`Network.isolate` drops every packet but
loopback, :meth:`Network.cut` drops the traffic between two hosts (optionally one direction or
some ports only), :meth:`Network.loss` drops a random share, :meth:`Network.heal` removes
them. ``tc netem`` is not in every kernel (not in this machine's): :meth:`Network.delay` says
so with a clear error instead of pretending.

Everything created is recorded in ``/run/hacore-netns/<tag>.json`` before it exists, so
:func:`cleanup_stale` (run at session start) removes what a crashed run left behind: the
namespaces, the bridge and veths of runs whose process is gone, and only those; names no
other tool would use (``hf<tag>…``) make sure no foreign interface is ever touched.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs

STATE_DIR = Path("/run/hacore-netns")
NS_PREFIX = "hacore"
TABLE = "hacore_fault"
_NS_NAME = re.compile(rf"^{NS_PREFIX}-(\d+)-([0-9a-f]{{6}})-\d+$")
_LINK_NAME = re.compile(r"^hf([0-9a-f]{6})(br|v\d+)$")


class NetnsError(RuntimeError):
    """A namespace, link or firewall command failed; the message names the command."""


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = 30.0) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise NetnsError(f"`{' '.join(argv)}` failed: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout


def unavailable_reason() -> str | None:
    """Why network namespaces cannot be used here (None: they can), for a pytest skip."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    probe = f"{NS_PREFIX}-{os.getpid()}-{secrets.token_hex(3)}-probe"
    try:
        _run(["ip", "netns", "add", probe])
    except (NetnsError, OSError) as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        _run(["ip", "netns", "exec", probe, "nft", "list", "ruleset"])
    except NetnsError as exc:
        return f"nftables does not work in a namespace: {exc}"
    finally:
        _run(["ip", "netns", "del", probe], check=False)
    return None


def _used_networks() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    used: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for line in _run(["ip", "-o", "-4", "addr"]).splitlines():
        match = re.search(r"inet (\S+)", line)
        if match:
            used.append(ipaddress.ip_interface(match.group(1)).network)
    for line in _run(["ip", "-4", "route", "show", "table", "all"]).splitlines():
        first = line.split()[0] if line.split() else ""
        if first in ("default", "broadcast", "local", "unreachable", "multicast"):
            continue
        with contextlib.suppress(ValueError):
            used.append(ipaddress.ip_network(first, strict=False))
    for path in STATE_DIR.glob("*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            used.append(ipaddress.ip_network(json.loads(path.read_text())["subnet"]))
    return used


def _free_subnet() -> ipaddress.IPv4Network:
    used = _used_networks()
    for _ in range(200):
        subnet = ipaddress.IPv4Network(
            f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(256)}.0/24"
        )
        if not any(subnet.overlaps(net) for net in used):
            return subnet
    raise NetnsError("no free 10.x.y.0/24 subnet found for the test network")


@attrs.frozen
class Host:
    """One namespace: its name, its address on the bridge, and the root end of its veth."""

    index: int
    namespace: str
    address: str
    veth: str

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host (``ip netns exec`` execs it: the pid is the command's)."""
        return ["ip", "netns", "exec", self.namespace, *argv]


class Network:
    """N hosts on one bridge. Use as a context manager, or call :meth:`close` in a finally."""

    def __init__(self, hosts: int) -> None:
        self.tag = secrets.token_hex(3)
        self.bridge = f"hf{self.tag}br"
        self.subnet = _free_subnet()
        addresses = list(self.subnet.hosts())
        self.gateway = str(addresses[-1])
        self.hosts = [
            Host(
                index=i,
                namespace=f"{NS_PREFIX}-{os.getpid()}-{self.tag}-{i}",
                address=str(addresses[i]),
                veth=f"hf{self.tag}v{i}",
            )
            for i in range(hosts)
        ]
        self.state_file = STATE_DIR / f"{self.tag}.json"
        self._faults: dict[str, list[str]] = {}

    def __enter__(self) -> Network:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- life cycle ---------------------------------------------------------------------------

    def create(self) -> Network:
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "subnet": str(self.subnet),
                    "namespaces": [h.namespace for h in self.hosts],
                    "links": [self.bridge, *(h.veth for h in self.hosts)],
                }
            )
        )
        try:
            prefix = self.subnet.prefixlen
            _run(["ip", "link", "add", self.bridge, "type", "bridge"])
            _run(["ip", "addr", "add", f"{self.gateway}/{prefix}", "dev", self.bridge])
            _run(["ip", "link", "set", self.bridge, "up"])
            for host in self.hosts:
                inside = ["ip", "netns", "exec", host.namespace]
                _run(["ip", "netns", "add", host.namespace])
                veth = f"ip link add {host.veth} type veth peer name eth0 netns {host.namespace}"
                _run(veth.split())
                _run(["ip", "link", "set", host.veth, "master", self.bridge])
                _run(["ip", "link", "set", host.veth, "up"])
                _run([*inside, "ip", "link", "set", "lo", "up"])
                _run([*inside, "ip", "addr", "add", f"{host.address}/{prefix}", "dev", "eth0"])
                _run([*inside, "ip", "link", "set", "eth0", "up"])
                self._install_table(host)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Delete everything this network created; safe to call twice and after a failure.

        Processes still inside a namespace were started by the test that owns it: they are
        SIGKILLed by pid so the namespace really goes away.
        """
        for host in self.hosts:
            for pid in self.pids(host):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        _remove([h.namespace for h in self.hosts], [self.bridge, *(h.veth for h in self.hosts)])
        self.state_file.unlink(missing_ok=True)

    # -- processes ----------------------------------------------------------------------------

    def host(self, index_or_address: int | str) -> Host:
        for host in self.hosts:
            if index_or_address in (host.index, host.address, host.namespace):
                return host
        raise KeyError(index_or_address)

    def run(
        self, host: Host, argv: Sequence[str], *, check: bool = True, timeout: float = 60.0
    ) -> str:
        return _run(host.argv(argv), check=check, timeout=timeout)

    def popen(self, host: Host, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(host.argv(argv), **kwargs)

    def pids(self, host: Host) -> list[int]:
        """Every process inside the host's namespace (the node's agent, database, store)."""
        out = _run(["ip", "netns", "pids", host.namespace], check=False)
        return [int(pid) for pid in out.split() if pid.isdigit()]

    def signal_host(self, host: Host, sig: int) -> list[int]:
        """Send ``sig`` to every process of the host, as a VM pause (SIGSTOP) or resume would."""
        pids = self.pids(host)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return pids

    # -- faults -------------------------------------------------------------------------------

    def isolate(self, host: Host, *, keep_root: bool = False) -> None:
        """Drop every packet in or out of ``host`` except loopback; with ``keep_root`` the
        root namespace (the tests' own probes) still reaches it, the other hosts do not."""
        rules = []
        if keep_root:
            rules += [
                f"input ip saddr {self.gateway} accept",
                f"output ip daddr {self.gateway} accept",
            ]
        rules += ['input iifname != "lo" drop', 'output oifname != "lo" drop']
        self._add(host, rules)

    def cut(
        self,
        a: Host,
        b: Host,
        *,
        direction: str = "both",
        ports: Iterable[int] = (),
    ) -> None:
        """Drop traffic between ``a`` and ``b`` (rules in ``a``'s namespace).

        ``direction``: ``both``, ``out`` (a -> b only) or ``in`` (b -> a only): one-way loss,
        where a connection's handshake fails in both directions but an established stream's
        replies vanish. ``ports``: only packets to or from these TCP ports (a database or a
        store port), the rest of the traffic keeps flowing.
        """
        if direction not in ("both", "in", "out"):
            raise ValueError(f"direction must be both, in or out (got {direction!r})")
        port_set = ", ".join(str(p) for p in ports)
        matches = []
        if direction in ("both", "out"):
            matches.append(f"output ip daddr {b.address}")
        if direction in ("both", "in"):
            matches.append(f"input ip saddr {b.address}")
        rules = []
        for match in matches:
            if port_set:
                rules += [
                    f"{match} tcp {side} {{ {port_set} }} drop" for side in ("dport", "sport")
                ]
            else:
                rules.append(f"{match} drop")
        self._add(a, rules)

    def loss(self, host: Host, percent: int) -> None:
        """Drop ``percent`` % of the host's packets (both directions), loopback excepted."""
        if not 0 < percent <= 100:
            raise ValueError(f"percent must be in 1..100 (got {percent})")
        # nft compares the random number with a value it must hold: 100 is out of range
        chance = "" if percent == 100 else f" numgen random mod 100 < {percent}"
        self._add(
            host, [f'input iifname != "lo"{chance} drop', f'output oifname != "lo"{chance} drop']
        )

    def delay(self, host: Host, milliseconds: int) -> None:
        """Delay the host's outgoing packets with ``tc netem`` where the kernel has it."""
        if shutil.which("tc") is None:
            raise NetnsError("cannot add delay: `tc` is not installed")
        try:
            self.run(
                host,
                [
                    "tc",
                    "qdisc",
                    "replace",
                    "dev",
                    "eth0",
                    "root",
                    "netem",
                    "delay",
                    f"{milliseconds}ms",
                ],
            )
        except NetnsError as exc:
            raise NetnsError(f"cannot add delay: this kernel has no tc netem ({exc})") from exc
        self._faults.setdefault(host.namespace, []).append("netem")

    def heal(self, host: Host | None = None) -> None:
        """Remove every fault of ``host`` (every host when None)."""
        for target in [host] if host is not None else self.hosts:
            self.run(target, ["nft", "flush", "chain", "inet", TABLE, "input"])
            self.run(target, ["nft", "flush", "chain", "inet", TABLE, "output"])
            if "netem" in self._faults.pop(target.namespace, []):
                self.run(target, ["tc", "qdisc", "del", "dev", "eth0", "root"], check=False)

    def rules(self, host: Host) -> str:
        """The host's fault table as nft prints it (for failure messages)."""
        return self.run(host, ["nft", "list", "table", "inet", TABLE], check=False)

    def _install_table(self, host: Host) -> None:
        script = (
            f"table inet {TABLE} {{\n"
            "  chain input { type filter hook input priority 0; policy accept; }\n"
            "  chain output { type filter hook output priority 0; policy accept; }\n"
            "}\n"
        )
        subprocess.run(
            host.argv(["nft", "-f", "-"]),
            input=script,
            text=True,
            check=True,
            capture_output=True,
            timeout=30,
        )

    def _add(self, host: Host, rules: Iterable[str]) -> None:
        script = "".join(
            f"add rule inet {TABLE} {rule.split(' ', 1)[0]} {rule.split(' ', 1)[1]}\n"
            for rule in rules
        )
        proc = subprocess.run(
            host.argv(["nft", "-f", "-"]),
            input=script,
            text=True,
            capture_output=True,
            timeout=30,
        )
        if proc.returncode != 0:
            raise NetnsError(f"nft rules for {host.namespace} refused: {proc.stderr.strip()}")


def _remove(namespaces: Iterable[str], links: Iterable[str]) -> None:
    existing_ns = set(_run(["ip", "netns", "list"], check=False).split())
    for namespace in namespaces:
        if namespace in existing_ns:
            _run(["ip", "netns", "del", namespace], check=False)
    existing_links = _links()
    for link in links:
        if link in existing_links and _LINK_NAME.match(link):
            _run(["ip", "link", "del", link], check=False)


def _links() -> set[str]:
    try:
        data = json.loads(_run(["ip", "-j", "link"], check=False) or "[]")
    except ValueError:
        return set()
    return {entry["ifname"] for entry in data}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale() -> list[str]:
    """Remove what crashed runs left: namespaces, bridges and veths of dead processes.

    Only names this module makes are considered, and only those whose creating process is
    gone: a concurrent run keeps its network. Processes still inside a stale namespace were
    started by that crashed run; they are SIGKILLed by pid. Returns what was removed.
    """
    removed: list[str] = []
    live_tags = set()
    for path in STATE_DIR.glob("*.json"):
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _alive(int(state.get("pid", 0))):
            live_tags.add(path.stem)
            continue
        _kill_inside(state.get("namespaces", []))
        _remove(state.get("namespaces", []), state.get("links", []))
        removed += [*state.get("namespaces", []), *state.get("links", [])]
        path.unlink(missing_ok=True)
    for namespace in _run(["ip", "netns", "list"], check=False).split():
        match = _NS_NAME.match(namespace)
        if match and match.group(2) not in live_tags and not _alive(int(match.group(1))):
            _kill_inside([namespace])
            _run(["ip", "netns", "del", namespace], check=False)
            removed.append(namespace)
    for link in _links():
        match = _LINK_NAME.match(link)
        if match and match.group(1) not in live_tags and not _tag_live(match.group(1)):
            _run(["ip", "link", "del", link], check=False)
            removed.append(link)
    return removed


def _tag_live(tag: str) -> bool:
    """Read again at the last moment: a run that started meanwhile has written its file."""
    try:
        return _alive(int(json.loads((STATE_DIR / f"{tag}.json").read_text())["pid"]))
    except (OSError, ValueError, KeyError):
        return False


def _kill_inside(namespaces: Iterable[str]) -> None:
    for namespace in namespaces:
        out = _run(["ip", "netns", "pids", namespace], check=False)
        for pid in (int(p) for p in out.split() if p.isdigit()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    if namespaces:
        time.sleep(0.2)
