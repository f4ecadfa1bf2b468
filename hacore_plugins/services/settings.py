"""Readers for the backend keys of the ``services`` section, with messages that name the key.

The configuration layer prefixes every message with the file and ``services (<backend>)``, so
these messages start at the key: ``services.stop_timeout must be ...``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hacore.config.check import backend_settings, show
from hacore.errors import ConfigError


def reject_unknown(settings: Mapping[str, Any], known: Iterable[str], where: str) -> None:
    """Every unknown key, one line each; in ``services`` itself the keys hacore reads there
    (``active_only``, ``everywhere``) count as known for the hints."""
    sec = backend_settings(where, settings, known)
    sec.reject_unknown()
    sec.done()


def seconds(settings: Mapping[str, Any], key: str, default: float, where: str) -> float:
    value = settings.get(key)
    if value is None:
        return default
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{where}.{key} must be a number of seconds > 0 (got {show(value)})")
    return float(value)


def optional_string(settings: Mapping[str, Any], key: str, where: str) -> str | None:
    value = settings.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{key} must be a non-empty string (got {show(value)})")
    return value


def boolean(settings: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    value = settings.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"{where}.{key} must be true or false (got {show(value)})")
    return value


def absolute_path(value: Any, where: str) -> Path:
    if not isinstance(value, str | Path) or not str(value) or not Path(value).is_absolute():
        raise ConfigError(f"{where} must be an absolute path (got {show(value)})")
    return Path(value)
