"""Where the status endpoint's p99 comes from: the same wrk load (8 keep-alive connections) on
servers that differ in one thing each, alternated round by round (issue 15, target 2).

    flock /tmp/bench.lock .venv/bin/python benchmarks/status_tail.py [--rounds 3] [--seconds 5]
        [--servers raw,bare,agent] [--pin off,t1,on,wrk1] [--json]

The servers, each in a process of its own: ``raw``, a minimal Python selector loop answering
every request with the bytes of hacore's ``/status`` (the floor of a Python server on this
machine); ``bare``, hacore's :class:`~hacore.api.server.ApiServer` over a snapshot that never
changes in a process with nothing else (hacore's HTTP path alone; ``bare@DIR`` imports hacore
from DIR, a copy of an earlier tree, for a before/after); ``agent``, the active of a real
3-node cluster (``failover.py``'s ``hacore`` system, its etcd and PostgreSQL running).

``--pin`` (:data:`PINS`) places wrk and the server on the 2 cores. Each line also gives the
server process's CPU, how often the scheduler preempted its busiest thread (the API's I/O
thread) and the CPU and wake-ups of its other threads (from ``/proc``), and the load average.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _load
from _cluster import prepare_workdir

HOST = "127.0.0.1"


# -- the servers, run as ``status_tail.py --serve KIND --port N`` ----------------------------


def _snapshot() -> Any:
    from hacore.agent.snapshot import NodeSnapshot
    from hacore.agent.vocabulary import NodeState
    from hacore.backends.health import CheckResult

    return NodeSnapshot(
        node_name="h1",
        version="bench",
        state=NodeState.ACTIVE,
        is_active=True,
        healthy=True,
        checks={"db": CheckResult(True), "disk": CheckResult(True, "41% used")},
        lease_token=7,
        leader="h1",
        store_ok=True,
        last_loop_at=time.monotonic(),
        reason="holds the lease",
    )


def _facade(snap: Any) -> Any:
    from hacore.api.facade import AgentFacade

    class Static(AgentFacade):
        def snapshot(self) -> Any:
            return snap

        def cluster(self) -> dict[str, Any]:
            return {}

    return Static()


def serve_bare(port: int) -> None:
    from hacore.agent import interpreter
    from hacore.api.server import ApiServer
    from hacore.config.node import ApiSettings

    interpreter.share_promptly()  # as the agent's process does
    ApiServer(_facade(_snapshot()), ApiSettings(), host=HOST, port=port).start()
    signal.pause()  # until the driver's SIGTERM


def serve_raw(port: int) -> None:
    """One thread, one selector; every complete request head gets the same answer."""
    from hacore.api.messages import JSON, Response, encode
    from hacore.api.probe_routes import ProbeBody

    body = ProbeBody.of(_snapshot()).render(time.monotonic(), private=False)
    answer = encode(Response(200, body, JSON), head_only=False, close=False)
    listener = socket.create_server((HOST, port), backlog=64)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    pending: dict[socket.socket, bytes] = {}
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is listener:
                conn, _ = listener.accept()
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sel.register(conn, selectors.EVENT_READ)
                pending[conn] = b""
                continue
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                sel.unregister(sock)
                sock.close()
                continue
            buf = pending[sock] + data
            count = buf.count(b"\r\n\r\n")
            pending[sock] = buf[buf.rfind(b"\r\n\r\n") + 4 :] if count else buf
            if count:
                with contextlib.suppress(OSError):
                    sock.sendall(answer * count)


# -- measuring ---------------------------------------------------------------------------------


def _threads(pid: int) -> dict[int, tuple[float, int, int]]:
    """Per thread of ``pid``: CPU seconds, involuntary context switches (preempted while it
    could run) and voluntary ones (it blocked: each is a wake-up later) so far."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[int, tuple[float, int, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            cpu = (int(fields[11]) + int(fields[12])) / tick
            status = (task / "status").read_text()
            forced = int(status.split("nonvoluntary_ctxt_switches:")[1].split()[0])
            blocked = int(status.split("\nvoluntary_ctxt_switches:")[1].split()[0])
            found[int(task.name)] = (cpu, forced, blocked)
    return found


def _pin(pid: int, cpus: str) -> None:
    subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], capture_output=True, check=True)


#: how wrk and the server share the 2 cores: ``off`` wrk's 2 threads and the server as the
#: scheduler likes (failover.py's status scenario before ``--status-threads``), ``t1`` the same
#: with one wrk thread (failover.py's now),
#: ``on`` wrk's 2 threads on CPU 0 and the server on CPU 1, ``wrk1`` that with one wrk thread
PINS = ("off", "t1", "on", "wrk1")


def measure(url: str, pid: int, seconds: float, pin: str) -> dict[str, Any]:
    """One wrk run (8 connections) on ``url``, wrk and ``pid`` placed as ``pin`` says."""
    mine = os.sched_getaffinity(0)
    everywhere = ",".join(str(c) for c in sorted(mine))
    pinned = pin in ("on", "wrk1")
    _pin(pid, "1" if pinned else everywhere)
    before, began = _threads(pid), time.monotonic()
    try:
        if pinned:
            os.sched_setaffinity(0, {0})  # wrk, our child, inherits it
        result = _load.load(
            url, connections=8, seconds=seconds, threads=1 if pin in ("t1", "wrk1") else 2
        )
    finally:
        os.sched_setaffinity(0, mine)
        _pin(pid, everywhere)
    took, after = time.monotonic() - began, _threads(pid)
    deltas = sorted(
        (
            tuple(a - b for a, b in zip(after[t], before[t], strict=True))
            for t in after
            if t in before
        ),
        reverse=True,
    )
    result["server_cpu"] = round(sum(d[0] for d in deltas) / took, 2)
    # the busiest thread is the API's I/O thread; the others (the agent's loop, renewal,
    # watch...) take the interpreter from it each time they wake
    result["io_thread_preempted"] = deltas[0][1] if deltas else 0
    result["others_cpu"] = round(sum(d[0] for d in deltas[1:]) / took, 3)
    result["others_wakeups_per_s"] = round(sum(d[2] for d in deltas[1:]) / took)
    result["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    return result


@contextlib.contextmanager
def own_server(kind: str, tree: str | None) -> Iterator[tuple[str, int]]:
    """``kind`` in a process of its own; hacore imported from ``tree`` when given."""
    from hacore.testing.procs import free_port, wait_for

    port = free_port()
    argv = [sys.executable, str(Path(__file__).resolve()), "--serve", kind, "--port", str(port)]
    env = {**os.environ, "PYTHONPATH": tree} if tree else None
    proc = subprocess.Popen(argv, env=env)
    try:
        wait_for(lambda: socket.create_connection((HOST, port), 1).close() or True, 30)
        yield f"http://{HOST}:{port}/status", proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def agent_server(root: Path) -> Iterator[tuple[str, int]]:
    import _systems

    system = _systems.systems()["hacore"]
    with _systems.running(system, root, "status-tail", keep=False) as cluster:
        active = cluster.wait_converged(_systems.START_TIMEOUT)
        pid = cluster.processes[active].pid  # type: ignore[attr-defined]
        assert pid is not None
        yield cluster.node(active).status_url, pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument(
        "--servers",
        default="raw,bare,agent",
        help="raw, bare, agent; bare@DIR: bare with hacore imported from DIR (a before copy)",
    )
    parser.add_argument("--pin", default=",".join(PINS), help="among " + ",".join(PINS))
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", choices=("raw", "bare"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        (serve_raw if args.serve == "raw" else serve_bare)(args.port)
        return
    if not shutil.which("wrk") or not shutil.which("taskset"):
        raise SystemExit("status_tail.py needs wrk and taskset on PATH")
    kinds = args.servers.split(",")
    pins = args.pin.split(",")
    rows: list[dict[str, Any]] = []
    root = prepare_workdir(Path(tempfile.mkdtemp(prefix="hacore-status-tail-")))
    try:
        with contextlib.ExitStack() as stack:
            servers = {
                kind: stack.enter_context(
                    agent_server(root)
                    if kind == "agent"
                    else own_server(kind.split("@")[0], kind.partition("@")[2])
                )
                for kind in kinds
            }
            for index in range(args.rounds):
                for kind in kinds:
                    for pin in pins:
                        url, pid = servers[kind]
                        row = {"round": index + 1, "server": kind, "pin": pin}
                        row |= measure(url, pid, args.seconds, pin)
                        rows.append(row)
                        print(_line(row), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        print(json.dumps(rows, indent=1))


def _line(row: dict[str, Any]) -> str:
    return (
        f"round {row['round']} {row['server']:5} pin {row['pin']:4} "
        f"{row['rps']:>8.0f} req/s p50 {row['p50_ms']:.2f} p99 {row['p99_ms']:.2f} "
        f"max {row['max_ms']:.2f} ms; server CPU {row['server_cpu']:.2f} "
        f"(other threads {row['others_cpu']:.3f}, {row['others_wakeups_per_s']} wake-ups/s), "
        f"I/O thread preempted {row['io_thread_preempted']}x; "
        f"failed {row['failed']}; loadavg {row['loadavg']}"
    )


if __name__ == "__main__":
    main()
