"""The systems ``failover.py`` compares (hacore and Patroni at their timings, each in a cluster
shape) and how one of them runs: its own etcd, the cluster, the database filled from a
template and the pgbench load, all stopped whatever happens. ``managed.py`` and
``status_tail.py`` run the same systems."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import _patroni
import _pgbench
import attrs
from _cluster import BenchCluster, prepare_workdir

from hacore_plugins.etcd.testing import EtcdHarness

START_TIMEOUT = 240.0


@attrs.frozen
class Shape:
    """What a cluster holds besides the system: its node count, a database filled by
    ``pgbench -i -s scale`` (0: the benchmark's table only) and whether a pgbench load runs."""

    nodes: int = 3
    scale: int = 0
    load: bool = False

    @property
    def label(self) -> str:
        data = f"scale {self.scale}" if self.scale else "empty"
        return f"{self.nodes} nodes, {data}" + (", pgbench load" if self.load else "")

    def key(self, system: str) -> str:
        """The row's name in the report: the system's own for the reference shape."""
        if self == Shape():
            return system
        return (
            f"{system} {self.nodes}n "
            + (f"s{self.scale}" if self.scale else "empty")
            + ("+pgbench" if self.load else "")
        )


def shapes_asked(node_counts: list[int], scale: int, load: bool) -> list[Shape]:
    """Each node count empty, then (with a scale) filled and loaded: the reference, 3 nodes
    empty, first when it is asked for."""
    found = [Shape(nodes=n) for n in node_counts]
    if scale:
        found += [Shape(nodes=n, scale=scale, load=load) for n in node_counts]
    return sorted(found, key=lambda s: s != Shape())


@attrs.frozen
class System:
    name: str
    description: str
    make: Callable[[str, Path, list[str], int], BenchCluster]
    unavailable: Callable[[], str | None]
    #: the systems whose data directories are alike (same bootstrap, roles and passwords), so
    #: one template serves them all
    family: str
    shape: Shape = Shape()


def patroni_system(name: str, description: str, dcs: dict[str, Any], sync: bool) -> System:
    def make(system: str, workdir: Path, endpoints: list[str], nodes: int) -> BenchCluster:
        return _patroni.PatroniCluster(
            system, workdir, endpoints, dcs=dcs, synchronous=sync, nodes=nodes
        )

    return System(name, description, make, _patroni.unavailable_reason, "patroni")


def hacore_system(name: str, description: str, timing: dict[str, float] | None) -> System:
    def make(system: str, workdir: Path, endpoints: list[str], nodes: int) -> BenchCluster:
        import _hacore_cluster

        return _hacore_cluster.HacoreCluster(system, workdir, endpoints, timing=timing, nodes=nodes)

    def unavailable() -> str | None:
        import _hacore_cluster

        return _hacore_cluster.unavailable_reason()

    return System(name, description, make, unavailable, "hacore")


def systems() -> dict[str, System]:
    tight = _patroni.TIGHTEST
    found = [
        hacore_system("hacore", "hacore at its defaults, synchronous mode on", None),
        hacore_system(
            "hacore-tight",
            "hacore at Patroni's tightest timings, synchronous mode on",
            {**{k: float(v) for k, v in tight.items()}, "safety_margin": 1.5},
        ),
        patroni_system(
            "patroni-defaults", "Patroni at its defaults, asynchronous", _patroni.DEFAULTS, False
        ),
        patroni_system(
            "patroni-tight",
            "Patroni at the tightest timings it accepts, asynchronous",
            tight,
            False,
        ),
        patroni_system(
            "patroni-sync",
            "Patroni at the tightest timings it accepts, synchronous_mode: true",
            tight,
            True,
        ),
    ]
    return {s.name: s for s in found}


@contextlib.contextmanager
def running(
    system: System, root: Path, label: str, keep: bool, templates: Path | None = None
) -> Iterator[BenchCluster]:
    """etcd and the cluster, started in a fresh directory, filled and loaded as its shape
    says; all stopped, whatever happens. A filled cluster of a system that can be seeded
    starts its first active on a copy of the template under ``templates`` (made there first if
    missing) and returns once every standby cloned it; otherwise ``pgbench -i`` runs once per
    cluster, then until every standby replayed it."""
    workdir = prepare_workdir(
        Path(tempfile.mkdtemp(prefix=f"{label.replace(' ', '-')}-", dir=root))
    )
    etcd = EtcdHarness(workdir / "etcd")
    cluster: BenchCluster | None = None
    load: _pgbench.Load | None = None
    shape = system.shape
    try:
        etcd.start()
        endpoints = etcd.settings()["endpoints"]
        cluster = system.make(
            system.name, prepare_workdir(workdir / "nodes"), endpoints, shape.nodes
        )
        made: dict[str, Any] | None = None
        if shape.scale and cluster.seedable and templates is not None:
            cluster.seed, made = _pgbench.template(
                templates,
                system.family,
                shape.scale,
                lambda target: _pgbench.build_template(
                    lambda nodes, store: system.make(system.name, nodes, store, 1),
                    root,
                    shape.scale,
                    target,
                ),
            )
        started = time.monotonic()
        cluster.start()
        if made is not None:
            active = cluster.wait_converged(_pgbench.FILL_TIMEOUT)  # clones of 1 GiB at s70
            made["seeded_s"] = round(time.monotonic() - started, 1)
            cluster.database = _pgbench.seeded(cluster, active, made)
        elif shape.scale:
            active = cluster.wait_converged(START_TIMEOUT)
            cluster.database = _pgbench.initialize(cluster, active, shape.scale)
        if shape.load:
            load = _pgbench.Load(cluster, workdir / "pgbench.log").start()
        yield cluster
    finally:
        try:
            if load is not None:
                load.stop()
            if cluster is not None:
                cluster.stop()
        finally:
            etcd.stop()
            if not keep:
                shutil.rmtree(workdir, ignore_errors=True)
            elif cluster is not None and shape.scale:
                # 2 GiB a node at scale 70: a --keep run of 3, 5 and 7 nodes would fill the disk
                for node in cluster.nodes:
                    shutil.rmtree(cluster.pgdata(node.name), ignore_errors=True)
