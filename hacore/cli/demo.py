"""``hacore demo``: the local 3-node demo (or only its consensus store)."""

from __future__ import annotations

import click

from hacore.cli.common import console


@click.command()
@click.option(
    "--backend",
    type=click.Choice(["etcd", "zookeeper"]),
    default="etcd",
    show_default=True,
    help="Consensus store each node runs (a managed store member per node).",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the demo keeps its data and logs (default: a temporary directory, removed).",
)
@click.option(
    "--store-only",
    is_flag=True,
    help="Only the consensus part: a 3-member store and three contenders for the lease.",
)
@click.option(
    "--ttl", type=float, default=3.0, show_default=True, help="Lease TTL of --store-only."
)
def demo(backend: str, workdir: str | None, store_only: bool, ttl: float) -> None:
    """Run the local demo: a 3-node cluster running the sample manager fails over.

    \b
    1. starts an agent service per node (its own store member, PostgreSQL and Syncthing),
    2. hacore cluster start on node1, hacore cluster join for node2 and node3,
    3. shows the sample manager's API and worker running on the active only,
    4. uploads a resource to its API and shows it on both standbys' disks,
    5. writes rows and starts a resumable and a non-resumable workflow,
    6. SIGKILLs everything the active runs (a host death) mid-workflow,
    7. shows the new active, the takeover time, no row lost, the services moved, the
       resumable workflow finishing from the next step and the other one failed,
    8. brings the old node back as a streaming standby with the files written meanwhile,
       then cleans everything up.

    Everything runs on loopback ports in one work directory; it works as root (the database
    then runs as the postgres user) and as a normal user. The sample manager must be
    installed (./scripts/setup does it).

    With --store-only: a managed 3-member store and three contender processes; the
    leader's process and store server are SIGKILLed and another takes over the lease.
    """
    if store_only:
        from hacore.demo.store import run_store_demo

        run_store_demo(backend=backend, workdir=workdir, ttl=ttl, console=console)
        return
    from hacore.demo.cluster import run_cluster_demo

    run_cluster_demo(backend=backend, workdir=workdir, console=console)
