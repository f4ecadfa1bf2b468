"""The file sync benchmark's data: random files written atomically, a generated tree with its
manifest, its verification, and the plain rsync copies the plugins are compared with."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import attrs

from hacore.testing.procs import ServerProcess, free_port, wait_for

CHUNK = 4 * 1024 * 1024
#: what an engine keeps in a synced directory besides the files (Syncthing's folder marker)
ENGINE_FILES = frozenset({".stfolder", ".hacore-source"})


@attrs.frozen
class Entry:
    size: int
    sha256: str


def random_file(path: Path, size: int) -> Entry:
    """Write ``size`` random bytes (incompressible, no block shared with another file, so no
    engine can copy instead of transfer); return its size and hash."""
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        left = size
        while left > 0:
            block = os.urandom(min(CHUNK, left))
            digest.update(block)
            out.write(block)
            left -= len(block)
    return Entry(size, digest.hexdigest())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while block := src.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def tree_sizes(total: int, count: int, rng: random.Random) -> list[int]:
    """A mix like a manager's files: 85% small (1-64 KiB), 12% medium (64 KiB-4 MiB), the
    rest large, sharing whatever is left of ``total``."""
    small = int(count * 0.85)
    medium = int(count * 0.12)
    large = max(1, count - small - medium)
    sizes = [int(2 ** rng.uniform(10, 16)) for _ in range(small)]
    sizes += [int(2 ** rng.uniform(16, 22)) for _ in range(medium)]
    left = total - sum(sizes)
    if left < large:
        raise ValueError(f"a {total}-byte tree cannot hold {count} files of this mix")
    sizes += [left // large + (1 if i < left % large else 0) for i in range(large)]
    rng.shuffle(sizes)
    return sizes


def tree_dirs(count: int) -> Iterator[Path]:
    """Nested directories, two levels below ten top ones, files at every level."""
    for i in range(count):
        top = Path(f"d{i % 10:02d}")
        if i % 4 == 0:
            yield top
        else:
            yield top / f"s{i % 7}" / (f"t{i % 3}" if i % 2 else "")


def make_tree(root: Path, total: int, count: int, seed: int) -> dict[str, Entry]:
    rng = random.Random(seed)
    manifest: dict[str, Entry] = {}
    for i, (size, where) in enumerate(
        zip(tree_sizes(total, count, rng), tree_dirs(count), strict=True)
    ):
        rel = where / f"f{i:05d}.bin"
        (root / rel.parent).mkdir(parents=True, exist_ok=True)
        manifest[str(rel)] = random_file(root / rel, size)
    return manifest


def present(root: Path, manifest: dict[str, Entry]) -> int:
    """How many of the manifest's files are at their path with their size (a cheap poll;
    both engines rename a file into place only once it is whole)."""
    found = 0
    for rel, entry in manifest.items():
        try:
            if (root / rel).stat().st_size == entry.size:
                found += 1
        except OSError:
            pass
    return found


def verify(root: Path, manifest: dict[str, Entry]) -> str | None:
    """None when ``root`` holds exactly the manifest's files with their content, else why not."""
    for rel, entry in manifest.items():
        path = root / rel
        if not path.is_file():
            return f"{rel} is missing"
        if path.stat().st_size != entry.size or sha256_of(path) != entry.sha256:
            return f"{rel} differs"
    extra = [
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file()
        and str(p.relative_to(root)) not in manifest
        and p.relative_to(root).parts[0] not in ENGINE_FILES
    ]
    return f"{len(extra)} unexpected file(s), e.g. {extra[0]}" if extra else None


def link_copy(src: Path, dst: Path) -> None:
    """A hard-linked copy: another engine's source directory without another gigabyte."""
    subprocess.run(["cp", "-al", f"{src}/.", str(dst)], check=True, capture_output=True)


def wait_tree(root: Path, manifest: dict[str, Entry], timeout: float) -> float | None:
    """Monotonic time at which every file was first seen whole, None on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen = time.monotonic()
        if present(root, manifest) == len(manifest):
            return seen
        time.sleep(0.1)
    return None


class RsyncDaemon:
    """A plain ``rsync --daemon`` serving one directory, read only, on a loopback port."""

    def __init__(self, home: Path, directory: Path) -> None:
        self.home = home
        self.port = free_port()
        home.mkdir(parents=True, exist_ok=True)
        self.config = home / "rsyncd.conf"
        self.config.write_text(
            f"address = 127.0.0.1\nport = {self.port}\nuse chroot = no\n"
            f"uid = {os.getuid()}\ngid = {os.getgid()}\nreverse lookup = no\n"
            f"pid file = {home}/rsyncd.pid\n\n[tree]\n    path = {directory}\n"
            "    read only = yes\n"
        )
        self.process = ServerProcess(
            "rsync daemon",
            ["rsync", "--daemon", "--no-detach", f"--config={self.config}"],
            home / "rsyncd.log",
        )

    @property
    def url(self) -> str:
        return f"rsync://127.0.0.1:{self.port}/tree/"

    def start(self) -> RsyncDaemon:
        self.process.start()
        wait_for(
            lambda: _listing_ok(self.url) or not self.process.alive(),
            30,
            what="the rsync daemon to answer",
        )
        if not self.process.alive():
            raise RuntimeError(f"rsync daemon exited: {self.process.log_tail(3)}")
        return self

    def stop(self) -> None:
        self.process.stop()


def _listing_ok(url: str) -> bool:
    done = subprocess.run(["rsync", url], capture_output=True, timeout=30, check=False)
    return done.returncode == 0


def plain_rsync(src: str, dst: Path) -> float:
    """Seconds for ``rsync -a src dst/`` into an empty ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    done = subprocess.run(["rsync", "-a", src, f"{dst}/"], capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"rsync {src} failed: {done.stderr.strip()[:200]}")
    return elapsed


#: seconds ext4 without a journal keeps a deleted inode from reuse once its table block is
#: written (5, RECENTCY_MIN; 305 while dirty)
INODE_RECENCY_S = 5.5
_last_removal = [0.0]


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    _last_removal[0] = time.monotonic()


def settle() -> None:
    """Flush, then wait until the inodes removed last may be reused: a copy started sooner
    on ext4 without a journal (this host's /) pays a lookup per recently deleted inode it
    skips for every file it creates. Measured (perf): a Syncthing join right after removing
    the previous joiner's 2,000 files spent ~30% of its CPU in ext4's ``recently_deleted``,
    under 1% when it started 6 s later."""
    os.sync()
    wait = _last_removal[0] + INODE_RECENCY_S - time.monotonic()
    if wait > 0:
        time.sleep(wait)
