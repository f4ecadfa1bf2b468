"""Every hook hacore calls, in one place.

Plugins implement these with :data:`hacore.hookimpl`. hacore calls every hook with keyword
arguments only; an implementation may accept any subset of the arguments listed here.
``docs/hooks.md`` documents each of them, and a test fails when one is missing there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from hacore.backends.health import HealthCheck
    from hacore.backends.records import ClusterView, Member, NodeRole
    from hacore.config.node import NodeConfig
    from hacore.plugins.registry import BackendRegistry

hookspec = pluggy.HookspecMarker("hacore")
hookimpl = pluggy.HookimplMarker("hacore")


# -------------------------------------------------------------------------------------------
# Registration: called once, when the plugin manager is built.
# -------------------------------------------------------------------------------------------


@hookspec
def hacore_register_backends(registry: BackendRegistry) -> None:
    """Add this plugin's backend classes to ``registry``.

    Called once for every plugin when the plugin manager is built, before any configuration
    is read. Use ``registry.add_consensus(name, cls)``, ``add_managed_store``,
    ``add_replication``, ``add_filesync``, ``add_services`` or ``add_test_harness``. A name
    already taken by another plugin is an error. Return value is ignored.
    """


# -------------------------------------------------------------------------------------------
# Health: called when the agent starts.
# -------------------------------------------------------------------------------------------


@hookspec
def hacore_health_checks(config: NodeConfig) -> list[HealthCheck]:
    """Return extra health checks for this node.

    Called once when the agent starts, with the node's validated configuration. The agent
    runs the returned checks every loop alongside the built-in ones; a failing check makes
    the node unhealthy (a standby stops being eligible, the active steps down). Return an
    empty list to add nothing.
    """


# -------------------------------------------------------------------------------------------
# Lifecycle: broadcast to every plugin around role transitions, in this order:
#   promote: before_promote -> (fence token, database, files, services) -> after_promote
#   demote:  before_demote  -> (services, files, database) -> after_demote
#   then role_changed; membership_changed whenever the member set changes.
# A raising implementation is logged with its plugin name; it never leaves a node half-done.
# -------------------------------------------------------------------------------------------


@hookspec
def hacore_before_promote(config: NodeConfig, view: ClusterView) -> str | None:
    """Called on a node that won the election, before anything changes locally.

    Return a non-empty string to veto the promotion (the reason is logged): the node
    resigns the lease, stays a standby and backs off so another member may campaign. Return
    None to allow. Fencing scripts (power off the old active) belong here.
    """


@hookspec
def hacore_after_promote(config: NodeConfig, view: ClusterView) -> None:
    """Called once the node is active: database writable, files flipped, services started.

    The place to resume work the failed active left unfinished (interrupted workflows).
    Return value is ignored.
    """


@hookspec
def hacore_before_demote(config: NodeConfig, view: ClusterView, reason: str) -> None:
    """Called on the active before it stops being active (``reason`` says why).

    Runs before active-only services are stopped. Cannot veto: a demotion is forced by the
    loss of leadership or a planned switchover. Return value is ignored.
    """


@hookspec
def hacore_after_demote(config: NodeConfig, view: ClusterView, reason: str) -> None:
    """Called once the node is no longer active: services stopped, database fenced.

    Return value is ignored.
    """


@hookspec
def hacore_role_changed(
    config: NodeConfig, view: ClusterView, old: NodeRole, new: NodeRole
) -> None:
    """Called after every change of this node's role, after the promote/demote hooks.

    Return value is ignored.
    """


@hookspec
def hacore_membership_changed(
    config: NodeConfig,
    view: ClusterView,
    added: tuple[Member, ...],
    removed: tuple[Member, ...],
) -> None:
    """Called on every node when members appear in or vanish from the store.

    ``added`` and ``removed`` hold the member records that changed since the previous loop.
    Return value is ignored.
    """
