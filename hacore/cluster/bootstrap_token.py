"""How the CLI reaches the agent service on its own node before the node has credentials.

An agent that belongs to no cluster yet has no API password, yet ``cluster start`` and
``cluster join`` must reach it. It therefore makes a random **bootstrap token** at startup and
keeps it in ``data_dir/bootstrap.token`` (0600): only a user who can read the node's data
directory (root, or the agent's own user) can run those two commands against it. The API
accepts the token as HTTP Basic credentials of the user ``hacore-bootstrap``; the file is
deleted once the node belongs to a cluster, from then on the cluster's API credentials apply
(the token only reads, for a minute: :mod:`hacore.cluster.node_credentials`).
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

from hacore.api.auth import hash_password
from hacore.atomic_files import read_private, write_private
from hacore.config.node import DEFAULT_API_PORT, ApiAuth, NodeConfig
from hacore.errors import ConfigError, HacoreError

TOKEN_FILE = "bootstrap.token"
BOOTSTRAP_USER = "hacore-bootstrap"
#: The token is 256 random bits: a slow hash adds nothing, a fast one keeps requests cheap.
_TOKEN_HASH_ITERATIONS = 1000
_ADDRESS = re.compile(
    r"(?:(?P<scheme>https?)://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^:/\[\]]+)(?::(?P<port>\d+))?/?"
)


def token_path(data_dir: Path) -> Path:
    return Path(data_dir) / TOKEN_FILE


def new_token(data_dir: Path) -> tuple[str, ApiAuth]:
    """Write a fresh token; the API credentials that accept it."""
    token = secrets.token_urlsafe(32)
    write_private(token_path(data_dir), token + "\n")
    return token, ApiAuth(BOOTSTRAP_USER, hash_password(token, _TOKEN_HASH_ITERATIONS))


def remove_token(data_dir: Path) -> None:
    token_path(data_dir).unlink(missing_ok=True)


def read_token(data_dir: Path) -> str | None:
    """The token, None when the node has none (it belongs to a cluster, or its agent never
    ran)."""
    try:
        text = read_private(token_path(data_dir))
    except HacoreError as err:
        raise HacoreError(
            f"{err}: run this command as root or as the user the hacore agent runs as"
        ) from None
    return text.strip() if text else None


def local_url(config: NodeConfig) -> str:
    """The URL of this node's agent API, as node.yaml says."""
    return api_url(f"{config.node.host}:{config.node.api_port}")


def api_url(address: str, default_port: int = DEFAULT_API_PORT) -> str:
    """``host``, ``host:port`` or ``http://host:port`` as an API base URL."""
    match = _ADDRESS.fullmatch(address.strip())
    if match is None:
        raise ConfigError(
            f'"{address}" is not a node address: give host, host:port or http://host:port'
        )
    host = match.group("host")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    port = int(match.group("port") or default_port)
    if not 0 < port < 65536:
        raise ConfigError(f'"{address}": port {port} is not a TCP port')
    return f"{match.group('scheme') or 'http'}://{host}:{port}"
