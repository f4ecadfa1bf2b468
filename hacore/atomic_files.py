"""Replacing a file so that no reader ever sees it half-written or, for a moment, too open.

The one way every layer writes a file another process reads (a configuration, a key, a state
or pid file): the new content goes to a temporary file in the same directory, which is created
with its final mode and owner *before* a byte is written (a secret is never readable by others,
not even between a write and a chmod), synced, and renamed over the target; the directory is
synced last so the rename survives a crash. A failed write leaves the old file as it was and
no temporary file behind.

The temporary name is ``.<name>.<random>.tmp``: unique, so two writers of one file (the agent
loop and an off-loop job) never interleave, and recognisable, so cleanup code can tell one
left by a crash (see ``hacore.cluster.uninstall``).

A leaf: it imports nothing of hacore, so every layer may use it. It raises plain ``OSError``;
each caller says what failed in its own error.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from hacore.errors import HacoreError

#: what ``open()`` asks for, the umask taking its share: the mode when none is given
DEFAULT_MODE = 0o666
_ATTEMPTS = 8


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes | str,
    mode: int | None = None,
    owner: tuple[int, int] | None = None,
    *,
    durable: bool = True,
) -> Path:
    """Replace ``path`` with ``data`` in one rename; returns ``path``.

    ``mode``: the new file's exact permissions, whatever the umask; None gives what
    ``open(path, "w")`` would (0666 less the umask). ``owner``: ``(uid, gid)`` for a file
    another user's server reads (needs root). ``str`` data is written as UTF-8.
    ``durable=False`` skips the fsyncs, for files that mean nothing after a reboot (a pid, a
    monotonic deadline): readers still never see half a file, and a writer on a hot path does
    not wait for the disk.
    """
    target = Path(path)
    body = data.encode() if isinstance(data, str) else data
    fd, tmp = _create(target, DEFAULT_MODE if mode is None else 0o600)
    try:
        try:
            if owner is not None:
                os.fchown(fd, *owner)
            if mode is not None:
                os.fchmod(fd, mode)
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        sync_dir(target.parent)
    return target


def _create(target: Path, mode: int) -> tuple[int, Path]:
    """A new, empty temporary file beside ``target``: ``O_EXCL``, so never someone else's."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    for attempt in range(_ATTEMPTS):
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, mode), tmp
        except FileExistsError:
            if attempt == _ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def sync_dir(directory: str | os.PathLike[str]) -> None:
    """fsync a directory, so the entries renamed or created in it survive a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: Private files of a node and of the CLI hold secrets (the replication password, the API
#: password, the bootstrap token): written whole, at mode 0600, or not at all.
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
