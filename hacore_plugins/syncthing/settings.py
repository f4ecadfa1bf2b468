"""The ``filesync`` settings of the Syncthing backend, checked before anything starts."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs

from hacore.errors import ConfigError

DEFAULT_BINARY = "/usr/bin/syncthing"

KNOWN = frozenset(
    {
        "binary",
        "home",
        "api_port",
        "gui_port",
        "listen_port",
        "api_url",
        "api_key",
        "rescan_interval",
        "watcher_delay",
        "start_timeout",
        "request_timeout",
        "enforce_interval",
        "max_send_kbps",
        "max_recv_kbps",
    }
)


def _number(settings: Mapping[str, Any], name: str, default: float, *, low: float) -> float:
    raw = settings.get(name, default)
    if isinstance(raw, bool):
        raise ConfigError(f"syncthing setting {name!r} must be a number (got {raw!r})")
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"syncthing setting {name!r} must be a number (got {raw!r})") from None
    if value < low:
        raise ConfigError(f"syncthing setting {name!r} must be at least {low:g} (got {raw!r})")
    return value


def _port(settings: Mapping[str, Any], name: str, default: int) -> int:
    value = _number(settings, name, default, low=1)
    if value != int(value) or value > 65535:
        raise ConfigError(f"syncthing setting {name!r} must be a TCP port (got {value:g})")
    return int(value)


@attrs.frozen
class SyncthingSettings:
    """``api_url`` + ``api_key`` attach to a Syncthing someone else runs; without them hacore
    runs its own instance from ``home``, its API on a Unix socket there. ``api_port`` (alias
    ``gui_port``) is still read, so older node.yaml files load, but no longer used."""

    binary: str = DEFAULT_BINARY
    home: Path | None = None
    api_port: int = 8384
    listen_port: int = 22000
    api_url: str | None = None
    api_key: str | None = attrs.field(default=None, repr=False)
    rescan_interval: int = 300
    watcher_delay: int = 1
    start_timeout: float = 30.0
    request_timeout: float = 10.0
    enforce_interval: float = 2.0
    max_send_kbps: int = 0
    max_recv_kbps: int = 0

    @property
    def managed(self) -> bool:
        return self.api_url is None

    @classmethod
    def parse(cls, settings: Mapping[str, Any]) -> SyncthingSettings:
        unknown = sorted(set(settings) - KNOWN)
        if unknown:
            raise ConfigError(
                f"unknown syncthing setting(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(KNOWN))}"
            )
        both = "api_port" in settings and "gui_port" in settings
        if both and settings["api_port"] != settings["gui_port"]:
            raise ConfigError("syncthing 'gui_port' is another name for 'api_port': give one")
        api_port = _port(settings, "gui_port" if "gui_port" in settings else "api_port", 8384)
        listen_port = _port(settings, "listen_port", 22000)
        if api_port == listen_port:
            raise ConfigError(f"syncthing api_port and listen_port are both {api_port}")
        api_url, api_key = settings.get("api_url"), settings.get("api_key")
        if (api_url is None) != (api_key is None):
            raise ConfigError("syncthing 'api_url' and 'api_key' must be given together")
        if api_url is not None:
            parts = urlsplit(str(api_url))
            web = parts.scheme in ("http", "https") and bool(parts.hostname)
            socket = parts.scheme == "unix" and not parts.netloc and parts.path.startswith("/")
            if not (web or socket):
                raise ConfigError(
                    f"syncthing api_url {api_url!r} must be a URL such as "
                    "unix:///run/syncthing/api.sock or http://127.0.0.1:8384"
                )
            if "home" in settings or "binary" in settings:
                raise ConfigError(
                    "syncthing 'home' and 'binary' are for the instance hacore runs; "
                    "with 'api_url' hacore uses an instance someone else runs"
                )
        home = settings.get("home")
        if home is not None and not Path(str(home)).is_absolute():
            raise ConfigError(f"syncthing 'home' must be an absolute path (got {home!r})")
        return cls(
            binary=str(settings.get("binary", DEFAULT_BINARY)),
            home=Path(str(home)) if home is not None else None,
            api_port=api_port,
            listen_port=listen_port,
            api_url=str(api_url).rstrip("/") if api_url is not None else None,
            api_key=str(api_key) if api_key is not None else None,
            rescan_interval=int(_number(settings, "rescan_interval", 300, low=1)),
            watcher_delay=int(_number(settings, "watcher_delay", 1, low=1)),
            start_timeout=_number(settings, "start_timeout", 30.0, low=1),
            request_timeout=_number(settings, "request_timeout", 10.0, low=0.5),
            enforce_interval=_number(settings, "enforce_interval", 2.0, low=0.2),
            max_send_kbps=int(_number(settings, "max_send_kbps", 0, low=0)),
            max_recv_kbps=int(_number(settings, "max_recv_kbps", 0, low=0)),
        )
