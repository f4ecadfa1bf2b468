"""Health checks: small probes whose results decide whether a node may be (or stay) active."""

from __future__ import annotations

import abc

import attrs


@attrs.frozen
class CheckResult:
    ok: bool
    detail: str = ""


class HealthCheck(abc.ABC):
    """A probe run by the agent every loop.

    ``ttl`` is how long a passing result stays valid (scaled by ``check_ttl_multiplier``);
    a check that has not passed within its TTL counts as failed. ``active_only`` checks run
    only on the active node (for example "active-only services are up"). A check with
    ``gating = False`` is reported only (checks, ``nodes list``, metrics): its failure never
    makes a node ineligible nor an active step down, for conditions that degrade the cluster
    without making this node a worse active (a dead local store member while the store keeps
    its quorum).
    """

    name: str = ""
    ttl: float = 10.0
    active_only: bool = False
    gating: bool = True

    @abc.abstractmethod
    def run(self) -> CheckResult:
        """Probe once; must not block longer than a few seconds."""
