"""Why a Syncthing copy is not in sync, read from Syncthing's own counters.

Syncthing reports a folder "up to date" in states that are not in sync for hacore: a peer that
never sent its index reads as 100% complete, and a receive-only folder may hold local changes.
These functions name each such gap, so the state a node reports says what is missing and where.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import attrs

from hacore_plugins.syncthing.api import SyncthingApi
from hacore_plugins.syncthing.folders import Peer


@attrs.frozen
class Gap:
    """One reason the copy is not in sync: a folder, the peer concerned, what is missing."""

    folder: str
    peer: str
    need_bytes: int
    completion: float
    reason: str

    def describe(self) -> str:
        return f"folder {self.folder}: {self.peer} {self.reason}"


def source_gaps(
    api: SyncthingApi,
    folder: str,
    status: Mapping[str, Any],
    connections: Mapping[str, Any],
    peers: Mapping[str, Peer],
    only: Collection[str] | None,
) -> list[Gap]:
    """On the source: a peer announcing newer versions, and each mirror (or each in
    ``only``) that is not connected, silent, or short of files."""
    gaps: list[Gap] = []
    if status.get("needTotalItems", 0):
        gaps.append(Gap(folder, "this node", 0, 100.0, "has newer versions announced by a peer"))
    for peer in sorted(peers.values(), key=lambda p: p.name):
        if only is not None and peer.name not in only:
            continue
        done = api.completion(folder, peer.device_id)
        need = int(done.get("needBytes", 0))
        completion = float(done.get("completion", 0.0))
        items = int(done.get("needItems", 0)) + int(done.get("needDeletes", 0))
        # A peer that has sent no index yet (sequence 0) reads as 100% complete: it is not.
        silent = int(done.get("sequence", 0)) == 0 and int(done.get("globalItems", 0)) > 0
        if not connections.get(peer.device_id, {}).get("connected"):
            gaps.append(Gap(folder, peer.name, need, completion, "is not connected"))
        elif silent:
            gaps.append(Gap(folder, peer.name, need, 0.0, "has not announced any file of it yet"))
        elif need or items or completion < 100:
            gaps.append(
                Gap(
                    folder,
                    peer.name,
                    need,
                    completion,
                    f"misses {need} bytes in {items} item(s) ({completion:.1f}% done)",
                )
            )
    return gaps


def mirror_gaps(
    api: SyncthingApi,
    folder: str,
    status: Mapping[str, Any],
    connections: Mapping[str, Any],
    peers: Mapping[str, Peer],
    source: str | None,
) -> list[Gap]:
    """On a mirror: not connected to the source, no index from it yet, files missing, or
    local changes still to revert."""
    gaps: list[Gap] = []
    done = api.completion(folder)
    need = int(done.get("needBytes", status.get("needBytes", 0)))
    completion = float(done.get("completion", 0.0))
    items = int(status.get("needTotalItems", 0))
    peer = peers.get(source or "")
    if peer is None or not connections.get(peer.device_id, {}).get("connected"):
        gaps.append(Gap(folder, "this node", 0, completion, f"is not connected to {source}"))
    elif int(api.completion(folder, peer.device_id).get("sequence", 0)) == 0:
        # Nothing announced yet reads as "nothing needed": not in sync (see _mark_source).
        gaps.append(Gap(folder, "this node", 0, 0.0, f"has not received {source}'s index yet"))
    if need or items or completion < 100:
        gaps.append(
            Gap(
                folder,
                "this node",
                need,
                completion,
                f"misses {need} bytes in {items} item(s) ({completion:.1f}% done)",
            )
        )
    changed = int(status.get("receiveOnlyTotalItems", 0))
    if changed:
        gaps.append(
            Gap(folder, "this node", 0, completion, f"has {changed} local change(s) to revert")
        )
    return gaps
