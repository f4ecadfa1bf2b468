"""The systems ``failover.py`` compares (hacore and Patroni at their timings, each in a cluster
shape) and how one of them runs: its own store (etcd; for hacore, ZooKeeper if asked:
:mod:`_stores`), the cluster, the database filled from a template and the pgbench load, all
stopped whatever happens. ``managed.py`` and ``status_tail.py`` run the same systems."""

from __future__ import annotations

import argparse
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
from _stores import ETCD, Store, consensus

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


def shape_args(args: argparse.Namespace, shape: Shape) -> argparse.Namespace:
    """The arguments for one shape: the status load runs on the reference shape only (it
    measures the API server, which neither the node count nor the database changes)."""
    if shape == Shape():
        return args
    scenarios = [s for s in args.scenarios if s != "status"]
    return argparse.Namespace(**{**vars(args), "scenarios": scenarios})


@attrs.frozen
class System:
    name: str
    description: str
    #: (system name, work directory, the ``consensus`` section reaching its store, node count)
    make: Callable[[str, Path, dict[str, Any], int], BenchCluster]
    unavailable: Callable[[], str | None]
    #: the systems whose data directories are alike (same bootstrap, roles and passwords), so
    #: one template serves them all
    family: str
    shape: Shape = Shape()
    store: Store = ETCD


def patroni_system(name: str, description: str, dcs: dict[str, Any], sync: bool) -> System:
    def make(system: str, workdir: Path, store: dict[str, Any], nodes: int) -> BenchCluster:
        return _patroni.PatroniCluster(
            system, workdir, store["endpoints"], dcs=dcs, synchronous=sync, nodes=nodes
        )

    return System(name, description, make, _patroni.unavailable_reason, "patroni")


def hacore_system(
    name: str, description: str, timing: dict[str, Any] | None, store: Store = ETCD
) -> System:
    def make(system: str, workdir: Path, section: dict[str, Any], nodes: int) -> BenchCluster:
        import _hacore_cluster

        # a template's one-node cluster runs on etcd whatever the system's store
        on = store if section["backend"] == store.backend else ETCD
        return _hacore_cluster.HacoreCluster(
            system, workdir, section, timing=timing, nodes=nodes, store=on
        )

    def unavailable() -> str | None:
        import _hacore_cluster

        return _hacore_cluster.unavailable_reason() or store.unavailable()

    if store.backend != "etcd":
        description += f", on a {store.describe()}"
    return System(name, description, make, unavailable, "hacore", store=store)


def systems(profile: str | None = None, store: Store = ETCD) -> dict[str, System]:
    """``hacore`` at ``profile`` (its defaults without one); the hacore systems on ``store``."""
    tight = _patroni.TIGHTEST
    found = [
        hacore_system(
            "hacore",
            f"hacore at timing.profile {profile}, synchronous mode on"
            if profile
            else "hacore at its defaults, synchronous mode on",
            {"profile": profile} if profile else None,
            store,
        ),
        hacore_system(
            "hacore-tight",
            "hacore at Patroni's tightest timings, synchronous mode on",
            {**{k: float(v) for k, v in tight.items()}, "safety_margin": 1.5},
            store,
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
    """The store and the cluster, started in a fresh directory, filled and loaded as its shape
    says; all stopped, whatever happens. A filled cluster of a system that can be seeded
    starts its first active on a copy of the template under ``templates`` (made there first if
    missing) and returns once every standby cloned it; otherwise ``pgbench -i`` runs once per
    cluster, then until every standby replayed it."""
    workdir = prepare_workdir(
        Path(tempfile.mkdtemp(prefix=f"{label.replace(' ', '-')}-", dir=root))
    )
    store = system.store.harness(workdir / system.store.backend)
    cluster: BenchCluster | None = None
    load: _pgbench.Load | None = None
    shape = system.shape
    try:
        store.start()
        cluster = system.make(
            system.name, prepare_workdir(workdir / "nodes"), consensus(store), shape.nodes
        )
        made: dict[str, Any] | None = None
        if shape.scale and cluster.seedable and templates is not None:
            cluster.seed, made = _pgbench.template(
                templates,
                system.family,
                shape.scale,
                # on etcd whatever the store: the template is the database only
                lambda target: _pgbench.build_template(
                    lambda nodes, endpoints: system.make(
                        system.name, nodes, {"backend": "etcd", "endpoints": endpoints}, 1
                    ),
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
            store.stop()
            if not keep:
                shutil.rmtree(workdir, ignore_errors=True)
            elif cluster is not None and shape.scale:
                # 2 GiB a node at scale 70: a --keep run of 3, 5 and 7 nodes would fill the disk
                for node in cluster.nodes:
                    shutil.rmtree(cluster.pgdata(node.name), ignore_errors=True)
