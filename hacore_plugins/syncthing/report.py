"""A node's :class:`SyncState` out of its gaps (:mod:`.gaps`) and Syncthing's statistics."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from hacore.backends.filesync import FolderSync, SyncState
from hacore_plugins.syncthing.api import SyncthingApi, timestamp
from hacore_plugins.syncthing.gaps import Gap


def last_change(api: SyncthingApi, folders: Iterable[str], source: bool) -> float | None:
    """Mirror: when the last file arrived; source: when its folders were last scanned."""
    stats = api.folder_stats()
    times = []
    for folder in folders:
        entry = stats.get(folder) or {}
        if source:
            times.append(timestamp(entry.get("lastScan")))
        else:
            times.append(timestamp((entry.get("lastFile") or {}).get("at")))
    known = [t for t in times if t is not None]
    return max(known) if known else None


def sync_state(
    gaps: Sequence[Gap], folders: Iterable[str], changed: float | None, what: str
) -> SyncState:
    """In sync with ``what`` (the source, or the mirrors) when there is no gap; else how
    far, the first three gaps named."""
    per_folder = tuple(
        FolderSync(
            f,
            not any(g.folder == f for g in gaps),
            sum(g.need_bytes for g in gaps if g.folder == f),
        )
        for f in folders
    )
    if not gaps:
        return SyncState(
            in_sync=True, last_change=changed, detail=f"in sync with {what}", folders=per_folder
        )
    return SyncState(
        in_sync=False,
        completion=min(g.completion for g in gaps),
        need_bytes=sum(g.need_bytes for g in gaps),
        last_change=changed,
        detail="; ".join(g.describe() for g in gaps[:3])
        + (f"; and {len(gaps) - 3} more" if len(gaps) > 3 else ""),
        folders=per_folder,
    )
