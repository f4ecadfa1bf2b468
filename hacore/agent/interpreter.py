"""The agent process's interpreter settings: what lets its REST API answer probes within a
couple of milliseconds while the loop and its threads work in the same process.

Measured on the failover benchmark's active (docs/api.md, "Probe latency"): one loop iteration
runs about 4 ms of Python (3.8 ms median on 2026-12-07; 17 ms before the etcd client left
httpx for its calls), and a full garbage collection of the agent's ~75,000 objects takes
about 30 ms of CPU. Both hold the GIL, and a probe waits for whoever holds it:

* CPython lets a thread keep the GIL for 5 ms (``sys.getswitchinterval()``) while another waits,
  so the API's thread waited in 5 ms slices for each iteration; at :data:`SWITCH_INTERVAL` the
  two take turns every half millisecond.
* The objects alive once the agent runs (modules, plugins, clients) live as long as the
  process: :func:`settle` moves them out of the collector's sight (``gc.freeze``), and a full
  collection then looks only at what came later.
"""

from __future__ import annotations

import gc
import sys

#: seconds a thread may keep the GIL while another waits for it (CPython's default: 0.005)
SWITCH_INTERVAL = 0.0005


def share_promptly() -> None:
    """Let the API's thread and the loop's take turns in short slices."""
    sys.setswitchinterval(SWITCH_INTERVAL)


def settle() -> None:
    """Collect once, then keep what survives out of later collections (it lives as long as
    the process). Call once the agent runs: what it built to start is what it keeps."""
    gc.collect()
    gc.freeze()
