"""``/metrics``: Prometheus text built from the loop's snapshot at scrape time.

A custom collector reads one snapshot per scrape, so the numbers of one scrape are consistent
with each other and nothing is registered in ``prometheus_client``'s global registry (several
agents, or an agent and its tests, can share a process).

Every series carries the ``node`` label and only labels whose values stay put: which node is
the active is a gauge per node (``hacore_is_active``), never a label, so a failover changes
values, not series, and a dashboard's ``sum``/``rate`` spans it. Counters (``_total``) count
from the agent's start (hacore/agent/counters.py) and reset with it, as Prometheus expects.

Nothing here is what the probes hide from the network (docs/security.md, finding 8): no
fencing token and no hacore version, as a scrape's credential is the load balancer's probe
user, and ``api.metrics_without_credentials`` serves it to anyone. The read role finds both
in ``GET /nodes/<name>``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from hacore.agent.counters import Event, EventCounts
from hacore.agent.snapshot import NodeSnapshot
from hacore.agent.vocabulary import NodeState

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

        yield from gauge(
            "hacore_paused",
            "1 while the cluster is in maintenance mode (hacore cluster pause), as this node "
            "last read it.",
            float(snap.paused is not None),
        )
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
        reached = snap.store_reached_at
        yield from gauge(
            "hacore_store_contact_age_seconds",
            "Seconds since the consensus store last answered this node (absent before it "
            "ever did).",
            None if reached is None else max(0.0, now - reached),
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
        yield from _events(node, snap.events)
        yield from _files(node, snap)

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
        yield from gauge(
            "hacore_db_pending_restart",
            "1 when a changed database setting waits for a restart of the server.",
            None if repl.pending_restart is None else float(repl.pending_restart),
        )
        lag = GaugeMetricFamily(
            "hacore_replication_lag_bytes",
            "How far each standby is behind this active, in bytes.",
            labels=["node", "standby"],
        )
        lag_seconds = GaugeMetricFamily(
            "hacore_replication_lag_seconds",
            "How long each standby takes to replay what this active writes, in seconds.",
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
            if standby.lag_seconds is not None:
                lag_seconds.add_metric([node, standby.name], standby.lag_seconds)
            sync.add_metric([node, standby.name], float(standby.sync))
        yield lag
        yield lag_seconds
        yield sync


#: name (without ``_total``), help, label of each event's counter
_COUNTERS: dict[Event, tuple[str, str, str | None]] = {
    Event.PROMOTION: (
        "hacore_promotions",
        "Promotions of this node's database to the writable active that completed.",
        None,
    ),
    Event.FAILOVER: (
        "hacore_failovers",
        "Promotions that took the active role over from another node, by why the old active "
        "let go (switchover, manual_failover, stepped_down, lease_expired).",
        "reason",
    ),
    Event.DEMOTION: (
        "hacore_demotions",
        "Times this node stopped being the active (step-down, fencing, clean shutdown).",
        None,
    ),
    Event.FENCING: (
        "hacore_fencings",
        "Times this node stopped its database outside a planned handover, because its "
        "leadership could no longer be vouched for.",
        None,
    ),
    Event.STORE_ERROR: (
        "hacore_store_errors",
        "Consensus store calls that failed, or were not sent with the self-fencing deadline "
        "too close.",
        None,
    ),
    Event.CHECK_FAILURE: (
        "hacore_check_failures",
        "Runs of a health check that failed or did not answer in time.",
        "check",
    ),
}


def _events(node: str, events: EventCounts) -> Iterator[Metric]:
    for event, (name, doc, label) in _COUNTERS.items():
        family = CounterMetricFamily(
            name, doc, labels=["node"] if label is None else ["node", label]
        )
        if label is None:
            family.add_metric([node], float(events.get(event)))
        else:
            for value, count in events.labelled(event):
                family.add_metric([node, value], float(count))
        yield family


def _files(node: str, snap: NodeSnapshot) -> Iterator[Metric]:
    files = snap.files
    if files is None or not files.folders:
        return
    in_sync = GaugeMetricFamily(
        "hacore_filesync_folder_in_sync",
        "1 when this node's copy of the synchronised directory is complete (on the active: "
        "every mirror's is).",
        labels=["node", "folder"],
    )
    need = GaugeMetricFamily(
        "hacore_filesync_folder_need_bytes",
        "Bytes still to copy for the synchronised directory.",
        labels=["node", "folder"],
    )
    for folder in files.folders:
        in_sync.add_metric([node, folder.name], float(folder.in_sync))
        need.add_metric([node, folder.name], float(folder.need_bytes))
    yield in_sync
    yield need


def render(collector: Collector) -> bytes:
    return generate_latest(collector)
