"""Which paths the Syncthing source's change scanner asks Syncthing to scan, and how."""

from __future__ import annotations

from pathlib import Path

from hacore_plugins.syncthing.change_scan import MAX_SUBS, WHOLE, relative, scan_params
from hacore_plugins.syncthing.home import hashing

ROOT = Path("/srv/files")


def test_paths_inside_the_folder_are_named_relative_to_it() -> None:
    assert relative(ROOT, "/srv/files/a.txt") == "a.txt"
    assert relative(ROOT, b"/srv/files/dir/b c.bin") == "dir/b c.bin"


def test_syncthing_s_own_files_and_outside_paths_are_left_alone() -> None:
    for raw in (
        "",
        "/srv/files",
        "/srv/other/a.txt",
        "/srv/files/.stfolder",
        "/srv/files/.stversions/a.txt",
        "/srv/files/dir/.syncthing.a.txt.tmp",
        "/srv/files/~syncthing~a.txt.tmp",
    ):
        assert relative(ROOT, raw) is None, raw


def test_a_few_changes_are_scanned_by_path_many_as_the_whole_folder() -> None:
    few = scan_params("hacore-files", {"b", "a/x"})
    assert few.get_list("folder") == ["hacore-files"]
    assert few.get_list("sub") == ["a/x", "b"]
    many = scan_params("hacore-files", {f"f{i}" for i in range(MAX_SUBS + 1)})
    assert many.get_list("sub") == []
    assert scan_params("hacore-files", {"a", WHOLE}).get_list("sub") == []


def test_the_sha256_code_follows_the_cpu(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 sha_ni aes\n")
    assert hashing(cpuinfo) == "minio"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 aes\n")
    assert hashing(cpuinfo) == "standard"
    assert hashing(tmp_path / "missing") == "standard"
