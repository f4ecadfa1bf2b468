"""What a snapshot keeps of the cluster's settings: the shared ones, never a secret."""

from __future__ import annotations

from pathlib import Path

from hacore.cluster.snapshot import cluster_settings
from hacore.config.node import NodeConfig, load_config
from hacore.config.write_back import changed_keys


def config(tmp_path: Path, **replication: object) -> NodeConfig:
    return load_config(
        {
            "cluster": {"name": "prod"},
            "node": {"name": "n1", "host": "127.0.0.1", "data_dir": str(tmp_path / "data")},
            "consensus": {"backend": "etcd"},
            "replication": {"backend": "postgresql", **replication},
            "filesync": {
                "backend": "rsync",
                "directories": [str(tmp_path / "files")],
                "password": "rsync-secret",
            },
            "timing": {"ttl": 30},
        }
    )


def test_the_settings_keep_no_secret(tmp_path: Path) -> None:
    kept = cluster_settings(config(tmp_path, superuser_password="pg-secret"))
    text = repr(kept)
    assert "pg-secret" not in text and "rsync-secret" not in text
    assert kept["cluster"] == {"name": "prod"}
    assert kept["timing"]["ttl"] == 30
    assert kept["filesync"]["directories"] == [str(tmp_path / "files")]
    assert "node" not in kept and "api" not in kept and "tls" not in kept


def test_differences_name_each_setting_that_differs(tmp_path: Path) -> None:
    ours = cluster_settings(config(tmp_path))
    theirs = cluster_settings(config(tmp_path, synchronous="on"))
    assert changed_keys(ours, ours) == []
    assert changed_keys(ours, theirs) == ["replication.synchronous"]
