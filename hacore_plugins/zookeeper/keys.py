"""Keys as znodes: every key is one child of the namespace znode, its ``/`` escaped.

``members/node-1`` is stored as ``/hacore/<namespace>/members%2Fnode-1``. A flat layout keeps
etcd's key semantics: in a znode tree ``a`` could not be deleted while ``a/b`` exists, and
``a/b`` could not exist without an ``a``.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

_DOT_NAMES = {".": "%2E", "..": "%2E%2E"}


def node_name(key: str) -> str:
    if not key:
        raise ValueError("a key must not be empty")
    return _DOT_NAMES.get(key) or quote(key, safe="")


def key_of(name: str) -> str | None:
    """The key a child of the namespace znode stores, or None for anything else."""
    if not name or "/" in name:
        return None
    return unquote(name)
