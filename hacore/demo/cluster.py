"""The main demo: a local 3-node cluster running the sample manager, failing over in front of
the user.

Everything a user would type is run as a real ``hacore`` command in a subprocess and shown
with a ``$`` prompt, so the demo is also a walk-through of the CLI. Each node is its own
agent service, managed store member, PostgreSQL server and Syncthing on loopback ports in one
work directory; the active also runs the sample manager (``examples/sample-manager``): its
REST API and its workflow worker. The demo uses the manager as its users would — uploads a
resource, starts workflows — then kills the active host (SIGKILL of everything the node
runs) and shows what survived: files, services, workflows and database rows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from hacore.demo.manager import (
    STEPS,
    ManagerApi,
    Workflow,
    check_failed,
    check_installed,
    check_resumed,
    services_only_on,
    services_table,
    steps_text,
    wait_file,
)
from hacore.demo.nodes import DemoNode, hacore_command, join_trust_arguments, wait
from hacore.errors import HacoreError

NAMES = ("node1", "node2", "node3")
ROWS = 100
BLUEPRINT = b"tosca_definitions_version: demo\nnode_templates: {app: {type: web_server}}\n"
AFTER = b"uploaded to the new active after the failover\n"
#: the step both workflows must have reached when the active host dies
CRASH_AT_STEP = 3


@contextmanager
def _workdir(path: str | None) -> Iterator[Path]:
    if path:
        root = Path(path).resolve()
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o755)
        yield root
        return
    root = Path(tempfile.mkdtemp(prefix="hacore-demo-"))
    # The database runs as the postgres user when hacore runs as root: it must get in.
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


class _Demo:
    def __init__(self, root: Path, backend: str, console: Console) -> None:
        self.root = root
        self.console = console
        self.nodes = [DemoNode(name, root, backend) for name in NAMES]
        self.env = {
            **os.environ,
            "HACORE_PROFILE": str(root / "profile.json"),
            "COLUMNS": str(console.width),
        }
        self.step = 0
        self.started = time.monotonic()

    def rule(self, title: str) -> None:
        self.step += 1
        elapsed = time.monotonic() - self.started
        self.console.rule(f"[bold]{self.step}. {title}[/bold] [dim](at {elapsed:.0f}s)")

    def say(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def run(self, *args: str, check: bool = True) -> str:
        self.console.print(f"[bold cyan]$ hacore {' '.join(args)}[/bold cyan]")
        result = subprocess.run(
            [*hacore_command(), *args], capture_output=True, text=True, env=self.env, timeout=600
        )
        output = (result.stdout + result.stderr).rstrip()
        if output:
            self.console.print(output, markup=False, highlight=False)
        if check and result.returncode != 0:
            raise HacoreError(f"`hacore {' '.join(args)}` failed (exit {result.returncode})")
        return result.stdout

    # -- looking at the cluster ----------------------------------------------------------------

    def active(self, among: list[DemoNode]) -> DemoNode | None:
        return next((node for node in among if node.status() == 200), None)

    def roles(self) -> dict[str, str]:
        found = {}
        for node in self.nodes:
            code = node.status()
            if code == 200:
                found[node.name] = "active"
            elif code is None:
                found[node.name] = "down"
            else:
                found[node.name] = "standby" if node.status("/standby") == 200 else "not ready"
        return found

    def count_rows(self, node: DemoNode) -> int:
        return int(node.sql("SELECT count(*) FROM demo_orders;"))

    def standby_streams(self, node: DemoNode, active: DemoNode) -> bool:
        """The standby's own agent says so (/standby), and the active sees it stream."""
        if node.status("/standby") != 200:
            return False
        rows = active.sql(
            "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming';"
        ).splitlines()
        return any(node.name in row for row in rows)

    def listed_as_standby(self, node: DemoNode) -> bool:
        """The cluster view (what `nodes list` shows) has caught up with the node's state."""
        result = subprocess.run(
            [*hacore_command(), "cluster", "nodes", "list", "--json"],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=60,
        )
        if result.returncode != 0:
            return False
        rows = json.loads(result.stdout)
        rows = rows.get("nodes", rows) if isinstance(rows, dict) else rows
        return any(
            row.get("name") == node.name and row.get("state") == "standby" and row.get("healthy")
            for row in rows
        )

    def show_services(self, active: DemoNode) -> None:
        """Wait until the API and the worker run on the active only, then show where."""
        wait(lambda: services_only_on(self.nodes, active), 90, f"the services on {active.name}")
        self.console.print(services_table(self.nodes, self.roles()))
        self.say(f"api and worker run on {active.name} only")

    def show_file(
        self, name: str, data: bytes, on: list[DemoNode], since: float, event: str
    ) -> None:
        for node in on:
            wait_file(node, name, data, 90)
            took = time.monotonic() - since
            self.say(
                f"{name} is on {node.name}'s disk {took:.1f}s after {event}, identical: "
                f"{node.resources / name}"
            )

    # -- the story -----------------------------------------------------------------------------

    def form(self) -> None:
        self.rule("three nodes, each with its agent service")
        for node in self.nodes:
            node.write_config()
            node.spawn_service(self.env)
        for node in self.nodes:
            node.wait_service()
            self.say(
                f"{node.name}: agent API {node.address}, PostgreSQL port {node.pg_port}, "
                f"Syncthing API port {node.sync_ports[0]}, sample manager API "
                f"{node.manager_url} (while active), config {node.config_path}"
            )
        first, *others = self.nodes
        self.rule("found the cluster on node1")
        self.run("cluster", "start", "-c", str(first.config_path))
        self.rule("node2 and node3 join (store member, clone of the database, file mirror)")
        trust = join_trust_arguments(first)
        for node in others:
            self.run(*node.join_arguments(first), *trust)
        self.run("cluster", "nodes", "list")

    def use_the_manager(self) -> tuple[DemoNode, list[Workflow]]:
        active = wait(lambda: self.active(self.nodes), 60, "an active node")
        standbys = [node for node in self.nodes if node is not active]
        api = ManagerApi(active)
        self.rule(f"the sample manager runs on the active, {active.name}")
        self.show_services(active)

        self.rule(f"files: upload a resource to the manager on {active.name}")
        self.say(f"PUT {api.url}/resources/blueprint.yaml")
        uploaded = time.monotonic()
        api.put_resource("blueprint.yaml", BLUEPRINT)
        self.show_file("blueprint.yaml", BLUEPRINT, standbys, uploaded, "the upload")

        self.rule(f"database: write {ROWS} rows on {active.name}")
        active.sql(
            "CREATE TABLE demo_orders (id serial PRIMARY KEY, item text);\n"
            + "".join(
                f"INSERT INTO demo_orders (item) VALUES ('order {i}');\n" for i in range(ROWS)
            )
        )
        self.say(
            f"{self.count_rows(active)} rows on {active.name}; with failover.synchronous_mode "
            "on, a commit returns once a synchronous standby has it too"
        )

        self.rule(f"workflows: start two {STEPS}-step workflows on {active.name}")
        started = [
            api.start_workflow("install-app", resumable=True),
            api.start_workflow("nightly-backup", resumable=False),
        ]
        for workflow in started:
            self.say(
                f"POST {api.url}/workflows -> workflow {workflow.id} {workflow.name} "
                f"({workflow.kind})"
            )

        def reached() -> list[Workflow] | None:
            now = [api.workflow(w.id) for w in started]
            if all(w is not None and w.current_step >= CRASH_AT_STEP for w in now):
                return [w for w in now if w is not None]
            return None

        running = wait(reached, 60, f"both workflows to reach step {CRASH_AT_STEP}")
        for workflow in running:
            self.say(
                f"workflow {workflow.id} {workflow.name}: {workflow.state} on {active.name}, "
                f"{workflow.current_step} of {STEPS} steps done so far"
            )
        return active, started

    def failover(self, active: DemoNode, started: list[Workflow]) -> None:
        survivors = [node for node in self.nodes if node is not active]
        self.rule(f"{active.name}'s host dies mid-workflow")
        crashed_at = time.monotonic()
        killed = active.crash()
        self.say("SIGKILL: " + ", ".join(f"{what} (pid {pid})" for what, pid in killed.items()))
        successor = wait(lambda: self.active(survivors), 120, "a standby to take over")
        took = time.monotonic() - crashed_at
        self.console.print(
            f"[bold green]{successor.name} is active[/bold green]: its /status answered 200 "
            f"{took:.1f}s after the crash (the lease TTL is 5s; when the crashed node's store "
            "server led the store, the store elects a new leader first)",
            highlight=False,
        )
        self.run("cluster", "nodes", "list")
        rows = self.count_rows(successor)
        self.say(f"{rows} of {ROWS} rows on {successor.name}: nothing lost")
        if rows != ROWS:
            raise HacoreError(f"{ROWS - rows} acknowledged rows are missing after the failover")
        successor.sql("INSERT INTO demo_orders (item) VALUES ('written after the failover');")
        self.after_the_failover(active, successor, started)
        self.rejoin(active, successor)

    def after_the_failover(
        self, old: DemoNode, successor: DemoNode, started: list[Workflow]
    ) -> None:
        self.rule(f"services: the sample manager moved to {successor.name}")
        self.show_services(successor)
        self.say(f"its API is now {successor.manager_url} (a load balancer follows /status)")

        self.rule("workflows: what the crash interrupted")
        self.show_workflows(ManagerApi(successor), started, old.name, successor.name)

        self.rule(f"files: upload a resource to the manager on {successor.name}")
        api = ManagerApi(successor)
        self.say(f"PUT {api.url}/resources/after-failover.txt")
        uploaded = time.monotonic()
        api.put_resource("after-failover.txt", AFTER)
        standby = [node for node in self.nodes if node not in (old, successor)]
        self.show_file("after-failover.txt", AFTER, standby, uploaded, "the upload")

    def rejoin(self, active: DemoNode, successor: DemoNode) -> None:
        self.rule(f"{active.name} comes back and rejoins as a standby")
        back = time.monotonic()
        active.start_service(self.env)
        wait(lambda: self.standby_streams(active, successor), 180, f"{active.name} to stream")
        wait(lambda: self.listed_as_standby(active), 60, f"{active.name}'s record to say so")
        self.say(f"{active.name} streams from {successor.name} again")
        self.show_file("after-failover.txt", AFTER, [active], back, "its agent started")
        self.show_services(successor)
        self.run("cluster", "nodes", "list")

    def show_workflows(self, api: ManagerApi, started: list[Workflow], old: str, new: str) -> None:
        resumable, fragile = started

        def settled() -> tuple[Workflow, Workflow] | None:
            done, failed = api.workflow(resumable.id), api.workflow(fragile.id)
            if done is None or failed is None:
                return None
            return (
                (done, failed) if done.state == "succeeded" and failed.state == "failed" else None
            )

        done, failed = wait(settled, 120, "the workflows to settle on the new active")
        check_resumed(done, old, new)
        check_failed(failed, old)
        last_old = done.runs()[0][1][-1]
        self.console.print(
            f"[bold green]workflow {done.id} {done.name} ({done.kind}): succeeded on {new}"
            f"[/bold green] - {new}'s worker carried on at step {last_old + 1}; each step "
            f"ran once",
            highlight=False,
        )
        for line in steps_text(done):
            self.say(line)
        self.console.print(
            f"[bold yellow]workflow {failed.id} {failed.name} ({failed.kind}): failed: "
            f"{failed.error}[/bold yellow]",
            highlight=False,
        )
        for line in steps_text(failed):
            self.say(line)

    def cleanup(self) -> None:
        self.rule("clean up")
        for node in self.nodes:  # all at once: each agent takes seconds to stop what it runs
            node.stop_service()
        for node in self.nodes:
            node.cleanup()
        self.say(
            f"stopped every agent, database, store server, Syncthing and service in {self.root}"
        )


def run_cluster_demo(*, backend: str, workdir: str | None, console: Console) -> None:
    check_installed()
    with _workdir(workdir) as root:
        console.rule(
            f"[bold]hacore demo[/bold] - 3 nodes running the sample manager, {backend} store, "
            f"in {root}"
        )
        demo = _Demo(root, backend, console)
        try:
            demo.form()
            active, started = demo.use_the_manager()
            demo.failover(active, started)
        except BaseException:
            console.print(f"[red]the demo failed; node logs are in {root}/*.log[/red]")
            if workdir is None:
                for log in sorted(root.glob("*.log")):
                    tail = log.read_text(errors="replace").splitlines()[-15:]
                    console.print(f"--- {log.name}", markup=False)
                    console.print("\n".join(tail), markup=False, highlight=False)
            raise
        finally:
            demo.cleanup()
