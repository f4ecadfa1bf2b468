"""docs/hooks.md documents exactly the hooks in hacore/plugins/hookspecs.py, with their real
signatures."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from hacore.plugins import hookspecs

DOC = Path(__file__).resolve().parents[2] / "docs" / "hooks.md"
_HEADING = re.compile(r"^## `(\w+)`\s*$", re.MULTILINE)
_CODE = re.compile(r"```python\n(.*?)```", re.DOTALL)
_PARTS = ("**When:**", "**Arguments:**", "**Returns:**")


def _hookspecs() -> dict[str, object]:
    return {
        name: func
        for name, func in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(func, "hacore_spec")
    }


def _doc_sections() -> dict[str, str]:
    text = DOC.read_text()
    matches = list(_HEADING.finditer(text))
    sections = {}
    for match, following in zip(matches, [*matches[1:], None], strict=True):
        end = following.start() if following else len(text)
        sections[match.group(1)] = text[match.end() : end]
    return sections


def _normal(annotation: str) -> str:
    return ast.unparse(ast.parse(annotation, mode="eval"))


def _real_signature(func: object) -> tuple[list[tuple[str, str]], str]:
    sig = inspect.signature(func)  # type: ignore[arg-type]
    params = [(p.name, _normal(p.annotation)) for p in sig.parameters.values()]
    return params, _normal(sig.return_annotation)


def _documented_signature(name: str, section: str) -> tuple[list[tuple[str, str]], str]:
    block = _CODE.search(section)
    assert block, f"docs/hooks.md: the {name} section has no ```python signature block"
    source = block.group(1).strip()
    tree = ast.parse(source + ":\n    ...")
    func = tree.body[0]
    assert isinstance(func, ast.FunctionDef), f"docs/hooks.md: {name} block is not a def"
    assert func.name == name, f"docs/hooks.md: the {name} section shows def {func.name}"
    assert not func.args.posonlyargs and not func.args.kwonlyargs and not func.args.vararg
    params = []
    for arg in func.args.args:
        assert arg.annotation is not None, f"docs/hooks.md: {name}({arg.arg}) has no type"
        params.append((arg.arg, ast.unparse(arg.annotation)))
    assert func.returns is not None, f"docs/hooks.md: {name} shows no return type"
    return params, ast.unparse(func.returns)


def test_the_hookspec_module_has_hooks() -> None:
    # Guards the detection below: if pluggy renamed its marker attribute, every check would pass.
    assert "hacore_health_checks" in _hookspecs()
    assert len(_hookspecs()) >= 8


def test_every_hook_is_documented() -> None:
    missing = sorted(set(_hookspecs()) - set(_doc_sections()))
    assert not missing, f"docs/hooks.md has no section for: {', '.join(missing)}"


def test_every_documented_hook_exists() -> None:
    stale = sorted(set(_doc_sections()) - set(_hookspecs()))
    assert not stale, f"docs/hooks.md documents hooks that no longer exist: {', '.join(stale)}"


@pytest.mark.parametrize("name", sorted(_hookspecs()))
def test_documented_signature_matches(name: str) -> None:
    section = _doc_sections().get(name)
    if section is None:
        pytest.fail(f"docs/hooks.md has no section for {name}")
    assert _documented_signature(name, section) == _real_signature(_hookspecs()[name])


@pytest.mark.parametrize("name", sorted(_hookspecs()))
def test_section_says_when_arguments_and_returns(name: str) -> None:
    section = _doc_sections().get(name, "")
    for part in _PARTS:
        assert part in section, f"docs/hooks.md: the {name} section lacks {part}"
        after = section.split(part, 1)[1].split("**", 1)[0]
        assert after.strip(), f"docs/hooks.md: {name} {part} is empty"
    arguments = section.split("**Arguments:**", 1)[1].split("**Returns:**", 1)[0]
    for param in inspect.signature(_hookspecs()[name]).parameters:  # type: ignore[arg-type]
        assert f"`{param}`" in arguments, f"docs/hooks.md: {name} does not explain `{param}`"
