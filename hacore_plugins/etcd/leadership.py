"""Moving a managed etcd's raft leadership to another voter, in one round trip.

Two moments need it. Before the store's leader is removed (:func:`hand_over_leadership`):
a removed leader just stops, and the members left elect a new one only after an election
timeout, a pause in which the active's lease renewals fail. And while the node is active
(:func:`move_leadership_off`): when a whole host dies the store must not lose its leader too
(:meth:`~hacore.backends.consensus.ManagedStore.move_leadership_off`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import httpx

from hacore.backends.client_tls import ClientTls
from hacore.errors import HacoreError
from hacore_plugins.etcd.client import EtcdClient, EtcdMember, as_int

log = logging.getLogger(__name__)

#: raft entries an heir of the store's leadership may be behind (renewals add a few a second)
HEIR_LAG = 100


def hand_over_leadership(
    client: EtcdClient,
    leaving: EtcdMember,
    members: Sequence[EtcdMember],
    own_name: str,
    tls: ClientTls | None,
) -> None:
    """Before ``leaving`` is removed, if it leads, move its leadership to a voter that stays
    (this node's own member first). Best effort: the removal goes on without it."""
    try:
        if as_int(client.request("/v3/maintenance/status", {}).get("leader")) != leaving.id:
            return
        heirs = [m for m in members if m.id != leaving.id and not m.is_learner and m.name]
        heir = next((m for m in heirs if m.name == own_name), heirs[0] if heirs else None)
        if heir is None or not leaving.client_urls:
            return
        log.info("moving the store's leadership from %s to %s", leaving.name, heir.name)
        with EtcdClient(list(leaving.client_urls), timeout=5.0, tls=tls) as lead:
            lead.request("/v3/maintenance/transfer-leadership", {"targetID": str(heir.id)})
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            status = client.request("/v3/maintenance/status", {})
            if as_int(status.get("leader")) not in (0, leaving.id):
                return
            time.sleep(0.1)
    except (HacoreError, httpx.HTTPError) as err:
        log.warning("store leadership not moved off %s before its removal: %s", leaving.name, err)


def move_leadership_off(client_url: str, name: str, tls: ClientTls | None) -> str | None:
    """Hand the leadership of the member at ``client_url`` to a voter that follows it and is
    caught up; the heir's name, or None when nothing was moved.

    Only a voter that answers at once, sees this member as its leader and is at most
    :data:`HEIR_LAG` raft entries behind is chosen: while a transfer runs etcd drops new
    proposals (lease renewals among them) until the heir has taken over or an election
    timeout has passed, so a transfer to a slow or cut-off member would cost the active its
    renewals instead of saving them. A store of two voters is left alone: it loses its
    quorum with either host, so there is nothing to gain."""
    try:
        with EtcdClient([client_url], timeout=1.0, tls=tls) as own:
            status = own.request("/v3/maintenance/status", {})
            me = as_int(status.get("header", {}).get("member_id"))
            if not me or as_int(status.get("leader")) != me:
                return None
            index = as_int(status.get("raftIndex"))
            members = own.member_list()
            if sum(1 for m in members if not m.is_learner) < 3:
                return None  # two voters: losing either host loses the store anyway
            heir = _heir(members, me, index, tls)
            if heir is None:
                return None
            own.request("/v3/maintenance/transfer-leadership", {"targetID": str(heir.id)})
    except (HacoreError, httpx.HTTPError) as err:
        log.debug("the store's leadership stays on %s: %s", name, err)
        return None
    return heir.name


def _heir(
    members: Sequence[EtcdMember], me: int, index: int, tls: ClientTls | None
) -> EtcdMember | None:
    for member in sorted(members, key=lambda m: m.name):
        if member.id == me or member.is_learner or not member.client_urls:
            continue
        try:
            with EtcdClient(list(member.client_urls), timeout=0.5, tls=tls) as other:
                status = other.request("/v3/maintenance/status", {})
        except (HacoreError, httpx.HTTPError):
            continue
        if (
            as_int(status.get("leader")) == me
            and index - as_int(status.get("raftIndex")) <= HEIR_LAG
        ):
            return member
    return None
