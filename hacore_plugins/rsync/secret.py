"""The cluster's rsync secret: made by the founding node, handed to joiners in the join ticket.

Every module of every node's daemon wants it, so a host that can reach the port but is no
member reads nothing. It lives in ``<data_dir>/filesync/rsync/secret`` (0600, in a 0700
directory); a ``password`` setting, when given, takes its place on every node until a
removal rotates the secret. From then on the rotated secret wins over the setting (the
marker file ``rotated`` says so): the removed node knew the setting's value, so a node that
went back to it after a restart would let the removed node in again.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hacore.api.errors import UnavailableError
from hacore.atomic_files import write_atomic
from hacore.cluster.ticket import JoinRequest, register_ticket_part
from hacore.config.node import NodeConfig
from hacore.errors import FilesyncError, HacoreError
from hacore.pki.errors import TlsMaterialError
from hacore.pki.tls_files import private_dir
from hacore.plugins.factory import FILESYNC_DIR

log = logging.getLogger(__name__)

BACKEND = "rsync"
HOME = "rsync"
SECRET_FILE = "secret"
#: present once the cluster's secret replaced the ``password`` setting (a removal rotated it)
ROTATED_FILE = "rotated"
#: the ticket part's name
PART = "rsync"


def home_of(node_data_dir: Path) -> Path:
    """The plugin's directory for a node, as the agent lays the backends out."""
    return Path(node_data_dir) / FILESYNC_DIR / HOME


def prepare_home(home: Path) -> Path:
    """``home``, created if missing and closed to every other user (it holds the secret)."""
    try:
        return private_dir(home)
    except TlsMaterialError as err:
        raise FilesyncError(str(err)) from None


def read_secret(home: Path) -> str | None:
    try:
        text = (home / SECRET_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise FilesyncError(f"cannot read the rsync secret {home / SECRET_FILE}: {err}") from None
    return text or None


def store_secret(home: Path, secret: str) -> None:
    if not secret or any(c in secret for c in "\r\n\0"):
        raise FilesyncError("the rsync secret must be one non-empty line")
    prepare_home(home)
    try:
        write_atomic(home / SECRET_FILE, f"{secret}\n", 0o600)
    except OSError as err:
        raise FilesyncError(f"cannot write {home / SECRET_FILE}: {err.strerror}") from None


def mark_rotated(home: Path) -> None:
    """The secret in ``home`` wins over the ``password`` setting from now on."""
    prepare_home(home)
    try:
        write_atomic(home / ROTATED_FILE, "the rsync secret replaces filesync.password\n", 0o600)
    except OSError as err:
        raise FilesyncError(f"cannot write {home / ROTATED_FILE}: {err.strerror}") from None


def is_rotated(home: Path) -> bool:
    return (home / ROTATED_FILE).is_file()


def current_secret(home: Path, configured: str | None) -> str | None:
    """The secret this node's daemon and pulls use: the rotated one once a removal rotated
    it, else the ``password`` setting, else the one in ``home`` (None: none yet)."""
    stored = read_secret(home)
    if stored is not None and (configured is None or is_rotated(home)):
        return stored
    return configured


def ensure_secret(home: Path) -> str:
    """The secret in ``home``; the founding node makes it at its first start."""
    found = read_secret(home)
    if found is not None:
        return found
    made = secrets.token_urlsafe(32)
    store_secret(home, made)
    log.info("rsync: made this cluster's rsync secret")
    return made


def _uses_rsync(config: NodeConfig) -> bool:
    return config.filesync is not None and config.filesync.backend == BACKEND


class RsyncSecretPart:
    """The join ticket's ``rsync`` part: the cluster's rsync secret, for a joiner that
    mirrors files with rsync. It travels only inside the ticket (an authenticated answer, over
    TLS pinned to the cluster CA when the cluster runs with TLS)."""

    name = PART

    def request(self, config: NodeConfig) -> dict[str, Any]:
        return {"wanted": _uses_rsync(config)}

    def grant(self, config: NodeConfig, request: JoinRequest) -> dict[str, Any]:
        asked = request.extensions.get(PART)
        if not (isinstance(asked, Mapping) and asked.get("wanted") is True):
            return {}
        if not _uses_rsync(config):
            return {}
        assert config.filesync is not None
        configured = config.filesync.settings.get("password")
        try:
            secret = current_secret(
                home_of(config.node.data_dir), str(configured) if configured else None
            )
        except FilesyncError as err:
            raise UnavailableError(f"cannot hand over the rsync secret: {err}") from None
        if secret is None:
            raise UnavailableError(
                "this node has no rsync secret yet (its file sync never started): "
                "retry once the active's agent runs"
            )
        return {"secret": secret}

    def accept(self, config: NodeConfig, granted: Mapping[str, Any]) -> None:
        if not _uses_rsync(config):
            return
        secret = granted.get("secret")
        if not isinstance(secret, str) or not secret:
            raise HacoreError(
                "the join ticket carries no rsync secret: the active does not run the rsync "
                "file sync (every node must use the same filesync backend) or runs an older hacore"
            )
        home = home_of(config.node.data_dir)
        store_secret(home, secret)
        configured = config.filesync.settings.get("password") if config.filesync else None
        if configured and configured != secret:
            # the cluster's secret moved on (a removal): node.yaml's is the old one
            mark_rotated(home)
            log.warning(
                "rsync: the cluster's secret replaces filesync.password from node.yaml (a "
                "removal rotated it); remove the setting from node.yaml"
            )


register_ticket_part(RsyncSecretPart())
