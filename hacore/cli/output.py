"""The output formats every reporting command offers (``-o/--output``), and how each is written.

A command builds one JSON-like value for scripts and a function that prints it for people;
the format picks one of them. ``table`` is the text for people (rich tables, sentences);
``json``, ``yaml`` and ``tsv`` carry the same value, so a script gets the same fields whatever
format it reads. TSV is for ``cut``/``awk``/``while read``: a command that lists things
names its list (``records``) and gets one header line and one line per record (nodes,
history entries, archives...); any other command gets one ``key<TAB>value`` line per field,
nested keys joined by dots. Which of the two is fixed per command, never guessed from the
data, so a script reads the same shape whatever the cluster holds.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterator, Mapping
from typing import Any

import yaml


class Output(enum.StrEnum):
    """An output format; true for the formats meant for scripts (everything but ``table``),
    so a command can keep progress lines and prompts out of a script's output with a plain
    ``if not output``."""

    TABLE = "table"
    JSON = "json"
    YAML = "yaml"
    TSV = "tsv"

    def __bool__(self) -> bool:
        return self is not Output.TABLE


FORMATS = tuple(member.value for member in Output)


def render(fmt: Output, data: Any, records: str | None = None) -> str:
    """``data`` written in a machine format (not ``table``), without a final newline;
    ``records`` names the list in ``data`` that TSV writes one line per item of."""
    if fmt is Output.JSON:
        return json.dumps(data, indent=2, sort_keys=True)
    if fmt is Output.YAML:
        return yaml.safe_dump(
            _plain(data), sort_keys=True, default_flow_style=False, allow_unicode=True
        ).rstrip("\n")
    if fmt is Output.TSV:
        return "\n".join("\t".join(row) for row in tsv_rows(data, records))
    raise ValueError(f"{fmt.value} is not a machine format")


def _plain(data: Any) -> Any:
    """Tuples and other sequences as lists: safe_dump writes only the plain YAML types."""
    if isinstance(data, Mapping):
        return {str(k): _plain(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_plain(v) for v in data]
    return data


def tsv_rows(data: Any, records: str | None = None) -> list[list[str]]:
    """A header and one row per item of ``data[records]`` (or of ``data``, a list), else
    ``data``'s ``key, value`` pairs. No record, no line: not even the header."""
    items = data.get(records) if records is not None and isinstance(data, Mapping) else data
    if isinstance(items, list | tuple):
        rows = [item if isinstance(item, Mapping) else {"value": item} for item in items]
        columns: dict[str, None] = {}
        for row in rows:
            columns.update(dict.fromkeys(str(k) for k in row))
        header = list(columns)
        body = [[cell(row.get(c)) for c in header] for row in rows]
        return [header, *body] if body else []
    if isinstance(data, Mapping):
        return [[key, cell(value)] for key, value in _flatten(data, "")]
    return [[cell(data)]]


def _flatten(data: Mapping[str, Any], prefix: str) -> Iterator[tuple[str, Any]]:
    for key in sorted(data, key=str):
        value = data[key]
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, f"{name}.")
        else:
            yield name, value


def cell(value: Any) -> str:
    """One TSV field: empty for null, lower-case booleans, compact JSON for a nested value,
    and tabs, newlines and backslashes escaped so that a field never splits a line."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping | list | tuple):
        text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    else:
        text = str(value)
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
