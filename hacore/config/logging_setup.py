"""Where the agent's log goes and how it looks: the ``logging:`` section of ``node.yaml``.

stderr is the default because under systemd it is the journal, which already rotates,
timestamps and ships; a ``file`` is for hosts without one, rotated by size so that a
chatty week cannot fill the disk. ``format: json`` writes one JSON object per line for log
shippers that would otherwise have to parse free text. ``hacore -v``/``-vv`` still win over
``level``: someone chasing a problem asks for more output on the command line, not in a file
that every node shares a template of.

The same settings are applied again on SIGHUP (:func:`apply`), which only ever swaps the one
handler installed here, so a reload cannot duplicate lines or lose a handler a library added.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import threading
import time
from pathlib import Path
from typing import Any

import attrs

from hacore.config.check import Section, show

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
#: below this a file would rotate several times a minute on a busy node
MIN_FILE_BYTES = 64 * 1024
#: libraries that log every request or refused connection; hacore reports the outcome itself
QUIET_LIBRARIES = ("kazoo", "httpx", "httpcore")


@attrs.frozen
class LoggingSettings:
    """The ``logging`` section of ``node.yaml`` (docs/configuration.md)."""

    level: str = "INFO"
    format: str = "text"
    #: None: stderr (the journal under systemd)
    file: Path | None = None
    #: a file is rotated once it would grow past this many bytes
    max_bytes: int = 10 * 1024 * 1024
    #: rotated files kept (``agent.log.1`` ... ``agent.log.N``); 0 truncates in place
    backups: int = 5


def read_logging(sec: Section) -> LoggingSettings:
    """Read the ``logging`` section with the same one-line problems as every other section."""
    sec.reject_unknown()
    default = LoggingSettings()
    level = sec.raw.get("level")
    if level is None:
        level = default.level
    if isinstance(level, str) and level.upper() in LEVELS:
        level = level.upper()
    else:
        sec.problem(f"{sec.where('level')} must be one of {', '.join(LEVELS)} (got {show(level)})")
        level = default.level
    file = sec.absolute_path("file") if sec.given("file") else None
    return LoggingSettings(
        level=level,
        format=sec.choice("format", default.format, FORMATS),
        file=file,
        max_bytes=sec.integer(
            "max_bytes", default.max_bytes, low=MIN_FILE_BYTES, what="a size in bytes"
        ),
        backups=sec.integer("backups", default.backups, low=0, high=1000, what="a file count"),
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, and the
    traceback when there is one. Keys are stable, so a shipper's parser never changes."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
            "thread": record.threadName,
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def verbose_level(verbose: int) -> int | None:
    """The level ``-v`` (INFO) or ``-vv`` (DEBUG) asks for; None without the flag."""
    if verbose <= 0:
        return None
    return max(logging.WARNING - 10 * verbose, logging.DEBUG)


def effective_level(settings: LoggingSettings, verbose: int) -> int:
    forced = verbose_level(verbose)
    if forced is not None:
        return forced
    level: int = logging.getLevelNamesMapping()[settings.level]
    return level


def make_handler(settings: LoggingSettings) -> logging.Handler:
    handler: logging.Handler
    if settings.file is None:
        handler = logging.StreamHandler(sys.stderr)
    else:
        settings.file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            settings.file,
            maxBytes=settings.max_bytes,
            backupCount=settings.backups,
            encoding="utf-8",
        )
    if settings.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    return handler


class LogSetup:
    """The root logger's hacore handler, and the settings it was built from."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handler: logging.Handler | None = None
        self.settings: LoggingSettings | None = None
        self.verbose = 0

    def apply(self, settings: LoggingSettings, verbose: int | None = None) -> list[str]:
        """Install ``settings``; returns what changed, in words (empty when nothing did).

        The previous handler stays in place until the new one exists: a file that cannot be
        opened leaves the log where it was (the error propagates to the caller, who logs it).
        """
        with self._lock:
            if verbose is not None:
                self.verbose = verbose
            old = self.settings
            root = logging.getLogger()
            if old is None or _destination(old) != _destination(settings):
                handler = make_handler(settings)
                for existing in list(root.handlers):
                    if existing is self._handler or self._handler is None:
                        root.removeHandler(existing)
                        existing.close()
                root.addHandler(handler)
                self._handler = handler
            level = effective_level(settings, self.verbose)
            root.setLevel(level)
            for name in QUIET_LIBRARIES:
                logging.getLogger(name).setLevel(logging.WARNING)
            if self.verbose < 2:
                # kazoo logs every refused connection attempt; -vv shows them all
                logging.getLogger("kazoo").setLevel(logging.ERROR)
            self.settings = settings
            return _changes(old, settings, self.verbose)


def _destination(settings: LoggingSettings) -> tuple[object, ...]:
    return (settings.file, settings.max_bytes, settings.backups, settings.format)


def _changes(old: LoggingSettings | None, new: LoggingSettings, verbose: int) -> list[str]:
    if old is None:
        return []
    changed = []
    for field in attrs.fields(LoggingSettings):
        before, after = getattr(old, field.name), getattr(new, field.name)
        if before != after:
            changed.append(f"logging.{field.name}: {_word(before)} -> {_word(after)}")
    forced = verbose_level(verbose)
    if forced is not None and old.level != new.level:
        changed.append(f"(the level stays {logging.getLevelName(forced)}: -v on the command line)")
    return changed


def _word(value: object) -> str:
    return "stderr" if value is None else str(value)


#: the process's one setup (the CLI and the agent service share the root logger)
SETUP = LogSetup()
