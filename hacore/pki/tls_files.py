"""Writing TLS material to disk so no reader ever sees a half-written or too-open file.

Every file is written to a temporary name in the same directory, created with its final mode
(never briefly world-readable), synced and renamed over the old one. Keys are 0600, certificates
0644, and the directories holding them 0700.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterable
from pathlib import Path

from hacore import atomic_files
from hacore.pki.errors import TlsMaterialError

KEY_MODE = 0o600
CERT_MODE = 0o644
DIR_MODE = 0o700


def private_dir(directory: Path, owner: tuple[int, int] | None = None) -> Path:
    """``directory`` created if missing and closed to everyone but its owner."""
    directory = Path(directory)
    try:
        directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        if owner is not None:
            os.chown(directory, *owner)
        directory.chmod(DIR_MODE)
    except OSError as err:
        raise TlsMaterialError(f"cannot prepare TLS directory {directory}: {err.strerror}") from err
    return directory


def write_atomic(
    path: Path,
    data: bytes,
    mode: int,
    owner: tuple[int, int] | None = None,
    *,
    durable: bool = True,
) -> Path:
    """:func:`hacore.atomic_files.write_atomic`, a failure told as a :class:`TlsMaterialError`."""
    try:
        return atomic_files.write_atomic(path, data, mode, owner, durable=durable)
    except OSError as err:
        raise TlsMaterialError(f"cannot write {path}: {err.strerror}") from err


def mode_for(data: bytes) -> int:
    """0600 for anything holding a private key, 0644 for the rest."""
    return KEY_MODE if b"PRIVATE KEY-----" in data else CERT_MODE


def install_for_user(paths: Iterable[Path], user: str, *, directory: Path) -> tuple[Path, ...]:
    """Copies of ``paths`` in ``directory``, owned by ``user``, for a server that runs as them.

    PostgreSQL refuses a key file that is not its own or is readable by others, and cannot
    enter hacore's 0700 root-owned TLS directory anyway, so it gets its own copies. Keys stay
    0600, certificates 0644; ``directory`` becomes ``user``'s with 0700. Every parent of
    ``directory`` must let ``user`` pass.
    """
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise TlsMaterialError(f"cannot install TLS files for {user!r}: no such user") from None
    owner = (entry.pw_uid, entry.pw_gid)
    target = private_dir(directory, owner)
    installed = []
    for source in paths:
        source = Path(source)
        try:
            data = source.read_bytes()
        except OSError as err:
            raise TlsMaterialError(f"cannot read {source}: {err.strerror}") from err
        installed.append(write_atomic(target / source.name, data, mode_for(data), owner))
    return tuple(installed)
