"""The documentation site builds with ``mkdocs build --strict``: every page under docs/ is in
the navigation, and no link or anchor is broken (mkdocs.yml's ``validation`` turns each of
those into a warning, and ``--strict`` fails on warnings). ``./scripts/test`` runs the same
build; this test catches it in a plain ``pytest`` run too."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _nav_pages(entries: object) -> set[str]:
    pages: set[str] = set()
    if isinstance(entries, str):
        pages.add(entries)
    elif isinstance(entries, list):
        for entry in entries:
            pages |= _nav_pages(entry)
    elif isinstance(entries, dict):
        for value in entries.values():
            pages |= _nav_pages(value)
    return pages


def test_the_docs_site_builds_strictly(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    warnings = [line for line in done.stderr.splitlines() if "WARNING" in line]
    assert done.returncode == 0, "\n".join(warnings) or done.stderr
    assert (tmp_path / "site" / "install" / "index.html").is_file()


def test_the_operator_pages_are_in_the_navigation() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = _nav_pages(config["nav"])
    for page in ("README.md", "install.md", "architecture.md", "runbooks.md", "troubleshooting.md"):
        assert page in pages
        assert (ROOT / "docs" / page).is_file()
    assert config["validation"]["omitted_files"] == "warn"
    assert config["validation"]["anchors"] == "warn"
