"""This node's member record in the store, as the loop publishes it each iteration.

The others read it to decide (position, health, candidacy) and to reach this node (its
database and file sync addresses); it is signed with the node's certificate where the cluster
runs with TLS, so a forged record opens nothing (hacore/pki/record_identity.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from hacore import __version__
from hacore.agent import tls_paths
from hacore.agent.checks import CheckRunner, FilesInSync
from hacore.agent.decide import campaign_blocker
from hacore.agent.jobs import Jobs
from hacore.agent.membership import Membership
from hacore.agent.minority import MinorityEdge
from hacore.agent.supervise import ServerStatus, Supervisor
from hacore.agent.vocabulary import DecisionConfig, Observation
from hacore.backends.filesync import SyncState
from hacore.backends.health import CheckResult
from hacore.backends.records import Member, NodeRole
from hacore.config.node import NodeConfig
from hacore.errors import HacoreError
from hacore.pki import record_identity

log = logging.getLogger(__name__)


def member_record(
    config: NodeConfig,
    role: NodeRole,
    obs: Observation,
    *,
    candidate: bool,
    api_url: str,
    address: tuple[str, int] | None,
    files: dict[str, Any] | None,
    checks: Mapping[str, CheckResult],
    files_state: SyncState | None = None,
    servers: Sequence[ServerStatus] = (),
) -> Member:
    """This node's record in the store: whether it campaigns, and in ``extra`` where others
    reach its database and files."""
    extra: dict[str, Any] = {}
    if address is not None:
        extra["replication"] = {"host": address[0], "port": address[1]}
    if files is not None:
        extra["filesync"] = files
    if files_state is not None:
        extra["files"] = {
            "in_sync": files_state.in_sync,
            "completion": files_state.completion,
            "need_bytes": files_state.need_bytes,
            "last_change": files_state.last_change,
            "detail": files_state.detail,
        }
    supervised = [s.to_json() for s in servers if s.up is not None]
    if supervised:
        extra["servers"] = supervised
    files_tls = tls_paths.tls_files(config)
    if files_tls is not None and files_tls.cert_file.exists():
        try:
            node = record_identity.node_material(files_tls.cert_file.parent)
            extra[record_identity.IDENTITY] = record_identity.sign(
                node.certificate, node.key, config.node.name, config.node.host, api_url, extra
            )
        except HacoreError as err:
            log.warning("the member record goes out unsigned: %s", err)
    return Member(
        name=config.node.name,
        api_url=api_url,
        host=config.node.host,
        role=role,
        healthy=obs.health.ok,
        position=obs.db.position,
        timeline=obs.db.timeline,
        version=__version__,
        checks={n: {"ok": r.ok, "detail": r.detail} for n, r in checks.items()},
        extra=extra,
        candidate=candidate,
    )


class MemberRecords:
    """Builds this node's record from what the loop's collaborators know right now: the
    loop publishes it every iteration, the executor once more with a step-down's final
    position."""

    def __init__(
        self,
        config: NodeConfig,
        dcfg: DecisionConfig,
        *,
        api_url: str,
        address: tuple[str, int] | None,
        checks: CheckRunner,
        files_check: FilesInSync | None,
        membership: Membership,
        supervisor: Supervisor,
        minority: MinorityEdge,
        jobs: Jobs,
    ) -> None:
        self.config = config
        self.dcfg = dcfg
        self.api_url = api_url
        self.address = address
        self.checks = checks
        self.files_check = files_check
        self.membership = membership
        self.supervisor = supervisor
        self.minority = minority
        self.jobs = jobs

    def record(self, role: NodeRole, obs: Observation) -> Member:
        member = member_record(
            self.config,
            role,
            obs,
            candidate=campaign_blocker(obs, self.dcfg) is None,
            api_url=self.api_url,
            address=self.address,
            files=self.membership.files_identity(),
            checks=self.checks.results,
            files_state=self.files_check.last if self.files_check else None,
            servers=self.supervisor.status(),
        )
        if obs.pause is not None:
            # ``cluster pause --wait`` waits until every member says so
            member = attrs.evolve(member, extra={**member.extra, "paused": True})
        if obs.db.pending_restart:
            # a cluster-wide PostgreSQL parameter waits for a restart (``nodes list``)
            member = attrs.evolve(member, extra={**member.extra, "pending_restart": True})
        minority = self.minority_json()
        if minority is None:
            return member
        return attrs.evolve(member, extra={**member.extra, "minority": minority})

    def minority_json(self) -> dict[str, Any] | None:
        return self.minority.json(time.monotonic(), job_error=self.jobs.last_error)
