"""Load on a status endpoint: N keep-alive connections for a few seconds; rate and latency.

``wrk`` (Debian package ``wrk``) is used when installed: written in C, it leaves the CPU to
the server under test. Without it, a thread per connection with ``http.client`` does the same
job, but on a 2-core machine the Python client itself caps the rate it can measure; the
result says which generator ran.
"""

from __future__ import annotations

import http.client
import json
import math
import shutil
import subprocess
import tempfile
import threading
import time
from typing import Any
from urllib.parse import urlsplit

#: Prints wrk's own counters and exact percentiles as one JSON line at the end of the run.
_WRK_REPORT = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "max_us": %d, ' ..
    '"non_2xx": %d, "connect_errors": %d, "read_errors": %d, "write_errors": %d, ' ..
    '"timeouts": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.status, e.connect, e.read, e.write, e.timeout))
end
"""


def generator() -> str:
    return "wrk" if shutil.which("wrk") else "python-threads"


def load(url: str, *, connections: int, seconds: float, threads: int = 1) -> dict[str, Any]:
    """``connections`` keep-alive connections for ``seconds``; ``threads`` is wrk's (the
    Python fallback runs a thread per connection)."""
    if shutil.which("wrk"):
        return _wrk(url, connections, seconds, threads)
    return _threads(url, connections, seconds)


def _result(
    requests: int,
    seconds: float,
    p50: float,
    p99: float,
    worst: float,
    failed: int,
    closed: int,
) -> dict[str, Any]:
    return {
        "requests": requests,
        "rps": round(requests / seconds, 1) if seconds else 0.0,
        "p50_ms": round(p50, 2),
        "p99_ms": round(p99, 2),
        "max_ms": round(worst, 2),
        "failed": failed,
        # responses after which the server closed the connection (HTTP/1.0, no keep-alive):
        # the next request pays for a new connection
        "server_closed": closed,
    }


def _wrk(url: str, connections: int, seconds: float, threads: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(_WRK_REPORT)
        script.flush()
        argv = [
            "wrk",
            f"--threads={min(threads, connections)}",
            f"--connections={connections}",
            f"--duration={math.ceil(seconds)}s",
            "--timeout=5s",
            f"--script={script.name}",
            url,
        ]
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=seconds + 60, check=False
        )
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no report: {(out.stderr or out.stdout).strip()[-300:]}")
    raw = json.loads(line.removeprefix("JSON "))
    # wrk counts a connection the server closes after a complete response as a read error
    failed = sum(raw[k] for k in ("non_2xx", "connect_errors", "write_errors", "timeouts"))
    return _result(
        raw["requests"],
        raw["duration_us"] / 1e6,
        raw["p50_us"] / 1000,
        raw["p99_us"] / 1000,
        raw["max_us"] / 1000,
        failed,
        raw["read_errors"],
    )


def _threads(url: str, connections: int, seconds: float) -> dict[str, Any]:
    parts = urlsplit(url)
    path = parts.path or "/"
    latencies: list[list[float]] = [[] for _ in range(connections)]
    failures = [0] * connections
    closed = [0] * connections
    start = threading.Barrier(connections + 1)
    deadline = 0.0

    def client(index: int) -> None:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
        start.wait()
        while (now := time.perf_counter()) < deadline:
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    failures[index] += 1
                if response.will_close:
                    closed[index] += 1
            except (OSError, http.client.HTTPException):
                failures[index] += 1
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
                continue
            latencies[index].append(time.perf_counter() - now)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(connections)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    deadline = began + seconds
    start.wait()
    for thread in threads:
        thread.join(seconds + 30)
    took = time.perf_counter() - began
    samples = sorted(x for per in latencies for x in per)
    if not samples:
        raise RuntimeError(f"no request to {url} succeeded")

    def rank(q: float) -> float:
        return samples[max(0, math.ceil(q / 100 * len(samples)) - 1)] * 1000

    return _result(
        len(samples),
        took,
        rank(50),
        rank(99),
        samples[-1] * 1000,
        sum(failures),
        sum(closed),
    )
