"""The sample manager as the cluster demo sees it: its REST API, its services, its workflows.

The demo is the manager's client: it uploads resources and starts workflows through the
active node's API (``examples/sample-manager``), reads the services' pid files to show where
they run, and reads the recorded steps back to show that a workflow resumed on the new
active without running a step twice.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

import attrs
import httpx
from rich.markup import escape
from rich.table import Table

from hacore.demo.nodes import SERVICES, DemoNode, read_json, wait
from hacore.errors import HacoreError

#: what the manager's after_promote hook writes on an interrupted, non-resumable workflow
FAILOVER_REASON = "interrupted by failover, not resumable"
STEPS = 10


def check_installed() -> None:
    """The agents load the manager's hook through its entry point: it must be installed."""
    found = metadata.entry_points(group="hacore", name="sample_manager")
    if not found:
        raise HacoreError(
            "the sample manager is not installed in this environment: run ./scripts/setup "
            "(or pip install -e examples/sample-manager)"
        )


@attrs.frozen
class Workflow:
    id: int
    name: str
    resumable: bool
    state: str
    current_step: int
    error: str | None
    #: (step, node) in step order, as the manager recorded them
    steps: tuple[tuple[int, str], ...]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Workflow:
        return cls(
            int(data["id"]),
            str(data["name"]),
            bool(data["resumable"]),
            str(data["state"]),
            int(data["current_step"]),
            data.get("error"),
            tuple((int(s["step"]), str(s["node"])) for s in data.get("steps", [])),
        )

    @property
    def kind(self) -> str:
        return "resumable" if self.resumable else "not resumable"

    def runs(self) -> list[tuple[str, list[int]]]:
        """The steps grouped into consecutive runs on one node: [(node, [1, 2, 3]), ...]."""
        grouped: list[tuple[str, list[int]]] = []
        for step, node in self.steps:
            if grouped and grouped[-1][0] == node:
                grouped[-1][1].append(step)
            else:
                grouped.append((node, [step]))
        return grouped


class ManagerApi:
    """The sample manager's REST API on one node (it only runs on the active)."""

    def __init__(self, node: DemoNode) -> None:
        self.node = node
        self.url = node.manager_url

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2.0, trust_env=False).status_code == 200
        except httpx.HTTPError:
            return False

    def put_resource(self, name: str, data: bytes) -> None:
        answer = httpx.put(
            f"{self.url}/resources/{name}", content=data, timeout=10.0, trust_env=False
        )
        if answer.status_code not in (200, 201):
            raise HacoreError(f"PUT /resources/{name} on {self.node.name}: {answer.text.strip()}")

    def start_workflow(self, name: str, resumable: bool) -> Workflow:
        body = {"name": name, "steps": STEPS, "resumable": resumable}
        answer = httpx.post(f"{self.url}/workflows", json=body, timeout=10.0, trust_env=False)
        if answer.status_code != 201:
            raise HacoreError(f"POST /workflows on {self.node.name}: {answer.text.strip()}")
        return Workflow.from_json(read_json(answer))

    def workflow(self, workflow_id: int) -> Workflow | None:
        """The workflow with its steps; None while the API does not answer."""
        try:
            url = f"{self.url}/workflows/{workflow_id}"
            answer = httpx.get(url, timeout=5.0, trust_env=False)
        except httpx.HTTPError:
            return None
        return Workflow.from_json(read_json(answer)) if answer.status_code == 200 else None


# -- where the services run --------------------------------------------------------------------


def running_services(node: DemoNode) -> dict[str, int]:
    """The node's active-only services that run now, with their pids."""
    found = {service: node.service_pid(service) for service in SERVICES}
    return {service: pid for service, pid in found.items() if pid is not None}


def services_table(nodes: list[DemoNode], roles: dict[str, str]) -> Table:
    table = Table(title=escape("the sample manager's services (active_only: [api, worker])"))
    for column in ("node", "role", "api", "worker"):
        table.add_column(column)
    for node in nodes:
        running = running_services(node)
        api = running.get("api")
        worker = running.get("worker")
        table.add_row(
            node.name,
            roles.get(node.name, "?"),
            f"pid {api}, {node.manager_url}" if api else "-",
            f"pid {worker}" if worker else "-",
        )
    return table


def services_only_on(nodes: list[DemoNode], active: DemoNode) -> bool:
    """Every active-only service runs on ``active`` and none anywhere else."""
    runners = {node.name: sorted(running_services(node)) for node in nodes}
    wanted: dict[str, list[str]] = {node.name: [] for node in nodes}
    wanted[active.name] = sorted(SERVICES)
    return runners == wanted and ManagerApi(active).healthy()


# -- resources on disk -------------------------------------------------------------------------


def wait_file(node: DemoNode, name: str, data: bytes, timeout: float) -> None:
    """Until ``name`` holds ``data`` in the node's resources directory."""
    path: Path = node.resources / name

    def arrived() -> bool:
        try:
            return path.read_bytes() == data
        except OSError:
            return False

    wait(arrived, timeout, f"{name} to reach {node.name}'s disk")


# -- workflows ---------------------------------------------------------------------------------


def steps_text(workflow: Workflow) -> list[str]:
    """One line per consecutive run of steps on one node, e.g. ``node1 ran steps 1 2 3``."""
    return [
        f"  {node} ran step{'s' if len(steps) > 1 else ''} {' '.join(map(str, steps))}"
        for node, steps in workflow.runs()
    ]


def check_resumed(workflow: Workflow, old: str, new: str) -> None:
    """Steps 1..k on the old active, k+1..N on the new one: every step once, none skipped."""
    numbers = [step for step, _ in workflow.steps]
    nodes = [node for node, _ in workflow.runs()]
    if workflow.state != "succeeded" or numbers != list(range(1, STEPS + 1)):
        raise HacoreError(f"workflow {workflow.id}: {workflow.state}, steps {numbers}")
    if nodes != [old, new]:
        raise HacoreError(f"workflow {workflow.id} ran on {nodes}, not on {old} then {new}")


def check_failed(workflow: Workflow, old: str) -> None:
    """Marked failed by the new active's hook; every step it ran, it ran on the old active."""
    numbers = [step for step, _ in workflow.steps]
    if (workflow.state, workflow.error) != ("failed", FAILOVER_REASON):
        raise HacoreError(f"workflow {workflow.id}: {workflow.state} ({workflow.error})")
    nodes = [node for node, _ in workflow.runs()]
    if numbers != list(range(1, workflow.current_step + 1)) or nodes != [old]:
        raise HacoreError(f"workflow {workflow.id}: unexpected steps {workflow.steps}")
