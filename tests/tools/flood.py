"""A connection flood against an agent's REST API, from its own process.

Run as ``python tests/tools/flood.py HOST PORT --idle 1000 --busy 300 --seconds 20``: it
opens ``busy`` keep-alive connections that ask for ``/status`` again as soon as each answer
arrives, and ``idle`` keep-alive connections that ask once and then wait, as a load balancer's
pool does (a closed one is reopened), spread over several loopback source addresses
(``--sources``, 127.0.0.0/8 is all local). It then holds them for ``seconds`` and prints one
JSON line of counters. Its own process, so the flood's CPU is not the measured process's
interpreter, as with a real load balancer or monitoring job.

The connections are opened at most ``--ramp-batch`` at a time, each batch established before
the next: a burst larger than the listen backlog loses SYNs, and the kernel's retransmits
(1 s, 3 s, 7 s...) would spread the ramp past the server's request timeout, so that the flood
never holds all its connections at one moment. The ``seconds`` count from the end of the ramp.

With ``--until-stdin-closes`` the flood is held for at least ``seconds`` *and* until its
standard input is closed: a test that must make a number of probes under the flood, however
slow a loaded machine makes each one, closes it when it has them.
"""

from __future__ import annotations

import argparse
import enum
import errno
import json
import selectors
import socket
import sys
import time
from typing import Any

import attrs

REQUEST = b"GET /status HTTP/1.1\r\nHost: agent\r\n\r\n"
#: the longest the ramp may take before the flood starts its clock anyway
RAMP_LIMIT = 60.0


class _Phase(enum.Enum):
    CONNECTING = "connecting"
    ASKING = "asking"
    HELD = "held"


@attrs.define
class _Conn:
    busy: bool
    source: str
    sock: socket.socket | None = None
    phase: _Phase = _Phase.CONNECTING
    buf: bytearray = attrs.field(factory=bytearray)
    sent_at: float = 0.0


def sources(first: int, count: int) -> list[str]:
    """``count`` loopback addresses, 127.0.<n>.<m> from index ``first``."""
    return [f"127.0.{(first + i) // 250}.{(first + i) % 250 + 2}" for i in range(count)]


def _connect(host: str, port: int, source: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((source, 0))
        sock.setblocking(False)
        code = sock.connect_ex((host, port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            return None
    except OSError:
        sock.close()
        return None
    return sock


def _response_end(buf: bytearray) -> int | None:
    head = buf.find(b"\r\n\r\n")
    if head < 0:
        return None
    length = 0
    for line in bytes(buf[:head]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    end = head + 4 + length
    return end if len(buf) >= end else None


def flood(
    host: str,
    port: int,
    *,
    idle: int,
    busy: int,
    seconds: float,
    idle_sources: int = 20,
    busy_sources: int = 10,
    ramp_batch: int = 200,
    until_stdin_closes: bool = False,
) -> dict[str, Any]:
    """Ramp up, hold the flood for ``seconds``; counters of what the server did with it."""
    selector = selectors.DefaultSelector()
    busy_from = sources(0, busy_sources)
    idle_from = sources(busy_sources, idle_sources)
    conns = [_Conn(True, busy_from[i % len(busy_from)]) for i in range(busy)]
    conns += [_Conn(False, idle_from[i % len(idle_from)]) for i in range(idle)]
    waiting = list(reversed(conns))  # not opened yet, or to reopen; popped from the end
    stats = {
        "answers": 0,
        "closed_busy": 0,
        "closed_idle": 0,
        "connect_failures": 0,
    }
    worst = 0.0
    connecting = 0

    def drop(conn: _Conn) -> None:
        nonlocal connecting
        assert conn.sock is not None
        if conn.phase is _Phase.CONNECTING:
            connecting -= 1
        selector.unregister(conn.sock)
        conn.sock.close()
        conn.sock = None
        conn.buf = bytearray()

    def closed(conn: _Conn) -> None:
        drop(conn)
        stats["closed_busy" if conn.busy else "closed_idle"] += 1
        waiting.append(conn)

    def ask(conn: _Conn) -> None:
        assert conn.sock is not None
        conn.sent_at = time.monotonic()
        try:
            conn.sock.send(REQUEST)
        except OSError:
            closed(conn)
            return
        conn.phase = _Phase.ASKING
        selector.modify(conn.sock, selectors.EVENT_READ, conn)

    def open_more() -> None:
        nonlocal connecting
        while waiting and connecting < ramp_batch:
            conn = waiting.pop()
            sock = _connect(host, port, conn.source)
            if sock is None:
                stats["connect_failures"] += 1
                waiting.insert(0, conn)
                return
            conn.sock, conn.phase, conn.buf = sock, _Phase.CONNECTING, bytearray()
            connecting += 1
            selector.register(sock, selectors.EVENT_WRITE, conn)

    def handle(conn: _Conn, events: int) -> None:
        nonlocal connecting, worst
        sock = conn.sock
        assert sock is not None
        if conn.phase is _Phase.CONNECTING:
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                stats["connect_failures"] += 1
                drop(conn)
                waiting.insert(0, conn)
                return
            connecting -= 1
            ask(conn)
            return
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data or conn.phase is _Phase.HELD:
            closed(conn)  # a held connection is readable only when the server closes it
            return
        conn.buf += data
        answered = _response_end(conn.buf)
        if answered is None:
            return
        stats["answers"] += 1
        worst = max(worst, time.monotonic() - conn.sent_at)
        del conn.buf[:answered]
        if conn.busy:
            ask(conn)
        else:
            conn.phase = _Phase.HELD

    released = not until_stdin_closes
    if not released:
        selector.register(sys.stdin.fileno(), selectors.EVENT_READ, None)
    started = time.monotonic()
    ramp_end = started + RAMP_LIMIT
    end: float | None = None
    while end is None or time.monotonic() < end or not released:
        open_more()
        if end is None and not waiting and not connecting:
            end = time.monotonic() + seconds
        timeout = 0.2 if end is None else min(0.2, max(0.0, end - time.monotonic()))
        if end is not None and time.monotonic() >= end:
            timeout = 0.2  # held on, waiting for standard input to close
        for key, events in selector.select(timeout):
            if key.data is None:
                if not sys.stdin.buffer.raw.read(4096):
                    selector.unregister(key.fileobj)
                    released = True
                continue
            handle(key.data, events)
        if end is None and time.monotonic() > ramp_end:
            end = time.monotonic() + seconds
    ramp = (end - seconds) - started
    held = time.monotonic() - (end - seconds)
    result: dict[str, Any] = {
        **stats,
        "ramp_s": round(ramp, 3),
        "held_s": round(held, 3),
        "rps": round(stats["answers"] / held, 1),
        "max_answer_s": round(worst, 3),
        "idle_open_at_end": sum(1 for c in conns if not c.busy and c.phase is _Phase.HELD),
        "busy_open_at_end": sum(1 for c in conns if c.busy and c.sock is not None),
    }
    for conn in conns:
        if conn.sock is not None:
            conn.sock.close()
    selector.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--busy", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--idle-sources", type=int, default=20)
    parser.add_argument("--busy-sources", type=int, default=10)
    parser.add_argument("--ramp-batch", type=int, default=200)
    parser.add_argument("--until-stdin-closes", action="store_true")
    args = parser.parse_args(argv)
    result = flood(
        args.host,
        args.port,
        idle=args.idle,
        busy=args.busy,
        seconds=args.seconds,
        idle_sources=args.idle_sources,
        busy_sources=args.busy_sources,
        ramp_batch=args.ramp_batch,
        until_stdin_closes=args.until_stdin_closes,
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
