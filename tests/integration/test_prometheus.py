"""Issue 13, point 8: ``/metrics`` as a real Prometheus server sees it, through a failover.

A real 3-node cluster (``hacore agent run`` processes, managed etcd, PostgreSQL), formed with
the CLI (:func:`cluster_fixtures.formed_cluster`), scraped every second over HTTPS (the
cluster CA, the credentials of a ``probe`` user, as the load balancer has) by a real
``prometheus`` started on a loopback port with a temporary configuration and storage; a
second job scrapes without credentials and is refused (``up`` 0: issue 10, point 1). A
switchover first (the old active counts a demotion, the new one a promotion and a
``switchover`` failover); then the active host dies
(agent, keeper, PostgreSQL and its store member killed). Prometheus's HTTP API must show what
an operator's alerts and dashboards would: the new active counted a promotion and a failover
for the expired lease, the dead node's ``up`` went to 0, and exactly one node reports itself
active.
``promtool check metrics`` finds nothing to say about any node's ``/metrics``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from cluster_fixtures import WAIT, CliCluster, Node, formed_cluster, kill_tree

from hacore.api.auth import hash_password
from hacore.testing.procs import ServerProcess, free_port, wait_for
from hacore_plugins.postgresql.settings import default_bin_dir

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(default_bin_dir() is None, reason="no PostgreSQL binaries installed"),
]


#: the probe user every node knows (``api.users``): the probe role is enough for /metrics
PROBE = ("scraper", "scraper-password")
USERS = [{"username": PROBE[0], "password_hash": hash_password(PROBE[1], 1000), "role": "probe"}]


@pytest.fixture(scope="module")
def formed() -> Iterator[CliCluster]:
    yield from formed_cluster("etcd", extra={"api": {"users": USERS}})


class Prometheus:
    """A Prometheus server scraping every node's ``/metrics`` each second."""

    def __init__(self, cluster: CliCluster) -> None:
        self.root = cluster.root / "prometheus"
        self.root.mkdir()
        self.port = free_port()
        user, password = PROBE
        password_file = self.root / "password"
        password_file.write_text(password)
        password_file.chmod(0o600)
        first = next(iter(cluster.nodes.values()))
        targets = [
            {"targets": [node.address], "labels": {"member": node.name}}
            for node in cluster.nodes.values()
        ]
        tls = {"ca_file": str(first.ca_file)}
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {
                    "job_name": "hacore",
                    "scheme": "https",
                    "tls_config": tls,
                    "basic_auth": {"username": user, "password_file": str(password_file)},
                    "static_configs": targets,
                },
                # the same without credentials: refused
                {
                    "job_name": "anonymous",
                    "scheme": "https",
                    "tls_config": tls,
                    "static_configs": targets,
                },
            ],
        }
        self.config = self.root / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.proc = ServerProcess(
            "prometheus",
            [
                PROMETHEUS,
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            self.root / "prometheus.log",
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Prometheus:
        self.proc.start()
        wait_for(self.ready, WAIT, interval=0.2, what="Prometheus ready")
        return self

    def ready(self) -> bool:
        try:
            return httpx.get(self.url + "/-/ready", timeout=3).status_code == 200
        except httpx.HTTPError:
            return False

    def query(self, promql: str) -> dict[str, float]:
        """An instant query's vector: the ``member`` label (or ``""``) -> value."""
        resp = httpx.get(self.url + "/api/v1/query", params={"query": promql}, timeout=10)
        resp.raise_for_status()
        data: dict[str, Any] = resp.json()
        assert data["status"] == "success", data
        assert data["data"]["resultType"] == "vector", data
        return {
            row["metric"].get("member", ""): float(row["value"][1])
            for row in data["data"]["result"]
        }

    def stop(self) -> None:
        self.proc.stop()


def check_metrics(cluster: CliCluster, node: Node) -> None:
    """``promtool check metrics`` on the node's ``/metrics``: no problem reported."""
    text = httpx.get(node.url + "/metrics", auth=PROBE, verify=node.ca_context(), timeout=10).text
    assert "hacore_promotions_total" in text and "hacore_failovers_total" in text
    assert "hacore_lease_token" not in text and "version=" not in text
    checked = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0 and not checked.stdout.strip(), (
        f"promtool on {node.name}'s /metrics: {checked.stdout}{checked.stderr}"
    )


def test_prometheus_sees_a_switchover_and_a_failover(formed: CliCluster) -> None:
    first = formed.active()
    for node in formed.nodes.values():
        check_metrics(formed, node)
    prometheus = Prometheus(formed).start()
    try:
        every = {name: 1.0 for name in formed.nodes}
        wait_for(
            lambda: prometheus.query(UP) == every,
            WAIT,
            interval=0.5,
            what=f"Prometheus scraping every node ({prometheus.root / 'prometheus.log'})",
        )
        # a scrape without credentials gets nothing (401): down for Prometheus
        wait_for(
            lambda: prometheus.query('up{job="anonymous"}') == {n: 0.0 for n in formed.nodes},
            WAIT,
            interval=0.5,
            what="the scrape without credentials refused by every node",
        )
        assert prometheus.query('count({job="anonymous", __name__=~"hacore_.*"})') == {}
        alone(prometheus, first)
        # the gauges of issue 13.8: lag in seconds per standby on the active, the store
        # reached lately everywhere, no setting waiting for a restart
        wait_for(
            lambda: (
                prometheus.query("count by (member) (hacore_replication_lag_seconds >= 0)")
                == {first.name: 2.0}
            ),
            WAIT,
            interval=0.5,
            what=f"{first.name} reporting both standbys' lag in seconds",
        )
        assert prometheus.query("hacore_store_contact_age_seconds < 30").keys() == every.keys()
        assert prometheus.query("hacore_db_pending_restart") == {n: 0.0 for n in every}
        # every counter series exists before the first event, so increase() sees that event
        promotions = prometheus.query("hacore_promotions_total")
        demotions = prometheus.query("hacore_demotions_total")
        switched = prometheus.query('hacore_failovers_total{reason="switchover"}')
        assert set(promotions) == set(demotions) == set(switched) == set(formed.nodes)

        # a planned handover: a demotion on the old active, a switchover on the new one
        target = next(n for n in formed.nodes.values() if n is not first)
        formed.cli("cluster", "switchover", "--to", target.name, "--timeout", str(WAIT))
        alone(prometheus, target)
        wait_for(
            lambda: (
                prometheus.query("hacore_demotions_total")[first.name] == demotions[first.name] + 1
            ),
            WAIT,
            interval=0.5,
            what=f"Prometheus seeing {first.name}'s demotion counted",
        )
        assert prometheus.query('hacore_failovers_total{reason="switchover"}') == switched | {
            target.name: switched[target.name] + 1
        }
        assert prometheus.query("hacore_promotions_total")[target.name] == (
            promotions[target.name] + 1
        )

        # the active host dies, once both standbys stream again (either may take over)
        old = target
        survivors = [n for n in formed.nodes.values() if n is not old]
        wait_for(
            lambda: (
                prometheus.query("hacore_standby_streaming == 1")
                == {n.name: 1.0 for n in survivors}
            ),
            WAIT,
            interval=0.5,
            what="both standbys streaming, as Prometheus sees them",
        )
        expired = prometheus.query('hacore_failovers_total{reason="lease_expired"}')
        promotions = prometheus.query("hacore_promotions_total")
        store = old.store_server()
        assert store is not None, f"{old.name}'s store member is not running"
        old.crash()
        kill_tree(store)  # the whole host dies: its store member too

        def new_active() -> str | None:
            active = prometheus.query("hacore_is_active == 1")
            names = [name for name in active if name != old.name]
            return names[0] if len(names) == 1 and len(active) == 1 else None

        new = wait_for(new_active, WAIT, interval=0.5, what="Prometheus seeing a new active")
        assert isinstance(new, str) and new in {n.name for n in survivors}
        assert prometheus.query(UP)[old.name] == 0.0
        wait_for(
            lambda: prometheus.query(UP) == {n.name: 1.0 for n in survivors} | {old.name: 0.0},
            WAIT,
            interval=0.5,
            what="up 1 for the survivors and 0 for the dead node",
        )
        after = prometheus.query('hacore_failovers_total{reason="lease_expired"}')
        assert after == {n.name: expired[n.name] for n in survivors} | {new: expired[new] + 1}
        assert prometheus.query("hacore_promotions_total")[new] == promotions[new] + 1
        # the dead node's series went stale: the role gauges count one active, not two
        assert prometheus.query("sum(hacore_is_active)") == {"": 1.0}
        assert prometheus.query("hacore_is_active == 1") == {new: 1.0}
        # each handover shows as an increase over the window, as an alert would ask it
        increased = prometheus.query("increase(hacore_failovers_total[10m]) > 0")
        assert set(increased) == {target.name, new}, increased
        # no series carries a label whose value follows the active
        leaders = prometheus.query('count({job="hacore", leader!=""})')
        assert leaders == {}, leaders
    finally:
        prometheus.stop()
    for node in survivors:
        check_metrics(formed, node)


#: the authenticated job's ``up`` (the anonymous job's is 0 throughout)
UP = 'up{job="hacore"}'


def alone(prometheus: Prometheus, node: Node) -> None:
    wait_for(
        lambda: prometheus.query("hacore_is_active == 1") == {node.name: 1.0},
        WAIT,
        interval=0.5,
        what=f"Prometheus seeing {node.name} alone active",
    )
