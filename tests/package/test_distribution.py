"""What a user installs: the sdist and the wheel built from it, installed without ``-e``.

An editable install reads the source tree, so a module left out of the wheel, an undeclared
dependency or a missing ``py.typed`` would never show in the rest of the suite. These tests
build the distributions as a release would, install the wheel into fresh virtual
environments (no extras, then each extra alone) and run the installed ``hacore`` there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("hacore", "hacore_plugins")
#: Plugins that need nothing beyond the core dependencies.
ALWAYS = ("etcd", "rsync", "services", "syncthing")
#: extra -> the (family, backend) pairs it makes available.
EXTRAS: dict[str, tuple[tuple[str, str], ...]] = {
    "": (),
    "etcd": (),
    "zookeeper": (("consensus", "zookeeper"), ("managed_store", "zookeeper")),
    "consul": (("consensus", "consul"),),
    "postgresql": (("replication", "postgresql"),),
    "all": (
        ("consensus", "zookeeper"),
        ("managed_store", "zookeeper"),
        ("consensus", "consul"),
        ("replication", "postgresql"),
    ),
}
OPTIONAL = {
    ("consensus", "zookeeper"),
    ("managed_store", "zookeeper"),
    ("consensus", "consul"),
    ("replication", "postgresql"),
}

#: The interpreter a user makes a virtualenv from (scripts/setup uses the system one too).
BASE_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable

pytestmark = pytest.mark.slow

#: Run inside an installed environment: every command's --help, every module imported.
_PROBE = r"""
import importlib, json, pkgutil, sys
import click
from click.testing import CliRunner
import hacore, hacore_plugins
from hacore.cli import cli

def walk(group, path):
    yield path
    if isinstance(group, click.Group):
        for name in sorted(group.commands):
            yield from walk(group.commands[name], [*path, name])

helps, failures = [], []
runner = CliRunner()
for path in walk(cli, []):
    result = runner.invoke(cli, [*path, "--help"])
    helps.append(" ".join(path))
    if result.exit_code != 0 or "Usage:" not in result.output:
        failures.append(f"hacore {' '.join(path)} --help: {result.exit_code} {result.output}")

skip = set(sys.argv[1].split(",")) if sys.argv[1] else set()
imported = []
for pkg in (hacore, hacore_plugins):
    for mod in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        if any(mod.name == s or mod.name.startswith(s + ".") for s in skip):
            continue
        try:
            importlib.import_module(mod.name)
            imported.append(mod.name)
        except Exception as err:
            failures.append(f"import {mod.name}: {type(err).__name__}: {err}")
print(json.dumps({"helps": helps, "imported": imported, "failures": failures}))
"""


def _run(
    *cmd: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _clean_env() -> dict[str, str]:
    """No test-only plugin and no virtualenv of ours leaking into the installed one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HACORE_", "PYTHON"))}
    env.pop("VIRTUAL_ENV", None)
    return env


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """The sdist, and the wheel built from the sdist (as pip does from PyPI)."""
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT, cwd=ROOT)
    (sdist,) = out.glob("hacore-*.tar.gz")
    (wheel,) = out.glob("hacore-*.whl")
    yield {"sdist": sdist, "wheel": wheel}


def _tree_modules() -> set[str]:
    found = set()
    for top in PACKAGES:
        for path in (ROOT / top).rglob("*.py"):
            if "__pycache__" not in path.parts:
                found.add(path.relative_to(ROOT).as_posix())
    return found


def test_the_wheel_holds_every_module_py_typed_and_the_licence(dists: dict[str, Path]) -> None:
    names = set(zipfile.ZipFile(dists["wheel"]).namelist())
    missing = sorted(_tree_modules() - names)
    assert not missing, f"modules left out of the wheel: {missing}"
    for top in PACKAGES:
        assert f"{top}/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), sorted(names)[-8:]
    metadata = (
        zipfile.ZipFile(dists["wheel"])
        .read(next(n for n in names if n.endswith(".dist-info/METADATA")))
        .decode()
    )
    assert "Requires-Dist: cryptography" in metadata
    assert "memory = hacore.testing.memory" not in "".join(
        zipfile.ZipFile(dists["wheel"]).read(n).decode()
        for n in names
        if n.endswith("entry_points.txt")
    )


def test_the_sdist_holds_the_sources_the_licence_and_the_changelog(
    dists: dict[str, Path],
) -> None:
    with tarfile.open(dists["sdist"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for name in ("LICENSE", "CHANGELOG.md", "README.md", "setup.cfg", "pyproject.toml"):
        assert name in names
    missing = sorted(_tree_modules() - names)
    assert not missing, f"modules left out of the sdist: {missing}"


@pytest.fixture(scope="module")
def venv_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("venvs")


@pytest.fixture(scope="module")
def wheelhouse(dists: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every distribution the wheel with all extras needs, fetched once: each fresh
    virtualenv then installs only what its extras ask for, from here, without an index."""
    house = tmp_path_factory.mktemp("wheelhouse")
    _run(
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--disable-pip-version-check",
        "--dest",
        house,
        f"{dists['wheel']}[all]",
        env=_clean_env(),
    )
    return house


def _install(venv: Path, spec: str, wheelhouse: Path) -> None:
    env = _clean_env()
    _run(BASE_PYTHON, "-m", "venv", "--without-pip", venv, env=env)
    _run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        venv / "bin" / "python",
        "install",
        "-q",
        "--disable-pip-version-check",
        "--no-index",
        "--find-links",
        wheelhouse,
        spec,
        env=env,
    )


@pytest.mark.parametrize("extra", list(EXTRAS), ids=lambda e: e or "no-extras")
def test_the_installed_wheel_runs_every_command_and_imports(
    extra: str, dists: dict[str, Path], venv_root: Path, wheelhouse: Path
) -> None:
    venv = venv_root / (extra or "bare")
    env = _clean_env()
    _install(venv, f"{dists['wheel']}[{extra}]" if extra else str(dists["wheel"]), wheelhouse)

    top = _run(venv / "bin" / "hacore", "--help", env=env)
    assert "Commands:" in top.stdout

    available = set(EXTRAS[extra])
    skip = [
        f"hacore_plugins.{backend}"
        for family, backend in sorted(OPTIONAL - available)
        if family != "managed_store"
    ] + ["hacore.testing"]
    probe = json.loads(
        _run(venv / "bin" / "python", "-c", _PROBE, ",".join(skip), env=env, cwd=venv).stdout
    )
    assert probe["failures"] == []
    assert {"cluster", "cluster join", "cluster nodes list", "agent run", "config check"} <= set(
        probe["helps"]
    )
    for plugin in ALWAYS:
        assert f"hacore_plugins.{plugin}" in probe["imported"]

    listing = json.loads(
        _run(venv / "bin" / "hacore", "plugins", "list", "--json", env=env, cwd=venv).stdout
    )
    registered = {(f, n) for f, names in listing["backends"].items() for n in names}
    absent = {(f, n) for f, names in listing["not_installed"].items() for n in names}
    assert available <= registered
    assert OPTIONAL - available <= absent
    assert ("consensus", "etcd") in registered
    assert not any(n == "memory" for _, n in registered | absent)


def test_plugin_authors_get_types_from_the_installed_package(
    dists: dict[str, Path], venv_root: Path, wheelhouse: Path, tmp_path: Path
) -> None:
    """mypy against the installed wheel: no 'missing library stubs or py.typed marker'."""
    venv = venv_root / "typed"
    env = _clean_env()
    _install(venv, str(dists["wheel"]), wheelhouse)
    user = tmp_path / "my_plugin.py"
    user.write_text(
        "from hacore import hookimpl\n"
        "from hacore.plugins.registry import BackendRegistry\n\n"
        "@hookimpl\n"
        "def hacore_register_backends(registry: BackendRegistry) -> None:\n"
        "    registry.add_missing('consensus', 'mine', 'not yet')\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--python-executable",
            str(venv / "bin" / "python"),
            str(user),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert "py.typed" not in result.stdout, result.stdout
    assert result.returncode == 0, result.stdout + result.stderr
