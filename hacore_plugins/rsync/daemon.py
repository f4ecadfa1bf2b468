"""Each node's ``rsync --daemon``: one read-only module per mirrored directory.

Read-only, so a mirror pulling from the wrong node can never write to it; with a password,
only cluster members can read.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Mapping
from pathlib import Path

#: the user name mirrors authenticate as
USER = "hacore"


def port_taken(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            return err.errno == errno.EADDRINUSE
    return False


def write_private(path: Path, text: str) -> None:
    """rsync refuses secrets files others can read; create them 0600 from the start."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    tmp.replace(path)


def config_text(
    *,
    host: str,
    port: int,
    modules: Mapping[str, Path],
    log_file: Path,
    secrets_file: Path | None,
) -> str:
    lines = [
        "# written by hacore; rewritten at every start",
        f"address = {host}",
        f"port = {port}",
        f"log file = {log_file}",
        "use chroot = no",
        # keep the daemon's own user: it must read every file of the directories it serves
        f"uid = {os.getuid()}",
        f"gid = {os.getgid()}",
        "reverse lookup = no",
        # a mirror copies symlinks as they are; munging only guards writable modules
        "munge symlinks = no",
        "",
    ]
    for name, path in modules.items():
        lines += [f"[{name}]", f"    path = {path}", "    read only = yes", "    list = no"]
        if secrets_file is not None:
            lines += [f"    auth users = {USER}", f"    secrets file = {secrets_file}"]
        lines.append("")
    return "\n".join(lines)
