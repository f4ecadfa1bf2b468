"""Typed readers for one section of a raw configuration mapping.

Each reader either returns a value of the expected type or raises a :class:`ConfigError` that
names the key (``timing.ttl``), says what is expected and shows what was given, so the person
editing ``node.yaml`` can fix it from the message alone.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NoReturn

from hacore.errors import ConfigError

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_HOST_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_MISSING: Any = object()


def show(value: Any) -> str:
    """A value as the person wrote it (YAML-ish), cut short when long."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, str | int | float | list | dict):
        try:
            text = json.dumps(value, default=str)
        except (TypeError, ValueError):
            text = repr(value)
    else:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f'; did you mean "{close[0]}"?' if close else ""


class Section:
    """One mapping of the raw configuration, read key by key.

    ``prefix`` is the section's dotted path (``"timing"``), used to name keys in messages; the
    source (file name) is prepended by the caller through ``context``.
    """

    def __init__(self, context: str, prefix: str, raw: Any, known: Iterable[str] = ()) -> None:
        self.context = context
        self.prefix = prefix
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            where = prefix or "the configuration"
            self.fail(f"{where} must be a mapping of keys to values (got {show(raw)})")
        for key in raw:
            if not isinstance(key, str):
                self.fail(f"{self.where('')}keys must be strings (got {show(key)})")
        self.raw: Mapping[str, Any] = raw
        self.known = tuple(known)

    def fail(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.context}: {message}")

    def where(self, key: str) -> str:
        """``timing.ttl`` for a key, or ``timing: `` style prefix when ``key`` is empty."""
        if not key:
            return f"{self.prefix}: " if self.prefix else ""
        return f"{self.prefix}.{key}" if self.prefix else key

    def reject_unknown(self, elsewhere: Mapping[str, str] | None = None) -> None:
        """Fail on the first key not in ``known``, suggesting the closest known one.

        ``elsewhere`` maps keys of other sections to their section, for "ttl belongs in
        timing" hints.
        """
        for key in self.raw:
            if key in self.known:
                continue
            place = f"in {self.prefix}" if self.prefix else "at top level"
            hint = ""
            if elsewhere and key in elsewhere:
                hint = f'; "{key}" belongs in the {elsewhere[key]} section'
            if not hint:
                hint = did_you_mean(key, self.known)
            if not hint:
                hint = f" (known keys: {', '.join(sorted(self.known))})"
            self.fail(f'unknown key "{key}" {place}{hint}')

    def extra(self) -> dict[str, Any]:
        """Every key not in ``known`` (a backend's own settings)."""
        return {k: v for k, v in self.raw.items() if k not in self.known}

    def given(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def _get(self, key: str, default: Any, what: str) -> Any:
        value = self.raw.get(key)
        if value is None:
            if default is _MISSING:
                self.fail(f"{self.where(key)} is required: {what}")
            return default
        return value

    def number(self, key: str, default: Any = _MISSING, *, what: str = "a number > 0") -> float:
        value = self._get(key, default, what)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value <= 0:
            self.fail(f"{self.where(key)} must be {what} (got {show(value)})")
        return float(value)

    def count(self, key: str, default: int, *, what: str) -> int:
        value = self.optional_count(key, what=what)
        return default if value is None else value

    def optional_count(self, key: str, *, what: str) -> int | None:
        """An integer >= 0, or None when not given."""
        value = self.raw.get(key)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            self.fail(f"{self.where(key)} must be {what} (got {show(value)})")
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self._get(key, default, "")
        # YAML 1.1 reads a bare on/off as a boolean.
        if isinstance(value, bool):
            value = "on" if value else "off"
        if value not in choices:
            self.fail(f"{self.where(key)} must be one of {', '.join(choices)} (got {show(value)})")
        return str(value)

    def boolean(self, key: str, default: Any = _MISSING) -> bool:
        value = self._get(key, default, "true or false")
        if not isinstance(value, bool):
            self.fail(f"{self.where(key)} must be true or false (got {show(value)})")
        return value

    def string(self, key: str, default: Any = _MISSING, *, what: str = "a non-empty string") -> str:
        value = self._get(key, default, what)
        if not isinstance(value, str) or not value.strip():
            self.fail(f"{self.where(key)} must be {what} (got {show(value)})")
        return value

    def secret(self, key: str, *, what: str) -> str:
        """Like :meth:`string` but never shows the value: it may be a password."""
        value = self._get(key, _MISSING, what)
        if not isinstance(value, str) or not value:
            self.fail(f"{self.where(key)} must be {what} (got a {type(value).__name__})")
        return value

    def name(self, key: str, default: Any = _MISSING, *, what: str = "a name") -> str:
        value = self._get(key, default, what)
        check_name(value, self.where(key), self.fail, what=what)
        return str(value)

    def port(self, key: str, default: Any = _MISSING) -> int:
        value = self._get(key, default, "a TCP port number")
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
            self.fail(f"{self.where(key)} must be a TCP port number 1-65535 (got {show(value)})")
        return value

    def host(self, key: str) -> str:
        value = self.string(key, what="the IP address or DNS name other nodes reach this one at")
        check_host(value, self.where(key), self.fail)
        return value

    def absolute_path(self, key: str, default: Any = _MISSING) -> Path:
        value = self._get(key, default, "an absolute path")
        if not isinstance(value, str | Path) or not str(value) or not Path(value).is_absolute():
            self.fail(f"{self.where(key)} must be an absolute path (got {show(value)})")
        return Path(value)

    def string_list(self, key: str, *, what: str, names: bool = False) -> tuple[str, ...]:
        value = self._get(key, [], what)
        if not isinstance(value, list | tuple):
            self.fail(f"{self.where(key)} must be a list of {what} (got {show(value)})")
        seen: list[str] = []
        for index, item in enumerate(value):
            where = f"{self.where(key)}[{index}]"
            if names:
                check_name(item, where, self.fail, what=what)
            elif not isinstance(item, str) or not item.strip():
                self.fail(f"{where} must be one of {what} (got {show(item)})")
            if item in seen:
                self.fail(f'{self.where(key)} lists "{item}" twice')
            seen.append(item)
        return tuple(seen)

    def mapping(self, key: str) -> dict[str, Any]:
        return dict(Section(self.context, self.where(key), self.raw.get(key)).raw)


def check_name(
    value: Any, where: str, fail: Callable[[str], NoReturn], *, what: str = "a name"
) -> None:
    """Names end up in store keys and paths, so they are kept to a portable alphabet."""
    if not isinstance(value, str):
        hint = "; quote it in YAML" if isinstance(value, int | float | bool) else ""
        fail(f"{where} must be {what} as a string (got {show(value)}{hint})")
    if not NAME_RE.fullmatch(value):
        fail(
            f"{where} must be {what} of 1-63 letters, digits, '-', '_' or '.', starting with a "
            f"letter or digit (got {show(value)})"
        )


def check_host(value: str, where: str, fail: Callable[[str], NoReturn]) -> None:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        labels = value.rstrip(".").split(".")
        if len(value) > 253 or not all(_HOST_LABEL_RE.fullmatch(label) for label in labels):
            fail(f"{where} must be an IP address or a DNS name (got {show(value)})")
        return
    if address.is_unspecified:
        fail(
            f"{where} is the address other nodes reach this one at; {value} is not reachable "
            "(give this node's own IP address)"
        )
