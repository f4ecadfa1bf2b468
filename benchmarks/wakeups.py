"""How fast a store's watch wakes a waiting client: resign handover and change delivery.

    python benchmarks/wakeups.py [--backends etcd,zookeeper,consul] [--runs N] [--json]

The numbers the consensus contract used to assert (a contender won "within 1 s" of a resign,
a watcher was woken "within 0.5 s" of a deletion) belong here: the contract now proves that the
watch is what wakes the contender, and this measures how long it takes. For every backend whose
test harness can run here, a store is started in a temporary directory, then ``--runs`` times:

* handover: a holder campaigns; a contender, watching the leader key, campaigns, loses, and
  waits on its watch; the holder resigns. The number is the time from the start of ``resign()``
  until the contender's campaign succeeds.
* delivery: a reader watches a prefix; a writer puts a key under it. The number is the time
  from the start of ``put()`` until the reader's ``get()`` returns the event.

A benchmark, not a test: it prints min / median / p90 / max in milliseconds and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from hacore.backends.consensus import LEADER_KEY, ConsensusBackend
from hacore.plugins.registry import load_plugins
from hacore.testing.harness import ConsensusHarness

TTL = 20.0
RETRY_TIMEOUT = 5.0
PATIENCE = 60.0


def summary(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {
        "n": len(ordered),
        "min_ms": round(1000 * ordered[0], 1),
        "median_ms": round(1000 * statistics.median(ordered), 1),
        "p90_ms": round(1000 * p90, 1),
        "max_ms": round(1000 * ordered[-1], 1),
    }


def handover_once(holder: ConsensusBackend, contender: ConsensusBackend) -> float:
    lease = holder.campaign()
    if lease is None:
        raise RuntimeError("the holder lost a campaign nobody else ran")
    waiting = threading.Event()
    won: list[float] = []

    def contend() -> None:
        with contender.watch(LEADER_KEY) as watcher:
            deadline = time.monotonic() + PATIENCE
            while time.monotonic() < deadline:
                if (mine := contender.campaign()) is not None:
                    won.append(time.perf_counter())
                    contender.resign(mine)
                    return
                waiting.set()
                watcher.get(timeout=PATIENCE)

    thread = threading.Thread(target=contend)
    thread.start()
    if not waiting.wait(PATIENCE):
        raise RuntimeError("the contender never campaigned")
    started = time.perf_counter()
    holder.resign(lease)
    thread.join(PATIENCE)
    if not won:
        raise RuntimeError("the contender never won")
    return won[0] - started


def delivery_once(writer: ConsensusBackend, reader: ConsensusBackend, index: int) -> float:
    with reader.watch("wake/") as watcher:
        started = time.perf_counter()
        if not writer.put(f"wake/{index}", b"x"):
            raise RuntimeError("an unconditional put failed")
        while True:
            event = watcher.get(timeout=PATIENCE)
            if event is None:
                raise RuntimeError("the watch delivered nothing")
            if event.key == f"wake/{index}":
                return time.perf_counter() - started


def measure(harness: ConsensusHarness, runs: int) -> dict[str, Any]:
    namespace = f"wake{uuid.uuid4().hex[:8]}"
    nodes = [
        harness.make_backend(name, ttl=TTL, retry_timeout=RETRY_TIMEOUT, namespace=namespace)
        for name in ("holder", "contender")
    ]
    handovers: list[float] = []
    deliveries: list[float] = []
    try:
        holder, contender = nodes
        handover_once(holder, contender)  # warm-up: sessions and connections
        for _ in range(runs):
            handovers.append(handover_once(holder, contender))
        delivery_once(holder, contender, -1)
        for index in range(runs):
            deliveries.append(delivery_once(holder, contender, index))
    finally:
        for node in nodes:
            node.close()
    return {"handover": summary(handovers), "delivery": summary(deliveries)}


def run_backend(name: str, runs: int) -> dict[str, Any]:
    registry = load_plugins().registry
    try:
        harness_cls = registry.get("test_harness", name)
    except Exception as exc:
        return {"backend": name, "skipped": str(exc)}
    reason = harness_cls.unavailable_reason()
    if reason:
        return {"backend": name, "skipped": reason}
    with tempfile.TemporaryDirectory(prefix=f"wake-{name}-") as workdir:
        harness = harness_cls(Path(workdir))
        try:
            harness.start()
            return {"backend": name, **measure(harness, runs)}
        finally:
            harness.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="etcd,zookeeper,consul")
    parser.add_argument("--runs", type=int, default=20, help="measurements of each (default 20)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of lines")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    report = []
    for name in [n.strip() for n in args.backends.split(",") if n.strip()]:
        print(f"{name}: running...", file=sys.stderr)
        try:
            report.append(run_backend(name, args.runs))
        except Exception as exc:
            report.append({"backend": name, "error": f"{type(exc).__name__}: {exc}"})
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for entry in report:
        if "handover" not in entry:
            print(f"{entry['backend']}: {entry.get('skipped') or entry.get('error')}")
            continue
        for what in ("handover", "delivery"):
            s = entry[what]
            print(
                f"{entry['backend']:<10} {what:<9} n={s['n']} min {s['min_ms']} ms,"
                f" median {s['median_ms']} ms, p90 {s['p90_ms']} ms, max {s['max_ms']} ms"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
