"""Running the PostgreSQL binaries, and writing files, as the server's operating-system user.

PostgreSQL refuses to run as root. When hacore is root, every tool runs as ``os_user`` and
every file the server reads is owned by it (0600/0700), so the server can read its own
configuration and nobody else can read the passwords in it.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from hacore.atomic_files import write_atomic
from hacore.errors import ReplicationError


@attrs.frozen
class ServerUser:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str

    @classmethod
    def lookup(cls, name: str) -> ServerUser:
        entry = pwd.getpwnam(name)
        groups = tuple(os.getgrouplist(name, entry.pw_gid))
        return cls(name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)

    @property
    def switch(self) -> bool:
        """hacore must change user to run the tools (it is root, the server is not)."""
        return os.geteuid() != self.uid

    def popen_kwargs(self) -> dict[str, Any]:
        if not self.switch:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": list(self.groups)}

    def can_enter(self, path: Path) -> Path | None:
        """The first directory on the way to ``path`` this user may not traverse, if any."""
        if self.uid == 0:
            return None
        for directory in reversed([path, *path.parents]):
            try:
                st = directory.stat()
            except FileNotFoundError:
                return None
            if st.st_uid == self.uid:
                bit = 0o100
            elif st.st_gid in self.groups:
                bit = 0o010
            else:
                bit = 0o001
            if not st.st_mode & bit:
                return directory
        return None


def _child_env(bin_dir: Path, user: ServerUser) -> dict[str, str]:
    """A clean environment: no PG* variable of hacore's own may steer the tools."""
    env = {
        "PATH": f"{bin_dir}:/usr/local/bin:/usr/bin:/bin",
        "HOME": user.home,
        "USER": user.name,
        "LOGNAME": user.name,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
    }
    if "TZ" in os.environ:
        env["TZ"] = os.environ["TZ"]
    return env


@attrs.frozen
class PgTools:
    bin_dir: Path
    user: ServerUser
    cwd: Path

    def argv(self, tool: str, args: Sequence[str]) -> list[str]:
        return [str(self.bin_dir / tool), *args]

    def run(
        self, tool: str, args: Sequence[str], *, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run a tool to completion; the caller reads ``returncode`` and the output."""
        try:
            return subprocess.run(
                self.argv(tool, args),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                cwd=self.cwd,
                env=_child_env(self.bin_dir, self.user),
                umask=0o077,
                **self.user.popen_kwargs(),
            )
        except subprocess.TimeoutExpired:
            raise ReplicationError(f"{tool} did not finish within {timeout:.0f}s") from None
        except OSError as err:
            raise ReplicationError(f"cannot run {self.bin_dir / tool}: {err}") from None

    def spawn(self, tool: str, args: Sequence[str]) -> subprocess.Popen[str]:
        """Start a long tool with its messages (stderr and stdout together) on a pipe."""
        try:
            return subprocess.Popen(
                self.argv(tool, args),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                bufsize=1,
                # pg_basebackup forks a WAL receiver: the group lets both be stopped together.
                start_new_session=True,
                cwd=self.cwd,
                env=_child_env(self.bin_dir, self.user),
                umask=0o077,
                **self.user.popen_kwargs(),
            )
        except OSError as err:
            raise ReplicationError(f"cannot run {self.bin_dir / tool}: {err}") from None

    def make_dir(self, path: Path, mode: int = 0o700) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.own(path, mode)

    def own(self, path: Path, mode: int) -> None:
        if self.user.switch:
            os.chown(path, self.user.uid, self.user.gid)
        os.chmod(path, mode)

    def write_file(self, path: Path, text: str, mode: int = 0o600) -> None:
        """Replace ``path`` atomically, so the server never reads half a file.

        The temporary file's name is unique: the loop and an off-loop job (a clone) may write
        the same file at once, and a shared name let them interleave into a damaged file.
        """
        write_atomic(path, text, mode, (self.user.uid, self.user.gid) if self.user.switch else None)


def tail(text: str, lines: int = 12) -> str:
    return "\n".join(line for line in text.strip().splitlines()[-lines:])
