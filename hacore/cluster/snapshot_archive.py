"""The snapshot file: one tar stream (optionally gzip) with a manifest, written and read whole.

Layout, in this order (docs/snapshots.md):

- ``hacore-snapshot.json``: the header (format version, hacore version, PostgreSQL version,
  created at, cluster name). First, so a reader refuses a snapshot from a newer hacore before
  it reads gigabytes;
- the members (``database/...``, ``settings.json``, ``files/<n>/...``);
- ``manifest.json``: the header again and every member's size and sha256. Last, so the writer
  hashes each member while it streams it (a file is read once, never staged), and a reader that
  reaches it knows the stream was not cut short.

Reading extracts every member into a staging directory, hashing on the way, and only then
compares against the manifest: a corrupt or truncated file is refused before anything outside
the staging directory changed. Writing goes to a temporary file beside the target (0600 from
its creation), which is synced and renamed over the target: a crash never leaves half a
snapshot under the final name.

Only regular files and directories are archived: a member name is a relative POSIX path with
no ``..``, checked again on reading, so a crafted file cannot write outside the staging area.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import secrets
import tarfile
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import IO, Any

import attrs

from hacore.agent.errors import RefusedError
from hacore.atomic_files import sync_dir
from hacore.client.units import human_bytes

#: bumped when a reader of the previous format could not read the new one
FORMAT_VERSION = 1
HEADER = "hacore-snapshot.json"
MANIFEST = "manifest.json"
_CHUNK = 1 << 20


class SnapshotError(RefusedError):
    """The snapshot cannot be used (damaged, cut short, too new); nothing was changed
    (exit status 4, as every refusal)."""


def version_tuple(text: str) -> tuple[int, ...]:
    """``0.1.0`` -> ``(0, 1, 0)``; a pre-release suffix is ignored (``1.2.0rc1`` is 1.2.0)."""
    numbers = []
    for part in text.split("."):
        found = re.match(r"\d+", part)
        if found is None:
            break
        numbers.append(int(found.group()))
    return tuple(numbers)


@attrs.frozen
class Header:
    """What a snapshot says about itself; written first and again in the manifest."""

    format: int
    hacore_version: str
    postgresql_version: str
    postgresql_major: int
    created_at: float
    cluster: str

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, data: object) -> Header:
        if not isinstance(data, Mapping):
            raise SnapshotError(f"the snapshot's {HEADER} is not a JSON object")
        try:
            return cls(
                format=int(data["format"]),
                hacore_version=str(data["hacore_version"]),
                postgresql_version=str(data["postgresql_version"]),
                postgresql_major=int(data["postgresql_major"]),
                created_at=float(data["created_at"]),
                cluster=str(data["cluster"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise SnapshotError(f"the snapshot's header is incomplete ({err})") from None

    def refuse_newer(self, hacore_version: str) -> None:
        """A snapshot from a newer hacore may hold what this one does not know: refused."""
        if self.format > FORMAT_VERSION:
            raise SnapshotError(
                f"the snapshot has format {self.format}, this hacore {hacore_version} reads "
                f"format {FORMAT_VERSION} and older: restore it with hacore "
                f"{self.hacore_version} or newer"
            )
        if version_tuple(self.hacore_version) > version_tuple(hacore_version):
            raise SnapshotError(
                f"the snapshot was taken by hacore {self.hacore_version}, newer than this "
                f"hacore {hacore_version}: restore it with hacore {self.hacore_version} or newer"
            )

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.created_at))
        return (
            f'cluster "{self.cluster}", taken {when} by hacore {self.hacore_version} '
            f"(PostgreSQL {self.postgresql_version})"
        )


@attrs.frozen
class Entry:
    name: str
    size: int
    sha256: str


@attrs.frozen
class Manifest:
    header: Header
    entries: tuple[Entry, ...]
    #: the directories (empty ones included), with their modes
    directories: tuple[tuple[str, int], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            **self.header.to_json(),
            "members": [attrs.asdict(e) for e in self.entries],
            "directories": [{"name": n, "mode": m} for n, m in self.directories],
        }

    @classmethod
    def from_json(cls, data: object) -> Manifest:
        header = Header.from_json(data)
        assert isinstance(data, Mapping)
        try:
            entries = tuple(
                Entry(str(e["name"]), int(e["size"]), str(e["sha256"])) for e in data["members"]
            )
            dirs = tuple((str(d["name"]), int(d["mode"])) for d in data.get("directories", []))
        except (KeyError, TypeError, ValueError) as err:
            raise SnapshotError(f"the snapshot's manifest is incomplete ({err})") from None
        return cls(header, entries, dirs)

    @property
    def total_size(self) -> int:
        return sum(e.size for e in self.entries)


# -- progress ----------------------------------------------------------------------------------


class Meter:
    """Bytes done of a total, with rate and ETA, told to ``say`` at most once a ``interval``.

    Mutable on purpose: it is the running count of one transfer."""

    def __init__(
        self,
        what: str,
        total: int,
        say: Callable[[str], None] | None,
        *,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = what
        self.total = total
        self.done = 0
        self._say = say
        self._interval = interval
        self._clock = clock
        self._started = clock()
        self._last = self._started

    def add(self, count: int) -> None:
        self.done += count
        now = self._clock()
        if self._say is not None and now - self._last >= self._interval:
            self._last = now
            self._say(self.line(now))

    def finish(self) -> None:
        if self._say is not None:
            self._say(self.line(self._clock(), final=True))

    def line(self, now: float, *, final: bool = False) -> str:
        elapsed = max(now - self._started, 1e-6)
        rate = self.done / elapsed
        text = f"{self.what}: {human_bytes(self.done)}"
        if self.total > 0:
            share = min(100, int(100 * self.done / self.total))
            text += f" of {human_bytes(self.total)} ({share}%)"
        text += f", {human_bytes(int(rate))}/s"
        if final:
            return text + f", done in {_clock_text(elapsed)}"
        if self.total > self.done and rate > 0:
            text += f", ETA {_clock_text((self.total - self.done) / rate)}"
        return text


def _clock_text(seconds: float) -> str:
    whole = int(seconds + 0.5)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


# -- names -------------------------------------------------------------------------------------


def check_name(name: str) -> str:
    """A member name as the format allows it: relative, normalised, no ``..``."""
    path = PurePosixPath(name)
    if (
        not name
        or path.is_absolute()
        or ".." in path.parts
        or str(path) != name
        or "\\" in name
        or "\0" in name
    ):
        raise SnapshotError(f"the snapshot holds a member with an unsafe name: {name!r}")
    return name


# -- writing -----------------------------------------------------------------------------------


class _Hashing(io.RawIOBase):
    """A reader that hashes and counts what passes through it."""

    def __init__(self, inner: IO[bytes], meter: Meter | None) -> None:
        self.inner = inner
        self.digest = hashlib.sha256()
        self.size = 0
        self.meter = meter

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.inner.read(size)
        self.digest.update(data)
        self.size += len(data)
        if self.meter is not None:
            self.meter.add(len(data))
        return data


class SnapshotWriter:
    """Members appended in order; :meth:`commit` adds the manifest and puts the file in place."""

    def __init__(self, target: Path, *, compress: bool, meter: Meter | None = None) -> None:
        self.target = target
        self.meter = meter
        self._entries: list[Entry] = []
        self._dirs: list[tuple[str, int]] = []
        self._tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(
            self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
        )
        os.fchmod(fd, 0o600)
        self._raw = os.fdopen(fd, "wb")
        # closed by commit() or abort(): the writer outlives this call
        self._tar = tarfile.open(fileobj=self._raw, mode="w|gz" if compress else "w|")  # noqa: SIM115

    def add_json(self, name: str, data: Any) -> None:
        body = (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
        self._add(name, io.BytesIO(body), len(body), 0o600, time.time())

    def add_file(self, name: str, path: Path) -> Entry:
        with path.open("rb") as stream:
            st = os.fstat(stream.fileno())
            return self._add(name, stream, st.st_size, st.st_mode & 0o7777, st.st_mtime)

    def add_dir(self, name: str, mode: int) -> None:
        info = tarfile.TarInfo(check_name(name))
        info.type = tarfile.DIRTYPE
        info.mode = mode
        self._tar.addfile(info)
        self._dirs.append((name, mode))

    def _add(self, name: str, stream: IO[bytes], size: int, mode: int, mtime: float) -> Entry:
        info = tarfile.TarInfo(check_name(name))
        info.size, info.mode, info.mtime = size, mode, int(mtime)
        hashing = _Hashing(stream, self.meter)
        try:
            self._tar.addfile(info, hashing)
        except OSError as err:
            if "unexpected end of data" in str(err):
                raise SnapshotError(
                    f"{name} shrank while it was read: take the snapshot again"
                ) from None
            raise
        entry = Entry(name, size, hashing.digest.hexdigest())
        if name not in (HEADER, MANIFEST):
            self._entries.append(entry)
        return entry

    def commit(self, header: Header) -> Manifest:
        manifest = Manifest(header, tuple(self._entries), tuple(self._dirs))
        self.add_json(MANIFEST, manifest.to_json())
        self._tar.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        os.replace(self._tmp, self.target)
        sync_dir(self.target.parent)
        return manifest

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._tar.close()
        with contextlib.suppress(Exception):
            self._raw.close()
        with contextlib.suppress(OSError):
            self._tmp.unlink()


# -- reading -----------------------------------------------------------------------------------


class _Counting(io.RawIOBase):
    def __init__(self, inner: IO[bytes], meter: Meter | None) -> None:
        self.inner = inner
        self.meter = meter

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.inner.read(len(buffer))
        buffer[: len(data)] = data
        if self.meter is not None:
            self.meter.add(len(data))
        return len(data)


def read_header(path: Path) -> Header:
    """Only the header: enough to refuse a snapshot too new, without reading the rest."""
    try:
        with tarfile.open(path, mode="r|*") as tar:
            member = tar.next()
            if member is None or member.name != HEADER or not member.isfile():
                raise SnapshotError(f"{path} is not a hacore snapshot (no {HEADER} first)")
            stream = tar.extractfile(member)
            assert stream is not None
            return Header.from_json(json.loads(stream.read(1 << 16)))
    except (tarfile.TarError, EOFError, zlib.error, ValueError, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise SnapshotError(f"{path} does not exist") from None
        raise SnapshotError(f"{path} is not a readable hacore snapshot ({err})") from None


def extract_verified(
    path: Path, staging: Path, *, hacore_version: str, meter: Meter | None = None
) -> Manifest:
    """Extract ``path`` into ``staging`` (created, must not exist) and check every member
    against the manifest. Raises :class:`SnapshotError` (``staging`` removed by the caller)."""
    staging.mkdir(mode=0o700)
    found: dict[str, Entry] = {}
    header: Header | None = None
    manifest: Manifest | None = None
    try:
        with (
            path.open("rb") as raw,
            tarfile.open(fileobj=io.BufferedReader(_Counting(raw, meter)), mode="r|*") as tar,
        ):
            for member in tar:
                name = check_name(member.name)
                if manifest is not None:
                    raise SnapshotError(f"the snapshot holds {name} after its manifest")
                if header is None and name != HEADER:
                    raise SnapshotError(f"{path} is not a hacore snapshot (no {HEADER} first)")
                if member.isdir():
                    (staging / name).mkdir(mode=0o700, parents=True, exist_ok=True)
                    continue
                if not member.isfile():
                    raise SnapshotError(f"the snapshot holds {name}, neither file nor directory")
                stream = tar.extractfile(member)
                assert stream is not None
                if name in (HEADER, MANIFEST):
                    data = json.loads(stream.read(64 << 20))
                    if name == HEADER:
                        header = Header.from_json(data)
                        header.refuse_newer(hacore_version)
                    else:
                        manifest = Manifest.from_json(data)
                    continue
                found[name] = _extract(stream, staging / name, member.mode)
    except (tarfile.TarError, EOFError, zlib.error, ValueError) as err:
        raise SnapshotError(
            f"{path} is damaged or truncated ({err}); nothing was changed"
        ) from None
    except OSError as err:
        if isinstance(err, FileNotFoundError) and not path.exists():
            raise SnapshotError(f"{path} does not exist") from None
        raise SnapshotError(f"{path} cannot be extracted ({err}); nothing was changed") from None
    if manifest is None:
        raise SnapshotError(
            f"{path} is truncated (it ends before its manifest); nothing was changed"
        )
    if header != manifest.header:
        raise SnapshotError(f"{path} is damaged: its header and manifest differ")
    _compare(path, manifest, found)
    return manifest


def _extract(stream: IO[bytes], target: Path, mode: int) -> Entry:
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as out:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
    os.chmod(target, mode & 0o7777)
    return Entry(str(target), size, digest.hexdigest())


def _compare(path: Path, manifest: Manifest, found: Mapping[str, Entry]) -> None:
    expected = {e.name: e for e in manifest.entries}
    missing = sorted(set(expected) - set(found))
    if missing:
        raise SnapshotError(
            f"{path} is truncated or damaged: {len(missing)} member(s) of its manifest are "
            f"missing ({', '.join(missing[:3])}); nothing was changed"
        )
    extra = sorted(set(found) - set(expected))
    if extra:
        raise SnapshotError(f"{path} is damaged: {extra[0]} is not in its manifest")
    for name, entry in expected.items():
        got = found[name]
        if (got.size, got.sha256) != (entry.size, entry.sha256):
            raise SnapshotError(
                f"{path} is corrupt: {name} does not match its checksum in the manifest "
                f"(sha256 {got.sha256[:12]}…, expected {entry.sha256[:12]}…); nothing was changed"
            )


def iter_tree(directory: Path) -> Iterator[tuple[Path, bool]]:
    """Every directory and regular file under ``directory``, sorted, parents first
    (``True`` for a directory); symbolic links and special files are left out."""
    for current, dirs, files in os.walk(directory):
        dirs.sort()
        base = Path(current)
        for name in dirs:
            if not (base / name).is_symlink():
                yield base / name, True
        dirs[:] = [d for d in dirs if not (base / d).is_symlink()]
        for name in sorted(files):
            entry = base / name
            if entry.is_file() and not entry.is_symlink():
                yield entry, False
