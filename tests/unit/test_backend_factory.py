"""The one backend factory (issue 12 point 4): each family built with the same arguments
whoever asks, TLS handed only to a backend class that declares it takes it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pluggy
import pytest

from hacore.backends.consensus import ConsensusBackend, ManagedStore
from hacore.backends.filesync import FilesyncBackend
from hacore.backends.records import TlsFiles
from hacore.backends.replication import ReplicationBackend
from hacore.cluster.parts import local_parts
from hacore.config.node import NodeConfig, load_config
from hacore.errors import ConfigError
from hacore.plugins.factory import (
    FILESYNC_DIR,
    REPLICATION_DIR,
    STORE_DIR,
    BackendFactory,
    build_backends,
)
from hacore.plugins.registry import BackendRegistry, HacorePlugins

TLS = TlsFiles(Path("/pki/node.pem"), Path("/pki/node.key"), Path("/pki/ca.pem"))


class Recorded:
    """Keeps what the factory handed to the constructor."""

    def __init__(self, settings: Mapping[str, Any], **given: Any) -> None:
        self.settings = dict(settings)
        self.given = given


class Database(Recorded, ReplicationBackend):
    pass


class TlsDatabase(Database):
    accepts_tls: ClassVar[bool] = True


class Store(Recorded, ManagedStore):
    def client_settings(self) -> dict[str, Any]:
        return {"endpoints": ["from-the-server"]}


class TlsStore(Store):
    accepts_tls: ClassVar[bool] = True


class Client(Recorded, ConsensusBackend):
    pass


class TlsClient(Client):
    accepts_tls: ClassVar[bool] = True


class Files(Recorded, FilesyncBackend):
    pass


for cls in (Database, TlsDatabase, Store, TlsStore, Client, TlsClient, Files):
    cls.__abstractmethods__ = frozenset()


def plugins(**families: type[Any]) -> HacorePlugins:
    registry = BackendRegistry()
    registry.add_replication("db", families.get("replication", TlsDatabase))
    registry.add_consensus("kv", families.get("consensus", TlsClient))
    registry.add_managed_store("kv", families.get("managed_store", TlsStore))
    registry.add_filesync("files", families.get("filesync", Files))
    return HacorePlugins(pluggy.PluginManager("hacore"), registry)


def config(tmp_path: Path, *, managed: bool = True, filesync: bool = True) -> NodeConfig:
    raw: dict[str, Any] = {
        "node": {"name": "n1", "host": "10.0.0.1", "data_dir": str(tmp_path)},
        "consensus": {"backend": "kv", "managed": managed, "endpoints": ["external"]},
        "replication": {"backend": "db", "port": 5432},
    }
    if filesync:
        raw["filesync"] = {"backend": "files", "directories": ["/srv/files"]}
    return load_config(raw)


def test_every_family_gets_its_arguments_and_its_data_directory(tmp_path: Path) -> None:
    backends = build_backends(config(tmp_path), plugins(), TLS)
    assert isinstance(backends.replication, TlsDatabase)
    assert backends.replication.given == {
        "tls": TLS,
        "node_name": "n1",
        "host": "10.0.0.1",
        "data_dir": tmp_path / REPLICATION_DIR,
    }
    assert isinstance(backends.managed_store, TlsStore)
    assert backends.managed_store.given["data_dir"] == tmp_path / STORE_DIR
    assert backends.managed_store.given["tls"] == TLS
    # the client of a managed store uses the server's settings and the node's TLS
    assert isinstance(backends.consensus, TlsClient)
    assert backends.consensus.settings == {"endpoints": ["from-the-server"]}
    assert backends.consensus.given["tls"] == TLS
    assert isinstance(backends.filesync, Files)
    assert backends.filesync.given["data_dir"] == tmp_path / FILESYNC_DIR
    assert backends.filesync.given["directories"] == (Path("/srv/files"),)


def test_an_external_store_client_gets_its_own_settings_and_no_cluster_tls(
    tmp_path: Path,
) -> None:
    backends = build_backends(config(tmp_path, managed=False), plugins(), TLS)
    assert backends.managed_store is None
    assert isinstance(backends.consensus, TlsClient)
    assert backends.consensus.settings == {"endpoints": ["external"]}
    assert "tls" not in backends.consensus.given


@pytest.mark.parametrize(
    ("family", "cls", "what"),
    [
        ("replication", Database, "db replication"),
        ("managed_store", Store, "kv store server"),
        ("consensus", Client, "kv client"),
    ],
)
def test_a_required_family_without_tls_is_refused_while_tls_is_on(
    tmp_path: Path, family: str, cls: type[Any], what: str
) -> None:
    with pytest.raises(ConfigError) as err:
        build_backends(config(tmp_path), plugins(**{family: cls}), TLS)
    assert str(err.value).startswith(f"the {what} backend does not support TLS")
    assert "tls.enabled: false" in str(err.value)
    # without TLS the same backend is fine
    build_backends(config(tmp_path), plugins(**{family: cls}), None)


def test_a_file_sync_engine_without_tls_simply_gets_none(tmp_path: Path) -> None:
    backends = build_backends(config(tmp_path), plugins(filesync=Files), TLS)
    assert isinstance(backends.filesync, Files)
    assert "tls" not in backends.filesync.given


def test_no_tls_argument_at_all_when_the_node_runs_without_tls(tmp_path: Path) -> None:
    backends = build_backends(config(tmp_path), plugins(), None)
    assert isinstance(backends.replication, Recorded)
    assert "tls" not in backends.replication.given


def test_local_parts_are_built_as_the_agent_builds_them(tmp_path: Path) -> None:
    cfg = config(tmp_path, filesync=False)
    parts = local_parts(cfg, plugins(), TLS)
    agent = build_backends(cfg, plugins(), TLS)
    assert isinstance(parts.replication, Recorded)
    assert isinstance(agent.replication, Recorded)
    assert parts.replication.given == agent.replication.given
    assert isinstance(parts.store, Recorded)
    assert isinstance(agent.managed_store, Recorded)
    assert parts.store.given == agent.managed_store.given


def test_a_node_without_a_database_is_told_what_is_missing(tmp_path: Path) -> None:
    raw = {
        "node": {"name": "n1", "host": "10.0.0.1", "data_dir": str(tmp_path)},
        "consensus": {"backend": "kv"},
    }
    with pytest.raises(ConfigError, match="no replication section"):
        BackendFactory(load_config(raw), plugins()).replication()
    with pytest.raises(ConfigError, match="no replication section"):
        build_backends(load_config(raw), plugins())
