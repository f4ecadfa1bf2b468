"""Private files of a node and of the CLI: written whole, at mode 0600, or not at all.

They hold secrets (the replication password, the API password, the bootstrap token), so a
reader must never see one half-written or briefly readable by others.
"""

from __future__ import annotations

from pathlib import Path

from hacore.atomic_files import write_atomic
from hacore.errors import HacoreError

PRIVATE = 0o600


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename, the new file already 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomic(path, text, PRIVATE)
    except OSError as err:
        raise HacoreError(f"cannot write {path}: {err.strerror}") from None


def read_private(path: Path) -> str | None:
    """The file's text, None when it does not exist."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise HacoreError(f"cannot read {path}: {err.strerror}") from None
