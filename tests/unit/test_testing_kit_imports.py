"""``hacore.testing`` is the kit every plugin author installs with hacore: it must not pull in
the built-in plugins nor any backend's client library (issue 12). Each plugin ships its own
harness next to it (``hacore_plugins/<name>/testing.py``), registered by name, so the kit
reaches a backend only through the plugin registry at run time.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import hacore.testing
import hacore_plugins

#: Top-level packages the kit must never import: the built-in plugins and backend clients.
FORBIDDEN = frozenset(
    {"hacore_plugins", "kazoo", "consul", "etcd3", "etcd", "psycopg", "psycopg2", "requests"}
)

KIT = Path(hacore.testing.__file__).parent


def forbidden_imports(package_dir: Path, package: str) -> list[str]:
    """``file:line module`` for every import under ``package_dir`` of a forbidden package."""
    found: list[str] = []
    for path in sorted(package_dir.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                # a relative import stays inside the package itself
                modules = [package] if node.level else [node.module or ""]
            else:
                continue
            for module in modules:
                if module.split(".")[0] in FORBIDDEN:
                    found.append(f"{path.relative_to(package_dir)}:{node.lineno} {module}")
    return found


def test_no_module_of_the_kit_imports_a_plugin_or_a_backend_client() -> None:
    assert list(KIT.glob("*.py")), f"no modules found under {KIT}"
    assert forbidden_imports(KIT, "hacore.testing") == []


def test_the_checker_flags_such_an_import(tmp_path: Path) -> None:
    (tmp_path / "harness.py").write_text(
        "import os\nfrom hacore.testing.procs import free_port\n"
        "def f():\n    from hacore_plugins.zookeeper import server\n    import kazoo.client\n"
    )
    assert forbidden_imports(tmp_path, "kit") == [
        "harness.py:4 hacore_plugins.zookeeper",
        "harness.py:5 kazoo.client",
    ]


def test_importing_every_module_of_the_kit_loads_no_plugin_nor_client() -> None:
    """The same at run time, transitively: what the kit imports from the core counts too."""
    script = (
        "import importlib, pkgutil, sys\n"
        "import hacore.testing as kit\n"
        "for info in pkgutil.iter_modules(kit.__path__):\n"
        "    importlib.import_module(f'hacore.testing.{info.name}')\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{sorted(FORBIDDEN)!r})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split() == []


def test_every_plugins_harness_imports_without_pytest() -> None:
    """Harness modules ship in the wheel, which pulls no pytest: ``hacore plugins`` and the
    package's own import check must be able to load them where only hacore is installed."""
    harnesses = sorted(
        f"hacore_plugins.{path.parent.name}.testing"
        for path in Path(hacore_plugins.__file__).parent.glob("*/testing.py")
    )
    assert len(harnesses) >= 7, harnesses
    script = (
        "import importlib, sys\n"
        "sys.modules['pytest'] = sys.modules['_pytest'] = None\n"
        f"for name in {harnesses!r}:\n"
        "    importlib.import_module(name)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
