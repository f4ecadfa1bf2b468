"""``hacore snapshot create`` on the active and ``hacore snapshot restore`` onto an empty node.

A snapshot holds what a new cluster needs to carry on the old one's work: the database (a
logical dump: it loads into a newer PostgreSQL major, which an upgrade needs), the files of
the ``filesync`` directories, and the cluster-wide settings as the store holds them (what the
old cluster ran with, ``cluster config set`` included): ``cluster start`` on the restored
node seeds the new cluster's store with them, not with its ``node.yaml``'s. Not the
membership, node credentials, certificates or the store: the restored node founds a *new*
cluster with ``cluster start``. See docs/snapshots.md.

Restore works in two halves so that a failure or a crash never leaves a node that cannot be
used:

1. *verify*: the whole file is extracted into ``data_dir/snapshot-restore.tmp`` and checked
   against its manifest, before anything else on the node changes; a refusal removes it.
2. *apply*: ``snapshot-restore.json`` is written with state ``restoring`` first; then the
   database is bootstrapped and loaded (and stopped), the files are moved into place, and the
   marker becomes ``restored``. A second restore (or ``--force``) finding ``restoring`` may
   wipe what the interrupted one made and redo it.

``cluster start`` accepts a node holding a database only with a ``restored`` marker, seeds the
store with the marker's cluster-wide settings, starts that database as the new primary and
consumes the marker; ``cluster join`` still refuses a node with a database, so a restored
node can be started, never joined.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import ssl
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import attrs
import httpx

from hacore.agent import keys
from hacore.agent.errors import StateConflictError
from hacore.agent.tls_paths import ca_cert_file, tls_files
from hacore.api.errors import UnavailableError
from hacore.atomic_files import read_private, write_private
from hacore.cluster.bootstrap_token import local_url
from hacore.cluster.operation_state import Phase, StateFile
from hacore.cluster.parts import LocalParts, local_parts
from hacore.cluster.record import reported_version
from hacore.cluster.snapshot_archive import (
    FORMAT_VERSION,
    HEADER,
    Header,
    Meter,
    SnapshotError,
    SnapshotWriter,
    extract_verified,
    iter_tree,
    read_header,
)
from hacore.config.cluster_settings import ClusterWide, from_mapping, validated_for
from hacore.config.node import NodeConfig, load_config
from hacore.config.write_back import changed_keys, to_mapping
from hacore.errors import ConfigError, HacoreError
from hacore.plugins.factory import BackendFactory
from hacore.plugins.registry import HacorePlugins, load_plugins

MARKER = "snapshot-restore.json"
STAGING = "snapshot-restore.tmp"
SETTINGS = "settings.json"
#: the key of ``settings.json`` (and of the marker) holding the cluster-wide settings record
CLUSTER_WIDE = "cluster_wide"
RESTORING, RESTORED = "restoring", "restored"
_SECRET_WORDS = ("password", "secret", "token", "key")


@runtime_checkable
class DatabaseSnapshots(Protocol):
    """What a replication backend provides for snapshots (the PostgreSQL plugin does)."""

    def server_version(self) -> str:
        """The running server's version, for the manifest."""

    def server_major(self) -> int:
        """The major version of the installed server, without it running."""

    def dump_logical(self) -> Path:
        """Dump the running primary into a directory of the backend's own; returns it."""

    def discard_dump(self) -> None:
        """Remove what :meth:`dump_logical` wrote."""

    def load_logical(self, dump: Path) -> None:
        """Make a new database here from a dump directory (moved, not copied); leave it
        stopped."""

    def adopt_restored(self, replication_password: str) -> None:
        """Start the restored database as the primary of a new cluster with its password."""


def database_snapshots(parts: LocalParts, backend: str) -> DatabaseSnapshots:
    """The backend's snapshot ability: declared (``takes_snapshots``) and implemented."""
    replication = parts.replication
    if not (replication.takes_snapshots and isinstance(replication, DatabaseSnapshots)):
        raise HacoreError(f"the {backend} replication backend cannot take or restore snapshots")
    return replication


# -- what the snapshot says about the cluster --------------------------------------------------


def cluster_settings(config: NodeConfig) -> dict[str, Any]:
    """The settings every member shares, without secrets: kept in the snapshot to compare
    with the restoring node's ``node.yaml`` (and for people reading the file)."""
    data = to_mapping(config)
    kept: dict[str, Any] = {k: data[k] for k in ("timing", "checks", "failover") if k in data}
    kept["cluster"] = {"name": config.cluster.name}
    for key in ("replication", "filesync", "services"):
        if key in data:
            kept[key] = _without_secrets(data[key])
    return kept


def _without_secrets(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {
            k: _without_secrets(v)
            for k, v in value.items()
            if not any(word in str(k).lower() for word in _SECRET_WORDS)
        }
    if isinstance(value, list):
        return [_without_secrets(v) for v in value]
    return value


def stored_cluster_wide(config: NodeConfig, plugins: HacorePlugins) -> ClusterWide | None:
    """The cluster-wide settings in the store: what the agents run with, which differs from
    ``node.yaml`` after a ``cluster config set``. None when the store holds none (a cluster
    started by an older hacore whose active has not seeded them)."""
    factory = BackendFactory(config, plugins, tls_files(config))
    consensus = factory.consensus(factory.managed_store())
    try:
        kv = consensus.get(keys.SETTINGS_KEY)
        return None if kv is None else keys.StoredSettings.decode(kv.value).settings
    except HacoreError as err:
        raise UnavailableError(
            f"the cluster-wide settings cannot be read from the store ({err}): a snapshot "
            "needs them; retry once the store answers"
        ) from None
    finally:
        with contextlib.suppress(HacoreError):
            consensus.close()


def snapshot_cluster_wide(settings: Mapping[str, Any]) -> ClusterWide | None:
    """The cluster-wide settings record of a snapshot's ``settings.json`` (or of the restore
    marker). None for a snapshot of an earlier hacore, which kept ``node.yaml``'s sections
    of its active only, not what the store held: the start then seeds this node's, as
    before. Raises :class:`SnapshotError` when the record is not valid."""
    raw = settings.get(CLUSTER_WIDE)
    if raw is None:
        return None
    try:
        return from_mapping(raw, context="the snapshot's cluster-wide settings")
    except ConfigError as err:
        raise SnapshotError(" ".join(str(err).splitlines())) from None


def restored_cluster_wide(data_dir: Path) -> ClusterWide | None:
    """The cluster-wide settings of the restored snapshot ``cluster start`` seeds the store
    with; None on a node that holds no finished restore, or none with such a record."""
    marker = restored_snapshot(data_dir)
    return None if marker is None else snapshot_cluster_wide(marker)


def _directories(config: NodeConfig) -> tuple[Path, ...]:
    return config.filesync.directories if config.filesync is not None else ()


# -- create ------------------------------------------------------------------------------------


@attrs.frozen
class Loaded:
    config: NodeConfig
    plugins: HacorePlugins


def load_member(config_path: str) -> Loaded:
    """This node's effective configuration (``node.yaml`` and its cluster's overrides); a
    node that belongs to no cluster is refused."""
    plugins = load_plugins()
    base = load_config(config_path, registry=plugins.registry)
    state = StateFile(base.node.data_dir).load()
    if state is None or state.phase is not Phase.MEMBER:
        what = "belongs to no cluster" if state is None else f"is {state.phase.value}"
        raise StateConflictError(
            f"{base.node.name} {what}: a snapshot is taken on the active of a cluster"
        )
    config = load_config(config_path, overrides=state.overrides, registry=plugins.registry)
    return Loaded(config, plugins)


def require_active(config: NodeConfig, auth: tuple[str, str] | None = None) -> None:
    """Refuse unless this node's agent says it is the active (its own ``/status``); ``auth``
    (the CLI profile's) answers a probe that asks for credentials."""
    url = local_url(config)
    verify: Any = True
    if config.tls.enabled:
        url = url.replace("http://", "https://", 1)
        verify = ssl.create_default_context(cafile=str(ca_cert_file(config.node.data_dir)))
    try:
        resp = httpx.get(url + "/status", timeout=10.0, verify=verify)
        if resp.status_code == 401 and auth is not None:
            resp = httpx.get(url + "/status", timeout=10.0, verify=verify, auth=auth)
        body = resp.json() if resp.status_code != 401 else {}
    except (httpx.HTTPError, ValueError, OSError) as err:
        raise UnavailableError(
            f"the agent of {config.node.name} does not answer at {url} ({err}): a snapshot is "
            "taken on the active, with its agent running"
        ) from None
    if resp.status_code == 200 and body.get("active") is True:
        return
    if resp.status_code == 401:
        raise UnavailableError(
            f"{url}/status asks for credentials (status_requires_auth): give a CLI profile of "
            "this cluster (hacore cluster profile create, or $HACORE_PROFILE)"
        )
    leader = body.get("leader")
    where = f"the active is {leader}" if leader else "the cluster has no active now"
    raise StateConflictError(
        f"{config.node.name} is not the active ({body.get('state', 'unknown state')}; {where}): "
        "take the snapshot on the active, so it holds every committed write"
    )


def default_output(config: NodeConfig, now: float | None = None) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    return Path(f"hacore-snapshot-{config.cluster.name}-{stamp}.tar.gz")


def create_snapshot(
    loaded: Loaded,
    output: Path,
    *,
    compress: bool,
    auth: tuple[str, str] | None = None,
    say: Callable[[str], None] | None = None,
    meter_say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write the snapshot of this active node to ``output``; returns what was written."""
    config = loaded.config
    require_active(config, auth)
    output = output.absolute()
    if output.exists():
        raise StateConflictError(f"{output} exists: give another --file, or remove it first")
    if not output.parent.is_dir():
        raise ConfigError(f"{output.parent} is not a directory")
    parts = local_parts(config, loaded.plugins, tls_files(config))
    database = database_snapshots(parts, _replication_backend(config))
    stored = stored_cluster_wide(config, loaded.plugins)
    cluster_wide = stored if stored is not None else ClusterWide.from_config(config)
    header = Header(
        format=FORMAT_VERSION,
        hacore_version=reported_version(),
        postgresql_version=database.server_version(),
        postgresql_major=database.server_major(),
        created_at=time.time(),
        cluster=config.cluster.name,
    )
    if say:
        say(f"dumping the database (PostgreSQL {header.postgresql_version})")
    try:
        dump = database.dump_logical()
        dumped = sorted(p for p in dump.iterdir() if p.is_file())
        files = [
            (i, d, list(iter_tree(d))) for i, d in enumerate(_directories(config)) if d.is_dir()
        ]
        total = sum(p.stat().st_size for p in dumped) + sum(
            p.stat().st_size for _, _, tree in files for p, is_dir in tree if not is_dir
        )
        meter = Meter("snapshot create", total, meter_say)
        writer = SnapshotWriter(output, compress=compress, meter=meter)
        try:
            writer.add_json(HEADER, header.to_json())
            for path in dumped:
                writer.add_file(f"database/{path.name}", path)
            settings = cluster_settings(cluster_wide.apply_to(config))
            settings[CLUSTER_WIDE] = cluster_wide.to_mapping()
            settings["filesync_directories"] = [str(d) for d in _directories(config)]
            writer.add_json(SETTINGS, settings)
            for index, directory, tree in files:
                top = f"files/{index}"
                writer.add_dir(top, directory.stat().st_mode & 0o7777)
                for path, is_dir in tree:
                    name = f"{top}/{path.relative_to(directory).as_posix()}"
                    # a file deleted meanwhile is left out, as if it never was
                    with contextlib.suppress(FileNotFoundError):
                        if is_dir:
                            writer.add_dir(name, path.stat().st_mode & 0o7777)
                        else:
                            writer.add_file(name, path)
            manifest = writer.commit(header)
        except BaseException as err:
            writer.abort()
            if isinstance(err, OSError):
                raise HacoreError(f"cannot write the snapshot {output}: {err}") from None
            raise
        meter.finish()
    finally:
        database.discard_dump()
    return {
        "file": str(output),
        "size": output.stat().st_size,
        "compressed": compress,
        "members": len(manifest.entries),
        "bytes": manifest.total_size,
        "snapshot": header.to_json(),
        "settings_from": "store" if stored is not None else "node.yaml",
    }


def _replication_backend(config: NodeConfig) -> str:
    return config.replication.backend if config.replication is not None else "(none)"


# -- restore -----------------------------------------------------------------------------------


def read_marker(data_dir: Path) -> dict[str, Any] | None:
    text = read_private(Path(data_dir) / MARKER)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return {"state": RESTORING}  # cut short while written: an unfinished restore
    return data if isinstance(data, dict) else {"state": RESTORING}


def restored_snapshot(data_dir: Path) -> dict[str, Any] | None:
    """The marker of a finished restore that ``cluster start`` has not consumed yet."""
    marker = read_marker(data_dir)
    return marker if marker is not None and marker.get("state") == RESTORED else None


def unfinished_restore(data_dir: Path) -> bool:
    """A restore began changing this node and did not finish: only a restore may go on."""
    marker = read_marker(data_dir)
    return marker is not None and marker.get("state") != RESTORED


def consume_marker(data_dir: Path) -> None:
    (Path(data_dir) / MARKER).unlink(missing_ok=True)


def adopt_restored_database(parts_replication: object, data_dir: Path, password: str) -> str:
    """``cluster start``'s database step on a restored node: start it as the primary with the
    new cluster's replication password, then consume the marker. Returns the step's detail."""
    marker = restored_snapshot(data_dir)
    if not isinstance(parts_replication, DatabaseSnapshots):
        raise HacoreError("this replication backend cannot start a restored database")
    parts_replication.adopt_restored(password)
    consume_marker(data_dir)
    header = (marker or {}).get("snapshot") or {}
    return f'restored primary started (snapshot of cluster "{header.get("cluster", "?")}")'


def _has_entries(directory: Path) -> bool:
    return directory.is_dir() and any(directory.iterdir())


def restore_snapshot(
    config_path: str,
    source: Path,
    *,
    force: bool = False,
    say: Callable[[str], None] | None = None,
    meter_say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Restore ``source`` onto this node (empty, in no cluster); see the module."""
    plugins = load_plugins()
    config = load_config(config_path, registry=plugins.registry)
    data_dir = config.node.data_dir
    state = StateFile(data_dir).load()
    if state is not None:
        raise StateConflictError(
            f"{config.node.name} belongs to {state.record.describe()} ({state.phase.value}): "
            "a snapshot is restored onto a node that is in no cluster (a new machine, or one "
            "whose hacore was uninstalled)"
        )
    # no TLS yet: the node's certificate comes with cluster start, which installs it
    parts = local_parts(config, plugins, None)
    database = database_snapshots(parts, _replication_backend(config))
    marker = read_marker(data_dir)
    redo = marker is not None and marker.get("state") == RESTORING
    if marker is not None and not redo and not force:
        raise StateConflictError(
            f"{config.node.name} already holds a restored snapshot ({_described(marker)}): run "
            "hacore cluster start to found the cluster from it, or restore --force to replace it"
        )
    directories = _directories(config)
    in_use = [
        *([parts.not_empty()] if parts.not_empty() else []),
        *(f"{d} holds files" for d in directories if _has_entries(d)),
    ]
    if in_use and not (redo or force):
        raise StateConflictError(
            f"{config.node.name} is not empty: {'; '.join(in_use)}. A snapshot is restored onto "
            "an empty node, as a join needs; restore --force discards what is there"
        )
    header = read_header(source)
    header.refuse_newer(reported_version())
    if header.postgresql_major > database.server_major():
        raise SnapshotError(
            f"the snapshot holds a PostgreSQL {header.postgresql_major} database; this node "
            f"runs PostgreSQL {database.server_major()}: a dump loads into the same or a newer "
            "major only"
        )
    staging = data_dir / STAGING
    _remove(staging)
    data_dir.mkdir(parents=True, exist_ok=True)
    if say:
        say(f"verifying {source} ({header.describe()})")
    try:
        meter = Meter("snapshot verify", source.stat().st_size, meter_say)
        manifest = extract_verified(source, staging, hacore_version=reported_version(), meter=meter)
        meter.finish()
        settings = _settings(staging / SETTINGS)
        sources = [Path(d) for d in settings.get("filesync_directories", [])]
        _check_directories(sources, directories, staging)
        cluster_wide = _fitting(snapshot_cluster_wide(settings), config, plugins)
    except BaseException:
        _remove(staging)
        raise
    write_private(
        data_dir / MARKER,
        json.dumps({"state": RESTORING, "snapshot": header.to_json(), "source": str(source)}),
    )
    if say:
        say("replacing this node's database and files" if in_use else "restoring the database")
    try:
        parts.stop()
        _remove(parts.replication.data_dir)
        if force:
            parts.wipe_store()
        for directory in directories:
            _empty(directory)
        database.load_logical(staging / "database")
        if say:
            say("restoring the files")
        for index, target in enumerate(directories[: len(sources)]):
            prefix = f"files/{index}/"
            _move_tree(staging / "files" / str(index), target, manifest.directories, prefix)
    except OSError as err:
        raise HacoreError(
            f"the restore failed half-way ({err}): fix the cause and run it again, it redoes "
            "the work"
        ) from None
    restored_files = sum(1 for e in manifest.entries if e.name.startswith("files/"))
    differ = changed_keys(
        cluster_settings(config), _without_keys(settings, "filesync_directories", CLUSTER_WIDE)
    )
    from_snapshot = (
        [] if cluster_wide is None else ClusterWide.from_config(config).differences(cluster_wide)
    )
    write_private(
        data_dir / MARKER,
        json.dumps(
            {
                "state": RESTORED,
                "snapshot": header.to_json(),
                "source": str(source),
                "restored_at": time.time(),
                "settings_differ": differ,
                **({} if cluster_wide is None else {CLUSTER_WIDE: cluster_wide.to_mapping()}),
            }
        ),
    )
    _remove(staging)
    return {
        "restored": True,
        "node": config.node.name,
        "snapshot": header.to_json(),
        "files": restored_files,
        "bytes": manifest.total_size,
        "settings_differ": differ,
        "cluster_wide_from_snapshot": from_snapshot,
        "next": "hacore cluster start",
    }


def _fitting(
    settings: ClusterWide | None, config: NodeConfig, plugins: HacorePlugins
) -> ClusterWide | None:
    """``settings`` if this node can run with them (checked as ``config check`` would, with
    every backend's own checks), else a refusal before the restore changes anything."""
    if settings is None:
        return None
    try:
        validated_for(settings, config, plugins.registry)
    except ConfigError as err:
        raise SnapshotError(
            "the snapshot's cluster-wide settings do not fit this node: "
            + " ".join(str(err).splitlines())
        ) from None
    return settings


def _settings(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise SnapshotError(f"the snapshot's {SETTINGS} cannot be read ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("filesync_directories", []), list):
        raise SnapshotError(f"the snapshot's {SETTINGS} is not what hacore writes")
    return data


def _without_keys(data: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in keys}


def _described(marker: Mapping[str, Any]) -> str:
    try:
        return Header.from_json(marker.get("snapshot")).describe()
    except SnapshotError:
        return "unknown snapshot"


def _check_directories(sources: list[Path], ours: tuple[Path, ...], staging: Path) -> None:
    """The snapshot's n-th filesync directory goes to this node's n-th (the same path when
    node.yaml is the same, as on a new machine): there must be one for each that holds
    files."""
    for index, directory in enumerate(sources):
        if index >= len(ours) and _has_entries(staging / "files" / str(index)):
            listed = ", ".join(str(d) for d in ours) or "none"
            raise SnapshotError(
                f"the snapshot holds files of {len(sources)} filesync directories, this node "
                f"mirrors {len(ours)} ({listed}): the files of {directory} would have no place; "
                "list it in node.yaml's filesync.directories first"
            )


def _move_tree(source: Path, target: Path, modes: tuple[tuple[str, int], ...], prefix: str) -> None:
    if not source.is_dir():
        return
    target.mkdir(parents=True, exist_ok=True)
    for entry in sorted(source.iterdir()):
        shutil.move(str(entry), str(target / entry.name))
    for name, mode in modes:
        if name.startswith(prefix):
            with contextlib.suppress(OSError):
                os.chmod(target / name[len(prefix) :], mode)


def _empty(directory: Path) -> None:
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
