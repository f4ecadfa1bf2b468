"""The ``filesync`` settings of the Syncthing backend, checked before anything starts."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs

from hacore.config.check import Section, backend_settings

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
        "scan_on_change",
        "start_timeout",
        "request_timeout",
        "enforce_interval",
        "max_send_kbps",
        "max_recv_kbps",
        "low_priority",
        "seed",
        "seed_port",
    }
)


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
    scan_on_change: bool = True
    start_timeout: float = 30.0
    request_timeout: float = 10.0
    enforce_interval: float = 2.0
    max_send_kbps: int = 0
    max_recv_kbps: int = 0
    low_priority: bool = False
    seed: bool = False
    seed_port: int = 22001

    @property
    def managed(self) -> bool:
        return self.api_url is None

    @classmethod
    def parse(cls, settings: Mapping[str, Any]) -> SyncthingSettings:
        # numbers written as strings have always been read
        sec = backend_settings("filesync", settings, KNOWN, numbers_as_text=True)
        both = "api_port" in settings and "gui_port" in settings
        if both and settings["api_port"] != settings["gui_port"]:
            sec.problem("filesync.gui_port is another name for filesync.api_port: give one")
        before = len(sec.problems)
        api_port = sec.port("gui_port" if "gui_port" in settings else "api_port", 8384)
        listen_port = sec.port("listen_port", 22000)
        seed_port = sec.port("seed_port", 22001)
        seed = sec.boolean("seed", False)
        # only a seed that runs takes its port: a listen_port of 22001 was always valid
        clash = seed_port in (api_port, listen_port)
        if seed and len(sec.problems) == before and clash:
            sec.problem(f"filesync.seed_port {seed_port} is already api_port or listen_port")
        if len(sec.problems) == before and api_port == listen_port:
            sec.problem(f"filesync.api_port and filesync.listen_port are both {api_port}")
        api_url, api_key = settings.get("api_url"), settings.get("api_key")
        if (api_url is None) != (api_key is None):
            sec.problem("filesync.api_url and filesync.api_key must be given together")
        if api_url is not None:
            _check_api_url(sec, str(api_url))
        home = sec.optional_path("home")
        seconds = "a number of seconds"
        kbps = "a number of KiB/s (0: no limit)"
        parsed = cls(
            binary=sec.string("binary", DEFAULT_BINARY, what="a program path"),
            home=home,
            api_port=api_port,
            listen_port=listen_port,
            api_url=str(api_url).rstrip("/") if api_url is not None else None,
            api_key=str(api_key) if api_key is not None else None,
            rescan_interval=int(sec.number("rescan_interval", 300, low=1, what=seconds)),
            watcher_delay=int(sec.number("watcher_delay", 1, low=1, what=seconds)),
            scan_on_change=sec.boolean("scan_on_change", True),
            start_timeout=sec.number("start_timeout", 30.0, low=1, what=seconds),
            request_timeout=sec.number("request_timeout", 10.0, low=0.5, what=seconds),
            enforce_interval=sec.number("enforce_interval", 2.0, low=0.2, what=seconds),
            max_send_kbps=int(sec.number("max_send_kbps", 0, low=0, what=kbps)),
            max_recv_kbps=int(sec.number("max_recv_kbps", 0, low=0, what=kbps)),
            low_priority=sec.boolean("low_priority", False),
            seed=seed,
            seed_port=seed_port,
        )
        sec.done()
        return parsed


def _check_api_url(sec: Section, api_url: str) -> None:
    """An instance someone else runs, reached on a Unix socket or over HTTP(S)."""
    parts = urlsplit(api_url)
    web = parts.scheme in ("http", "https") and bool(parts.hostname)
    socket = parts.scheme == "unix" and not parts.netloc and parts.path.startswith("/")
    if not (web or socket):
        sec.problem(
            f"filesync.api_url {api_url!r} must be a URL such as "
            "unix:///run/syncthing/api.sock or http://127.0.0.1:8384"
        )
    if "home" in sec.raw or "binary" in sec.raw:
        sec.problem(
            "filesync.home and filesync.binary are for the instance hacore runs; "
            "with filesync.api_url hacore uses an instance someone else runs"
        )
