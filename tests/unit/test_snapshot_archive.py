"""The snapshot file format: written whole, read back only when every member matches."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from hacore.cluster.snapshot_archive import (
    FORMAT_VERSION,
    HEADER,
    MANIFEST,
    Header,
    Meter,
    SnapshotError,
    SnapshotWriter,
    extract_verified,
    iter_tree,
    read_header,
    version_tuple,
)
from hacore_plugins.postgresql.snapshot import without_roles


def header(**changes: object) -> Header:
    fields: dict[str, object] = {
        "format": FORMAT_VERSION,
        "hacore_version": "0.1.0",
        "postgresql_version": "15.8",
        "postgresql_major": 15,
        "created_at": 1700000000.0,
        "cluster": "prod",
    }
    fields.update(changes)
    return Header(**fields)  # type: ignore[arg-type]


def write(tmp_path: Path, name: str = "snap.tar", **changes: object) -> Path:
    source = tmp_path / "src"
    (source / "sub" / "deep").mkdir(parents=True, exist_ok=True)
    (source / "a.txt").write_text("alpha\n")
    (source / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    (source / "sub" / "deep" / "c").write_text("gamma")
    target = tmp_path / name
    writer = SnapshotWriter(target, compress=name.endswith(".gz"))
    writer.add_json(HEADER, header(**changes).to_json())
    writer.add_json("settings.json", {"cluster": {"name": "prod"}})
    writer.add_dir("files/0", 0o755)
    for path, is_dir in iter_tree(source):
        member = f"files/0/{path.relative_to(source).as_posix()}"
        if is_dir:
            writer.add_dir(member, 0o750)
        else:
            writer.add_file(member, path)
    writer.commit(header(**changes))
    return target


@pytest.mark.parametrize("name", ["snap.tar", "snap.tar.gz"])
def test_a_snapshot_reads_back_member_for_member(tmp_path: Path, name: str) -> None:
    target = write(tmp_path, name)
    assert target.stat().st_mode & 0o777 == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert read_header(target) == header()
    manifest = extract_verified(target, tmp_path / "out", hacore_version="0.1.0")
    names = {e.name for e in manifest.entries}
    assert names == {
        "settings.json",
        "files/0/a.txt",
        "files/0/sub/b.bin",
        "files/0/sub/deep/c",
    }
    for rel in ("a.txt", "sub/b.bin", "sub/deep/c"):
        got = (tmp_path / "out" / "files" / "0" / rel).read_bytes()
        assert got == (tmp_path / "src" / rel).read_bytes()
    assert ("files/0/sub", 0o750) in manifest.directories


def test_a_changed_byte_is_refused_as_corrupt(tmp_path: Path) -> None:
    target = write(tmp_path)
    data = bytearray(target.read_bytes())
    offset = data.index(b"alpha\n")
    data[offset] = ord("A")
    target.write_bytes(bytes(data))
    with pytest.raises(SnapshotError, match=r"corrupt: files/0/a.txt does not match its checksum"):
        extract_verified(target, tmp_path / "out", hacore_version="0.1.0")


@pytest.mark.parametrize("name", ["snap.tar", "snap.tar.gz"])
@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_a_truncated_snapshot_is_refused(tmp_path: Path, name: str, keep: float) -> None:
    target = write(tmp_path, name)
    data = target.read_bytes()
    target.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(SnapshotError, match="truncated"):
        extract_verified(target, tmp_path / "out", hacore_version="0.1.0")


def test_a_snapshot_cut_at_a_member_boundary_lacks_its_manifest(tmp_path: Path) -> None:
    """A tar that ends cleanly before the manifest (a copy that stopped between files)."""
    target = write(tmp_path)
    cut = tmp_path / "cut.tar"
    with tarfile.open(target) as src, tarfile.open(cut, "w") as dst:
        for member in src.getmembers():
            if member.name != MANIFEST:
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    with pytest.raises(SnapshotError, match="ends before its manifest"):
        extract_verified(cut, tmp_path / "out", hacore_version="0.1.0")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"format": FORMAT_VERSION + 1}, "has format 2"),
        ({"hacore_version": "0.2.0"}, r"taken by hacore 0.2.0, newer than this hacore 0.1.0"),
    ],
)
def test_a_snapshot_from_a_newer_hacore_is_refused(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    target = write(tmp_path, **changes)
    with pytest.raises(SnapshotError, match=message):
        read_header(target).refuse_newer("0.1.0")
    with pytest.raises(SnapshotError, match=message):
        extract_verified(target, tmp_path / "out", hacore_version="0.1.0")
    if "hacore_version" in changes:
        read_header(target).refuse_newer("0.2.0")  # the hacore that took it reads it


def test_an_older_snapshot_is_read() -> None:
    header(hacore_version="0.0.9").refuse_newer("0.1.0")
    assert version_tuple("1.10.0rc1") > version_tuple("1.9.3")


@pytest.mark.parametrize("bad", ["../escape", "/etc/passwd", "files/../../x", "./a"])
def test_a_member_with_an_unsafe_name_is_refused(tmp_path: Path, bad: str) -> None:
    target = tmp_path / "evil.tar"
    with tarfile.open(target, "w") as tar:
        body = json.dumps(header().to_json()).encode()
        info = tarfile.TarInfo(HEADER)
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
        info = tarfile.TarInfo(bad)
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(SnapshotError, match="unsafe name"):
        extract_verified(target, tmp_path / "out", hacore_version="0.1.0")
    assert not (tmp_path / "escape").exists()


def test_a_file_that_is_no_snapshot_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("hello\n" * 100)
    with pytest.raises(SnapshotError, match="not a readable hacore snapshot"):
        read_header(target)
    with pytest.raises(SnapshotError, match="damaged or truncated"):
        extract_verified(target, tmp_path / "out", hacore_version="0.1.0")


def test_the_meter_tells_bytes_rate_and_eta() -> None:
    now = [100.0]
    lines: list[str] = []
    meter = Meter("snapshot create", 100 << 20, lines.append, clock=lambda: now[0])
    now[0] = 102.0
    meter.add(20 << 20)
    assert lines == ["snapshot create: 20.0 MiB of 100.0 MiB (20%), 10.0 MiB/s, ETA 0:00:08"]
    now[0] = 102.5
    meter.add(1 << 20)
    assert len(lines) == 1  # at most once a second
    meter.finish()
    assert lines[-1].endswith("done in 0:00:03")


GLOBALS = '''\
SET default_transaction_read_only = off;

CREATE ROLE app;
ALTER ROLE app WITH NOSUPERUSER INHERIT LOGIN PASSWORD 'SCRAM-SHA-256$4096:abc';
CREATE ROLE postgres;
ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS;
CREATE ROLE replicator;
ALTER ROLE replicator WITH NOSUPERUSER LOGIN REPLICATION PASSWORD 'SCRAM-SHA-256$4096:def';
CREATE ROLE "Odd ""name""";
COMMENT ON ROLE replicator IS 'hacore';
GRANT pg_checkpoint TO replicator GRANTED BY postgres;
GRANT readers TO app GRANTED BY postgres;
'''


def test_hacore_s_own_roles_are_left_out_of_the_dump() -> None:
    kept = without_roles(GLOBALS, {"postgres", "replicator", 'Odd "name"'})
    assert "replicator" not in kept
    assert "ROLE postgres" not in kept
    assert "Odd" not in kept
    assert "SCRAM-SHA-256$4096:abc" in kept  # an application role keeps its password
    assert "GRANT readers TO app GRANTED BY postgres;" in kept
    assert kept.startswith("SET default_transaction_read_only = off;")
