"""The third-party example plugin, installed like any package, is found and used by hacore.

The example is built and installed with pip into a temporary target directory (no index, no
build isolation: offline and fast), which a subprocess puts on ``PYTHONPATH``; the project's
own virtualenv is never modified. The example's own tests (``examples/thirdparty-plugin/
tests``: hacore's services contract suite against its ``pidfile`` backend) run the same way,
in a pytest of their own, as the plugin's author would run them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hacore.testing.services_contract import ServicesContract

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "thirdparty-plugin"

PROBE = """
import json, sys
from hacore import load_plugins
from hacore.config.node import load_config

config = load_config(json.loads(sys.argv[1]))
plugins = load_plugins(block=config.plugins.block)
module = plugins.pm.get_plugin("diskspace")
checks = [check for found in plugins.hook.hacore_health_checks(config=config) for check in found]
results = []
for check in checks:
    result = check.run()
    results.append({"name": check.name, "module": type(check).__module__,
                    "ok": result.ok, "detail": result.detail})
print(json.dumps({"loaded_from": getattr(module, "__file__", None), "checks": results}))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("example-plugin")
    source = work / "src"
    # Building writes build/ and *.egg-info next to the sources: build a copy.
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    target = work / "site"
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "--no-deps", "--no-build-isolation", "--no-index", "--target", str(target),
            str(source),
        ],
        check=True,
        timeout=180,
    )  # fmt: skip
    return target


def _clean_env(site: Path | None) -> dict[str, str]:
    """This environment without hacore's variables, with ``site`` as the only extra path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HACORE_")}
    env.pop("PYTHONPATH", None)
    if site is not None:
        env["PYTHONPATH"] = str(site)
    return env


def _probe(
    site: Path | None,
    data_dir: Path,
    settings: dict[str, Any] | None = None,
    block: tuple[str, ...] = (),
    **env: str,
) -> dict[str, Any]:
    """Load the plugins and run every health check in a fresh interpreter."""
    raw: dict[str, Any] = {
        "node": {"name": "node-1", "host": "127.0.0.1", "data_dir": str(data_dir)},
        "consensus": {"backend": "memory"},
        "plugins": {"block": list(block), "settings": {"diskspace": settings or {}}},
    }
    child_env = _clean_env(site)
    child_env.update(env)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(raw)],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def _disk_checks(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in result["checks"] if c["module"] == "hacore_diskspace"]


def test_found_by_entry_point_and_passes_with_room(installed: Path, tmp_path: Path) -> None:
    result = _probe(installed, tmp_path, {"min_free_mb": 1})
    assert result["loaded_from"] is not None
    assert Path(result["loaded_from"]).is_relative_to(installed)
    [check] = _disk_checks(result)
    assert check["name"] == "disk-space"
    assert check["ok"] is True
    assert f"free in {tmp_path} (minimum 1 MB)" in check["detail"]


def test_fails_below_the_configured_threshold(installed: Path, tmp_path: Path) -> None:
    [check] = _disk_checks(_probe(installed, tmp_path, {"min_free_mb": 10**12}))
    assert check["ok"] is False
    assert "(minimum 1e+12 MB)" in check["detail"]


def test_threshold_from_the_environment(installed: Path, tmp_path: Path) -> None:
    result = _probe(installed, tmp_path, HACORE_DISKSPACE_MIN_MB=str(10**12))
    [check] = _disk_checks(result)
    assert check["ok"] is False
    [check] = _disk_checks(_probe(installed, tmp_path, HACORE_DISKSPACE_MIN_MB="1"))
    assert check["ok"] is True


def test_fails_when_the_directory_is_missing(installed: Path, tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    [check] = _disk_checks(_probe(installed, tmp_path, {"min_free_mb": 1, "path": str(missing)}))
    assert check["ok"] is False
    assert check["detail"] == f"cannot read free space of {missing}: No such file or directory"


def test_blocked_by_environment(installed: Path, tmp_path: Path) -> None:
    result = _probe(installed, tmp_path, {"min_free_mb": 1}, HACORE_BLOCK_PLUGINS="etcd,diskspace")
    assert result["loaded_from"] is None
    assert _disk_checks(result) == []


def test_blocked_by_configuration(installed: Path, tmp_path: Path) -> None:
    result = _probe(installed, tmp_path, {"min_free_mb": 1}, block=("diskspace",))
    assert result["loaded_from"] is None
    assert _disk_checks(result) == []


def test_not_installed_in_the_project_environment(tmp_path: Path) -> None:
    result = _probe(None, tmp_path, {"min_free_mb": 1})
    assert result["loaded_from"] is None
    assert _disk_checks(result) == []


def test_the_example_backend_passes_the_services_contract(installed: Path) -> None:
    """Every test of the shipped services suite passes against the example's ``pidfile``
    backend, taken from the registry of the installed plugin (none skipped)."""
    source = installed.parent / "src"
    # not from the sources' directory: Python would import the package from there, not from
    # the install (pytest puts only the tests' own directory on the path)
    proc = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider",
            "-c", str(source / "pyproject.toml"), "--rootdir", str(source), str(source / "tests"),
        ],
        cwd=installed.parent,
        env=_clean_env(installed),
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    passed = set(re.findall(r"::TestPidfileServices::(\w+) PASSED", proc.stdout))
    suite = {name for name in dir(ServicesContract) if name.startswith("test_")}
    assert suite and passed == suite, proc.stdout
    assert "::test_the_installed_plugin_registers_the_backend PASSED" in proc.stdout
