"""The ``--options`` value of ``cluster start`` and ``cluster join``: configuration overrides.

It takes the three forms the seed's ``cfy cluster`` accepted, so existing scripts keep working:
YAML file paths, directories or globs (merged in order), a JSON object, or ``k1=v1;k2=v2`` with
dotted keys for nesting (``timing.ttl=3;consensus.backend=etcd``). The result is a nested
mapping that :func:`hacore.config.node.load_config` deep-merges over the node's configuration.
Reading the configuration file itself (:func:`read_source`) is here too: the same YAML, the
same way of describing what is wrong with it.
"""

from __future__ import annotations

import copy
import glob
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from hacore.config.check import show
from hacore.errors import ConfigError

_PREFIX = "--options"
_YAML_SUFFIXES = (".yaml", ".yml")
_CLOSERS = {"[": "]", "{": "}"}


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A new mapping: ``override`` over ``base``; nested mappings merge, anything else replaces.

    Lists replace rather than extend, so an override can shorten a list.
    """
    merged: dict[str, Any] = copy.deepcopy(dict(base))
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = deep_merge(current, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_source(source: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """A copy of the raw configuration, and the start of every error line about it (which
    names the file it was read from)."""
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source)), "config error"
    path = Path(source)
    context = f"config error in {path}"
    loaded = _yaml_document(path, f"{context}: cannot read the file", f"{context}: not valid YAML")
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"{context}: the file must hold a mapping of sections (got {show(loaded)})"
        )
    return loaded, context


def parse_options(value: str | Sequence[str]) -> dict[str, Any]:
    """Parse one ``--options`` value, or several (repeated flags), merged in order."""
    items = [value] if isinstance(value, str) else list(value)
    merged: dict[str, Any] = {}
    for item in items:
        merged = deep_merge(merged, _parse_one(item))
    return merged


def _parse_one(text: str) -> dict[str, Any]:
    item = text.strip()
    if not item:
        return {}
    if item.startswith(("{", "[")):
        return _parse_json(item)
    path = os.path.expanduser(item)
    if os.path.isdir(path):
        files = sorted(p for p in Path(path).iterdir() if p.suffix in _YAML_SUFFIXES)
        if not files:
            raise ConfigError(f'{_PREFIX}: directory "{item}" holds no .yaml or .yml file')
        return _merge_files(files)
    if os.path.isfile(path):
        return _load_yaml_file(Path(path))
    if "=" in item:
        return _parse_pairs(item)
    if glob.has_magic(path):
        matches = sorted(Path(p) for p in glob.glob(path) if os.path.isfile(p))
        if not matches:
            raise ConfigError(f'{_PREFIX}: no file matches "{item}"')
        return _merge_files(matches)
    if item.endswith((*_YAML_SUFFIXES, ".json")):
        raise ConfigError(f'{_PREFIX}: no such file "{item}"')
    raise ConfigError(
        f'{_PREFIX}: cannot parse "{item}": it is not an existing YAML file, directory or glob, '
        "a JSON object, or k1=v1;k2=v2"
    )


def _parse_json(item: str) -> dict[str, Any]:
    try:
        loaded = json.loads(item)
    except json.JSONDecodeError as err:
        # A YAML flow mapping ({a: 1}) is close enough to be accepted too.
        try:
            loaded = yaml.safe_load(item)
        except yaml.YAMLError:
            raise ConfigError(
                f'{_PREFIX}: cannot parse "{item}" as JSON: {err.msg} at position {err.pos}'
            ) from None
    if not isinstance(loaded, dict):
        kind = "a list" if isinstance(loaded, list) else f"a {type(loaded).__name__}"
        raise ConfigError(f'{_PREFIX}: "{item}" must be a JSON object (got {kind})')
    return _string_keys(loaded, f'"{item}"')


def _merge_files(paths: Sequence[Path]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path in paths:
        merged = deep_merge(merged, _load_yaml_file(path))
    return merged


def _load_yaml_file(path: Path) -> dict[str, Any]:
    loaded = _yaml_document(
        path, f'{_PREFIX}: cannot read "{path}"', f'{_PREFIX}: cannot parse "{path}"'
    )
    if not isinstance(loaded, dict):
        raise ConfigError(
            f'{_PREFIX}: "{path}" must hold a mapping of option names to values '
            f"(it holds a {type(loaded).__name__})"
        )
    return _string_keys(loaded, f'"{path}"')


def _yaml_document(path: Path, cannot_read: str, cannot_parse: str) -> Any:
    """The YAML document in ``path``, ``{}`` when the file is empty; a :class:`ConfigError`
    that starts with ``cannot_read`` or ``cannot_parse`` (the caller's words) when it cannot
    be read or is not YAML."""
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"{cannot_read}: {err.strerror}") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{cannot_parse}: {describe_yaml_error(err)}") from None
    return {} if loaded is None else loaded


def describe_yaml_error(err: yaml.YAMLError) -> str:
    """PyYAML's error as one line: the problem and where it is."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    if mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return str(problem)


def _string_keys(mapping: dict[Any, Any], where: str) -> dict[str, Any]:
    for key, value in mapping.items():
        if not isinstance(key, str):
            raise ConfigError(f"{_PREFIX}: in {where}, option names must be strings (got {key!r})")
        if isinstance(value, dict):
            _string_keys(value, where)
    return mapping


def _parse_pairs(text: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for start, pair in _split_pairs(text):
        key_text, sep, value_text = pair.partition("=")
        where = f"position {start}"
        if not sep:
            _fail_pairs(text, f'missing "=" in "{pair.strip()}" at {where}')
        key = key_text.strip()
        if not key:
            _fail_pairs(text, f"empty key at {where}")
        parts = key.split(".")
        if any(not part or any(c.isspace() for c in part) for part in parts):
            _fail_pairs(text, f'bad key "{key}" at {where} (use dotted names like timing.ttl)')
        _set_dotted(result, parts, _scalar(value_text.strip(), key, text), text, where)
    return result


def _split_pairs(text: str) -> list[tuple[int, str]]:
    """Split on ``;`` outside quotes and brackets, so values may hold ``;`` when quoted."""
    pairs: list[tuple[int, str]] = []
    start = 0
    quote = ""
    closers: list[str] = []
    previous = ";"  # last non-blank character outside quotes
    i = 0
    while i < len(text):
        char = text[i]
        # Quotes and brackets only count where a YAML value can start: "it's" stays plain.
        opens_value = previous in "=[{,:"
        if quote:
            if char == "\\" and quote == '"':
                i += 1
            elif char == quote:
                quote = ""
        elif char in "\"'" and opens_value:
            quote = char
        elif char in _CLOSERS and (opens_value or closers):
            closers.append(_CLOSERS[char])
        elif closers and char == closers[-1]:
            closers.pop()
        elif char == ";" and not closers:
            pairs.append((start, text[start:i]))
            start = i + 1
        if not char.isspace():
            previous = char
        i += 1
    if quote:
        _fail_pairs(text, f"unterminated {quote} quote")
    pairs.append((start, text[start:]))
    return [(pos + len(p) - len(p.lstrip()), p) for pos, p in pairs if p.strip()]


def _scalar(value: str, key: str, text: str) -> Any:
    """A YAML scalar (numbers and booleans typed), or a flow list/mapping when bracketed."""
    try:
        loaded = yaml.safe_load(value)
    except yaml.YAMLError as err:
        if value.startswith(("[", "{", '"', "'")):
            _fail_pairs(text, f"bad value for {key}: {describe_yaml_error(err)}")
        return value
    if isinstance(loaded, list | dict) and not value.startswith(("[", "{")):
        return value  # "a: b" or "- x" was meant as plain text
    return loaded


def _set_dotted(
    target: dict[str, Any], parts: list[str], value: Any, text: str, where: str
) -> None:
    node = target
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            prefix = ".".join(parts[: depth + 1])
            _fail_pairs(text, f"{prefix} is given a value and sub-keys at {where}")
        node = child
    last = parts[-1]
    if isinstance(node.get(last), dict) and not isinstance(value, dict):
        _fail_pairs(text, f"{'.'.join(parts)} is given a value and sub-keys at {where}")
    node[last] = deep_merge(node[last], value) if isinstance(node.get(last), dict) else value


def _fail_pairs(text: str, reason: str) -> NoReturn:
    raise ConfigError(f'{_PREFIX}: cannot parse "{text}" as k1=v1;k2=v2: {reason}')
