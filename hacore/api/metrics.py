"""``/metrics``: Prometheus text built from the loop's snapshot at scrape time.

A custom collector reads one snapshot per scrape, so the numbers of one scrape are consistent
with each other and nothing is registered in ``prometheus_client``'s global registry (several
agents, or an agent and its tests, can share a process).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from hacore.agent.state import NodeState
from hacore.api.facade import NodeSnapshot

#: the classic text format; every name and label here is a legacy-valid one
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class SnapshotCollector(Collector):
    def __init__(self, snapshot: Callable[[], NodeSnapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        now = time.monotonic()
        node = snap.node_name

        def gauge(name: str, doc: str, value: float | None) -> Iterator[Metric]:
            if value is not None:
                family = GaugeMetricFamily(name, doc, labels=["node"])
                family.add_metric([node], value)
                yield family

        info = InfoMetricFamily("hacore_node", "This node's hacore version and leader.")
        info.add_metric([], {"node": node, "version": snap.version, "leader": snap.leader or ""})
        yield info
        yield from gauge(
            "hacore_is_active",
            "1 when this node holds the lease, its database is writable and its active-only "
            "services run (what /status answers 200 for).",
            float(snap.is_active),
        )
        state = GaugeMetricFamily(
            "hacore_state", "1 for the state this node is in.", labels=["node", "state"]
        )
        for each in NodeState:
            state.add_metric([node, each.value], float(each is snap.state))
        yield state
        yield from gauge(
            "hacore_standby_streaming",
            "1 when this node is a standby streaming from the active.",
            float(snap.standby_streaming),
        )
        yield from gauge("hacore_healthy", "1 when every health check passes.", float(snap.healthy))
        yield from gauge(
            "hacore_store_ok",
            "1 when the consensus store answered the last loop.",
            float(snap.store_ok),
        )
        yield from gauge(
            "hacore_lease_token",
            "Fencing token of the lease this node holds (absent when it holds none).",
            snap.lease_token,
        )
        yield from gauge(
            "hacore_loop_age_seconds",
            "Seconds since the agent loop last completed.",
            snap.loop_age(now),
        )
        yield from gauge(
            "hacore_cluster_members", "Nodes this node knows in the cluster.", len(snap.members)
        )
        failsafe = snap.failsafe
        yield from gauge(
            "hacore_failsafe_holding",
            "1 while this active outlives a store outage on every member's failsafe "
            "confirmation (absent with failsafe_mode off).",
            None if failsafe is None else float(failsafe.get("holding") is True),
        )
        yield from gauge(
            "hacore_failsafe_promised",
            "1 while this node promised an active not to campaign (absent with failsafe_mode off).",
            None if failsafe is None else float(failsafe.get("promise") is not None),
        )

        checks = GaugeMetricFamily(
            "hacore_check_ok", "1 when the health check passed.", labels=["node", "check"]
        )
        for name, result in sorted(snap.checks.items()):
            checks.add_metric([node, name], float(result.ok))
        yield checks

        up = GaugeMetricFamily(
            "hacore_managed_server_up",
            "1 when a server this agent runs (store member, file sync engine) is up, 0 while "
            "it is down or being restarted.",
            labels=["node", "server"],
        )
        restarts = CounterMetricFamily(
            "hacore_managed_server_restarts",
            "Restarts of a server this agent runs, since the agent started.",
            labels=["node", "server"],
        )
        for server in snap.servers:
            if server.up is not None:
                up.add_metric([node, server.name], float(server.up))
                restarts.add_metric([node, server.name], float(server.restarts))
        yield up
        yield restarts

        repl = snap.replication
        if repl is None:
            return
        yield from gauge(
            "hacore_db_running", "1 when the local database server runs.", float(repl.running)
        )
        yield from gauge(
            "hacore_db_writable", "1 when the local database accepts writes.", float(repl.writable)
        )
        yield from gauge(
            "hacore_db_position_bytes",
            "The local database's position (written on the active, replayed on a standby).",
            repl.position,
        )
        yield from gauge("hacore_db_timeline", "The local database's timeline.", repl.timeline)
        lag = GaugeMetricFamily(
            "hacore_replication_lag_bytes",
            "How far each standby is behind this active, in bytes.",
            labels=["node", "standby"],
        )
        sync = GaugeMetricFamily(
            "hacore_replication_sync",
            "1 when the standby is synchronous (holds every acknowledged commit).",
            labels=["node", "standby"],
        )
        for standby in repl.standbys:
            if standby.lag_bytes is not None:
                lag.add_metric([node, standby.name], standby.lag_bytes)
            sync.add_metric([node, standby.name], float(standby.sync))
        yield lag
        yield sync


def render(collector: Collector) -> bytes:
    return generate_latest(collector)
