"""The node API's credentials across the end of a start or join
(hacore/cluster/node_credentials.py): at every moment the token or the cluster's credentials
open the API, and after the operation the token only reads, for a while, from memory."""

from __future__ import annotations

from pathlib import Path

from hacore.api.auth import hash_password, verify_password
from hacore.cluster.bootstrap_token import BOOTSTRAP_USER, read_token, token_path
from hacore.cluster.node_credentials import READ_GRACE, NodeCredentials
from hacore.config.node import NodeConfig, load_config

ADMIN_HASH = hash_password("the-admin-password", 1000)


def _member_config(tmp_path: Path) -> NodeConfig:
    return load_config(
        {
            "node": {"name": "n1", "host": "127.0.0.1", "data_dir": str(tmp_path)},
            "consensus": {"backend": "etcd"},
            "api": {"auth": {"username": "admin", "password_hash": ADMIN_HASH}},
        }
    )


def test_the_token_reads_for_a_grace_after_the_operation_then_opens_nothing(
    tmp_path: Path,
) -> None:
    now = [100.0]
    credentials = NodeCredentials(tmp_path, clock=lambda: now[0])
    config = _member_config(tmp_path)
    credentials.issue_token()
    token = read_token(tmp_path)
    assert token is not None
    during = credentials.settings(True, config)
    assert during.auth is not None and during.auth.username == BOOTSTRAP_USER
    assert verify_password(token, during.auth.password_hash) and not during.users

    credentials.operation_done(config, None)
    assert not token_path(tmp_path).exists()
    after = credentials.settings(False, config)
    assert after.auth == config.api.auth  # the cluster's admin from the same moment
    (reader,) = after.users
    assert reader.username == BOOTSTRAP_USER and reader.role == "read"
    assert verify_password(token, reader.password_hash)

    now[0] += READ_GRACE - 1
    assert not credentials.retire_due()
    now[0] += 1
    assert credentials.retire_due()
    assert credentials.settings(False, config) == config.api
    assert not credentials.retire_due()


def test_a_member_that_never_ran_an_operation_takes_the_cluster_s_credentials_only(
    tmp_path: Path,
) -> None:
    config = _member_config(tmp_path)
    credentials = NodeCredentials(tmp_path)
    assert credentials.settings(False, config) == config.api
    assert not credentials.retire_due()
