"""The ``filesync`` settings of the rsync backend."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from hacore.config.check import Section, backend_settings

DEFAULT_BINARY = "/usr/bin/rsync"
DEFAULT_STUNNEL = "/usr/bin/stunnel4"
DEFAULT_OPENSSL = "/usr/bin/openssl"
PROGRAMS = {
    "binary": DEFAULT_BINARY,
    "stunnel_binary": DEFAULT_STUNNEL,
    "openssl_binary": DEFAULT_OPENSSL,
}
KNOWN = (*PROGRAMS, "port", "interval", "password", "io_timeout", "start_timeout")


@attrs.frozen
class RsyncSettings:
    """``password``, when given, is the same on every node and replaces the secret hacore
    makes at ``cluster start`` and hands to joiners; either way the daemons want one."""

    binary: str = DEFAULT_BINARY
    stunnel_binary: str = DEFAULT_STUNNEL
    openssl_binary: str = DEFAULT_OPENSSL
    port: int = 8873
    interval: float = 2.0
    password: str | None = attrs.field(default=None, repr=False)
    io_timeout: int = 60
    start_timeout: float = 10.0

    @classmethod
    def parse(cls, settings: Mapping[str, Any]) -> RsyncSettings:
        # numbers written as strings have always been read
        sec = backend_settings("filesync", settings, KNOWN, numbers_as_text=True)
        seconds = "a number of seconds"
        programs = {name: _program(sec, name, default) for name, default in PROGRAMS.items()}
        parsed = cls(
            **programs,
            port=sec.port("port", 8873),
            interval=sec.number("interval", 2.0, low=0.1, what=seconds),
            password=_password(sec),
            io_timeout=int(sec.number("io_timeout", 60, low=1, what=seconds)),
            start_timeout=sec.number("start_timeout", 10.0, low=1, what=seconds),
        )
        sec.done()
        return parsed


def _program(sec: Section, key: str, default: str) -> str:
    """A path handed to a command line: no white space, which would split it."""
    path = sec.string(key, default, what="a program path")
    if any(c.isspace() or ord(c) < 32 for c in path):
        sec.problem(f"{sec.where(key)} must be a program path without white space")
    return path


def _password(sec: Section) -> str | None:
    """Never shown in a message: it is a password."""
    password = sec.raw.get("password")
    if password is None:
        return None
    where = sec.where("password")
    if not isinstance(password, str) or not password.strip():
        sec.problem(f"{where} must be a non-empty string (the value is not shown)")
        return None
    if any(c in password for c in "\r\n\0"):
        sec.problem(f"{where} must be one line (the value is not shown)")
    return password
