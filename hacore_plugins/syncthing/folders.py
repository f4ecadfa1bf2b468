"""The Syncthing configuration hacore wants: its peers as devices, its directories as folders.

Computed from the instance's current configuration, so a change is one ``PUT /rest/config``
and anything hacore does not own (other folders of an instance someone else runs) is kept.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import attrs

from hacore_plugins.syncthing.redial import with_redial

#: the folder type of each role; a node without a role yet sends nothing
SENDONLY = "sendonly"
RECEIVEONLY = "receiveonly"
#: a device address that, with discovery off, is never dialed: the peer dials this node
LISTEN_ONLY = "dynamic"


@attrs.frozen
class Peer:
    name: str
    device_id: str
    address: str
    #: host:port of its seed server (:mod:`.seed`), None: it serves none
    seed: str | None = None


@attrs.frozen
class FolderPolicy:
    watcher_delay: int
    rescan_interval: int


def _folder_device(device_id: str) -> dict[str, Any]:
    return {"deviceID": device_id, "introducedBy": "", "encryptionPassword": ""}


def desired_config(
    current: Mapping[str, Any],
    *,
    own_id: str,
    peers: Mapping[str, Peer],
    folders: Mapping[str, Path],
    new_folder_type: str,
    policy: FolderPolicy,
    managed: bool,
    folder_prefix: str = "hacore-",
    paused: Collection[str] = (),
    redial: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """``current`` with hacore's devices and folders as they should be.

    Devices no longer among the peers are removed (in an instance someone else runs, only
    those hacore shared its folders with). A folder keeps its type: roles change it, not
    membership; a new folder starts as ``new_folder_type``. In the instance hacore runs, only
    one node of each pair dials the other (:func:`dials`). The folders in ``paused`` are
    paused (an empty one waiting for its seed, :mod:`.seed`), every other one runs. ``redial``
    counts the calls made again to each peer this node dials (:mod:`.redial`).
    """
    config = copy.deepcopy(dict(current))
    calls = redial or {}
    defaults = config.get("defaults") or {}
    peer_ids = {peer.device_id: peer for peer in peers.values()}
    ours = {
        entry["deviceID"]
        for folder in config.get("folders", [])
        if folder.get("id") in folders
        for entry in folder.get("devices", [])
    }

    devices: list[dict[str, Any]] = []
    for device in config.get("devices", []):
        device_id = device.get("deviceID")
        if device_id == own_id:
            devices.append(device)
        elif device_id in peer_ids:
            peer = peer_ids.pop(device_id)
            dial = dials(own_id, peer.device_id, managed)
            devices.append(_device(device, peer, dial, calls.get(device_id, 0)))
        elif not managed and device_id not in ours:
            devices.append(device)
    for peer in peer_ids.values():
        base = copy.deepcopy(defaults.get("device") or {})
        dial = dials(own_id, peer.device_id, managed)
        devices.append(_device(base, peer, dial, calls.get(peer.device_id, 0)))
    config["devices"] = devices

    sharing = [_folder_device(own_id)] + [
        _folder_device(p.device_id) for p in sorted(peers.values(), key=lambda p: p.device_id)
    ]
    by_id = {f.get("id"): f for f in config.get("folders", [])}
    kept = [
        f
        for f in config.get("folders", [])
        if not str(f.get("id", "")).startswith(folder_prefix) or f.get("id") in folders
    ]
    result: list[dict[str, Any]] = []
    for folder in kept:
        if folder.get("id") in folders:
            folder = _folder(folder, folder["id"], folders[folder["id"]], sharing, policy)
            folder["paused"] = folder["id"] in paused
        result.append(folder)
    for folder_id, path in folders.items():
        if folder_id not in by_id:
            base = copy.deepcopy(defaults.get("folder") or {})
            base["type"] = new_folder_type
            result.append(_folder(base, folder_id, path, sharing, policy))
            result[-1]["paused"] = folder_id in paused
    config["folders"] = result
    return config


def dials(own_id: str, peer_id: str, managed: bool) -> bool:
    """Whether this node dials ``peer_id``: in the instance hacore runs, only the node with
    the smaller device ID of the two does; the other waits for its call.

    Syncthing 1.19 takes its connections one at a time, the Hello exchange included, with a
    20 s deadline. Two nodes that learn of each other at once dial each other at once, and
    each then waits for the Hello the other is not yet reading: both calls fail after 20 s
    (measured: a joining node's first connection came 21 s after its start). One caller per
    pair cannot cross. The caller redials at once when a connection drops (at most three
    times in two minutes), then every ``reconnectionIntervalS`` (5 s; up to 32 s in its
    first minute, Syncthing's ramp-up), so the pair reconnects whichever side restarts. An
    instance someone else runs may use discovery, where ``dynamic`` means something else:
    both sides dial there, as before.

    The caller may learn of its peer first: its call is refused, and it calls again soon
    (:mod:`.redial`); the other never calls, so no two calls cross.
    """
    return not managed or own_id < peer_id


def _device(base: Mapping[str, Any], peer: Peer, dial: bool, redial: int) -> dict[str, Any]:
    device = dict(base)
    device.update(
        deviceID=peer.device_id,
        name=peer.name,
        addresses=[with_redial(peer.address, redial)] if dial else [LISTEN_ONLY],
        autoAcceptFolders=False,
        introducer=False,
        paused=False,
    )
    return device


def _folder(
    base: Mapping[str, Any],
    folder_id: str,
    path: Path,
    sharing: list[dict[str, Any]],
    policy: FolderPolicy,
) -> dict[str, Any]:
    folder = dict(base)
    folder.update(
        id=folder_id,
        label=folder_id,
        path=str(path),
        devices=copy.deepcopy(sharing),
        fsWatcherEnabled=True,
        fsWatcherDelayS=policy.watcher_delay,
        rescanIntervalS=policy.rescan_interval,
        paused=False,
    )
    return folder
