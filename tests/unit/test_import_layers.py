"""The import graph of ``hacore/`` and ``hacore_plugins/`` has no cycles, and points one way.

Read statically (``ast``) so that an import made inside a function counts as much as one at
the top of a module: a cycle hidden in a function still ties two modules together, it only
fails later. Imports under ``if TYPE_CHECKING:`` are left out, since they never run. Importing
``a.b.c`` also runs the ``__init__`` of ``a.b``, so that package is counted as imported too,
unless it is a package the importing module itself lives in (Python has started that one
already).

Issue 12 point 2 (no cycles) and point 3 (the core never imports the built-in plugins).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import hacore

ROOT = Path(hacore.__file__).resolve().parent.parent
PACKAGES = ("hacore", "hacore_plugins")


def module_files() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _import_nodes(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _type_checking(child.test):
            for other in child.orelse:
                yield from _import_nodes_of(other)
            continue
        yield from _import_nodes_of(child)


def _import_nodes_of(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    else:
        yield from _import_nodes(node)


def imported_names(module: str, path: Path, files: dict[str, Path]) -> set[str]:
    """Every dotted name ``module`` imports (``from a import b``: ``a.b``, or ``a`` when ``b``
    is not a module)."""
    names: set[str] = set()
    for node in _import_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            package = module.split(".")
            if path.name != "__init__.py":
                package.pop()
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, *([node.module] if node.module else [])])
        for alias in node.names:
            names.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base)
    return names


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        edges: set[str] = set()
        for name in imported_names(module, path, files):
            while name and name not in files:
                name = name.rpartition(".")[0]
            while name:
                edges.add(name)
                name = name.rpartition(".")[0]
        # a package the module lives in has started importing before the module did
        graph[module] = {
            edge for edge in edges if edge in files and not f"{module}.".startswith(f"{edge}.")
        }
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for edge in edges:
                if edge not in index:
                    index[edge] = low[edge] = len(index)
                    stack.append(edge)
                    on_stack.add(edge)
                    work.append((edge, iter(sorted(graph.get(edge, ())))))
                    break
                if edge in on_stack:
                    low[node] = min(low[node], index[edge])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def describe(graph: dict[str, set[str]], component: list[str]) -> str:
    inside = set(component)
    edges = [f"    {module} -> {', '.join(sorted(graph[module] & inside))}" for module in component]
    return "\n".join([" <-> ".join(component), *edges])


def test_the_cycle_finder_finds_a_cycle_and_only_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_takes_part_in_an_import_cycle() -> None:
    graph = import_graph()
    assert "hacore.agent.decide" in graph, "the walk found no modules"
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(describe(graph, c) for c in found)


def package_of(module: str) -> str:
    """The layer a module belongs to: ``hacore.agent.runtime`` is in ``hacore.agent``."""
    return ".".join(module.split(".")[:2])


def test_no_package_takes_part_in_an_import_cycle() -> None:
    """The layers (``hacore.agent``, ``hacore.api``, ``hacore.cluster``...) point one way: a
    cycle between two packages is one between their modules waiting to happen."""
    graph = import_graph()
    packages: dict[str, set[str]] = {}
    for module, edges in graph.items():
        packages.setdefault(package_of(module), set()).update(
            package_of(edge) for edge in edges if package_of(edge) != package_of(module)
        )
    found = cycles(packages)
    culprits = [
        f"{module} -> {edge}"
        for module, edges in sorted(graph.items())
        for edge in sorted(edges)
        if any({package_of(module), package_of(edge)} <= set(c) for c in found)
        and package_of(module) != package_of(edge)
    ]
    assert not found, "package cycles:\n" + "\n".join(
        [*(describe(packages, c) for c in found), "through:", *culprits]
    )


_BASE = {"hacore.errors", "hacore.atomic_files"}
_LEAVES = {*_BASE, "hacore.pki"}
_BELOW_AGENT = {*_LEAVES, "hacore.config", "hacore.backends", "hacore.plugins"}
_CLIENT = {*_LEAVES, "hacore.config", "hacore.api"}
#: what each layer may import: the table of docs/architecture.md ("Packages and layers")
MAY_IMPORT: dict[str, set[str]] = {
    "hacore": {*_BASE, "hacore.config", "hacore.backends", "hacore.plugins"},
    "hacore.errors": set(),
    "hacore.atomic_files": {"hacore.errors"},
    "hacore.pki": _BASE,
    "hacore.config": _BASE,
    "hacore.backends": _BASE,
    "hacore.plugins": {*_BASE, "hacore.config", "hacore.backends"},
    "hacore.testing": {*_BASE, "hacore.config", "hacore.backends", "hacore.plugins"},
    "hacore.agent": _BELOW_AGENT,
    "hacore.api": {*_BELOW_AGENT, "hacore.agent"},
    "hacore.client": _CLIENT,
    "hacore.cluster": {*_BELOW_AGENT, "hacore.agent", "hacore.api", "hacore.client"},
    "hacore.cli": {
        *_BELOW_AGENT,
        "hacore.agent",
        "hacore.api",
        "hacore.client",
        "hacore.cluster",
        "hacore.demo",
    },
    "hacore.demo": {*_LEAVES, "hacore.backends", "hacore.plugins", "hacore.testing"},
}


def test_each_layer_imports_only_what_the_architecture_page_allows() -> None:
    graph = import_graph()
    unknown = sorted({package_of(m) for m in graph if m.startswith("hacore.")} - MAY_IMPORT.keys())
    assert not unknown, f"packages missing from MAY_IMPORT and docs/architecture.md: {unknown}"
    wrong = [
        f"{module} -> {edge}"
        for module, edges in sorted(graph.items())
        if package_of(module) in MAY_IMPORT
        for edge in sorted(edges)
        if package_of(edge) != package_of(module)
        and package_of(edge) not in MAY_IMPORT[package_of(module)]
    ]
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_the_core_never_imports_the_built_in_plugins() -> None:
    files = module_files()
    offenders = []
    for module, path in files.items():
        if not module.startswith("hacore.") and module != "hacore":
            continue
        # TYPE_CHECKING imports count here too: the core does not even name a plugin's types
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                targets = [node.module or ""]
            else:
                continue
            offenders.extend(
                f"{module}:{node.lineno} imports {target}"
                for target in targets
                if target == "hacore_plugins" or target.startswith("hacore_plugins.")
            )
    assert not offenders, "\n".join(offenders)
