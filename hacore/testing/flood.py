"""A connection flood against an agent's REST API, from its own process.

Run as ``python -m hacore.testing.flood HOST PORT --idle 1000 --busy 300 --seconds 20``: it
holds ``idle`` connections that send nothing (reopening those the server closes) and ``busy``
keep-alive connections that ask for ``/status`` again as soon as each answer arrives, spread
over several loopback source addresses (``--sources``, 127.0.0.0/8 is all local), then prints
one JSON line of counters. Its own process, so the flood's CPU is not the measured process's
interpreter, as with a real load balancer or monitoring job.
"""

from __future__ import annotations

import argparse
import errno
import json
import selectors
import socket
import sys
import time
from typing import Any

import attrs

REQUEST = b"GET /status HTTP/1.1\r\nHost: agent\r\n\r\n"


@attrs.define
class _Busy:
    sock: socket.socket | None
    source: str
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
) -> dict[str, Any]:
    """Hold the flood for ``seconds``; counters of what the server did with it."""
    selector = selectors.DefaultSelector()
    busy_from = sources(0, busy_sources)
    idle_from = sources(busy_sources, idle_sources)
    conns: list[_Busy] = []
    idle_socks: dict[int, tuple[socket.socket, str]] = {}
    stats = {"answers": 0, "closed_busy": 0, "closed_idle": 0, "connect_failures": 0}
    worst = 0.0

    def open_busy(entry: _Busy) -> None:
        sock = _connect(host, port, entry.source)
        entry.sock, entry.buf = sock, bytearray()
        if sock is None:
            stats["connect_failures"] += 1
            return
        entry.sent_at = time.monotonic()
        selector.register(sock, selectors.EVENT_WRITE, entry)

    def open_idle(source: str) -> None:
        sock = _connect(host, port, source)
        if sock is None:
            stats["connect_failures"] += 1
            return
        idle_socks[sock.fileno()] = (sock, source)
        selector.register(sock, selectors.EVENT_READ, None)

    for index in range(busy):
        entry = _Busy(None, busy_from[index % len(busy_from)])
        conns.append(entry)
        open_busy(entry)
    for index in range(idle):
        open_idle(idle_from[index % len(idle_from)])
    end = time.monotonic() + seconds
    while (now := time.monotonic()) < end:
        for key, events in selector.select(min(0.2, end - now)):
            if key.data is None:
                sock, source = idle_socks.pop(key.fd)
                selector.unregister(sock)
                sock.close()
                stats["closed_idle"] += 1
                open_idle(source)
                continue
            entry = key.data
            sock = entry.sock
            assert sock is not None
            if events & selectors.EVENT_WRITE:
                try:
                    sock.send(REQUEST)
                except OSError:
                    selector.unregister(sock)
                    sock.close()
                    stats["closed_busy"] += 1
                    open_busy(entry)
                    continue
                selector.modify(sock, selectors.EVENT_READ, entry)
                continue
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                selector.unregister(sock)
                sock.close()
                stats["closed_busy"] += 1
                open_busy(entry)
                continue
            entry.buf += data
            answered = _response_end(entry.buf)
            if answered is not None:
                stats["answers"] += 1
                worst = max(worst, time.monotonic() - entry.sent_at)
                del entry.buf[:answered]
                entry.sent_at = time.monotonic()
                try:
                    sock.send(REQUEST)
                except OSError:
                    selector.unregister(sock)
                    sock.close()
                    stats["closed_busy"] += 1
                    open_busy(entry)
    held_busy = sum(1 for entry in conns if entry.sock is not None)
    result: dict[str, Any] = {
        **stats,
        "rps": round(stats["answers"] / seconds, 1),
        "max_answer_s": round(worst, 3),
        "idle_open_at_end": len(idle_socks),
        "busy_open_at_end": held_busy,
    }
    for entry in conns:
        if entry.sock is not None:
            entry.sock.close()
    for sock, _ in idle_socks.values():
        sock.close()
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
    args = parser.parse_args(argv)
    result = flood(
        args.host,
        args.port,
        idle=args.idle,
        busy=args.busy,
        seconds=args.seconds,
        idle_sources=args.idle_sources,
        busy_sources=args.busy_sources,
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
