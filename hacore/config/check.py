"""Typed readers for one section of a raw configuration mapping.

Each reader either returns a value of the expected type or records a problem that names the
key (``timing.ttl``), says what is expected and shows what was given, so the person editing
``node.yaml`` can fix it from the message alone. Problems are collected rather than raised one
at a time: a file with three mistakes is reported as three lines in one run.

Backends read their own keys with the same readers (:func:`backend_settings`), so a typo in
a backend's key gets the same message and the same "did you mean" as one in a core key, and a
wrong type or a value out of range reads ``<section>.<key> must be <what> (got <value>)``
whichever plugin reports it (docs/plugin-authors.md, "Reading settings").
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from hacore.errors import ConfigError

T = TypeVar("T")

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_HOST_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_MISSING: Any = object()

#: the keys hacore itself reads in each section of ``node.yaml``; a backend section's other
#: keys are the backend's own settings
SECTION_KEYS: Mapping[str, tuple[str, ...]] = {
    "cluster": ("name", "namespace"),
    "node": ("name", "host", "api_port", "data_dir", "dns_names"),
    "timing": ("ttl", "loop_wait", "retry_timeout", "safety_margin", "profile"),
    "checks": ("check_ttl_multiplier", "check_fail_fast", "active_grace"),
    "failover": (
        "synchronous_mode",
        "maximum_lag_on_failover",
        "promote_backoff",
        "switchover_timeout",
        "switchover_max_lag",
        "failsafe_mode",
        "minority_mode",
    ),
    "consensus": ("backend", "managed"),
    "replication": ("backend",),
    "filesync": ("backend", "directories"),
    "services": ("backend", "active_only", "everywhere"),
    "api": ("auth", "status_requires_auth", "metrics_without_credentials", "users"),
    "tls": ("enabled",),
    "plugins": ("block", "settings"),
    "logging": ("level", "format", "file", "max_bytes", "backups"),
}


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


def closest(word: str, choices: Iterable[str]) -> str | None:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = closest(word, choices)
    return f'; did you mean "{close}"?' if close else ""


def backend_settings(
    family: str,
    settings: Mapping[str, Any],
    known: Iterable[str],
    *,
    numbers_as_text: bool = False,
) -> Section:
    """A reader for a backend's own keys in the ``family`` section (``consensus``, ``services``).

    Messages name the key as the person wrote it (``consensus.client_port``); hacore adds the
    file and the backend's name. The keys hacore reads itself in that section (``backend``,
    ``everywhere``...) never reach a backend, but a misspelling of one does, so they are
    offered in "did you mean" and listed among the known keys. Unknown keys are reported at
    once; the backend reads the others and calls :meth:`Section.done`, which raises every
    problem found, one line each. ``numbers_as_text``: see :class:`Section`.
    """
    sec = Section(
        "",
        family,
        settings,
        known,
        hints=SECTION_KEYS.get(family, ()),
        numbers_as_text=numbers_as_text,
    )
    sec.reject_unknown()
    return sec


class Problems:
    """Every problem found while reading one configuration, in the order found.

    Each is one complete line (file, key, what is wrong), so they can be printed as they are.
    """

    def __init__(self) -> None:
        self.errors: list[ConfigError] = []

    def __len__(self) -> int:
        return len(self.errors)

    def add(self, err: ConfigError) -> None:
        self.errors.append(err)

    def attempt(self, check: Callable[[], T], fallback: T) -> T:
        """``check()``, or ``fallback`` with its ConfigError recorded."""
        try:
            return check()
        except ConfigError as err:
            self.add(err)
            return fallback

    def raise_if_any(self) -> None:
        """One problem is raised as it is (its class intact); several as one error, a line each."""
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise ConfigError("\n".join(str(err) for err in self.errors))


class Section:
    """One mapping of the raw configuration, read key by key.

    ``prefix`` is the section's dotted path (``"timing"``), used to name keys in messages;
    ``context`` (``config error in node.yaml``) starts every line when given. A reader that
    meets a bad value records the problem in ``problems`` and returns the default (or a
    placeholder of the right type), so reading goes on and finds the next problem; the caller
    raises them all at the end (:meth:`done`). A section that is not a mapping at all is one
    problem: its keys are not read, so it does not also report each of them as missing; nor
    are those of a required section that is absent.
    """

    def __init__(
        self,
        context: str,
        prefix: str,
        raw: Any,
        known: Iterable[str] = (),
        *,
        problems: Problems | None = None,
        hints: Iterable[str] = (),
        required: str = "",
        numbers_as_text: bool = False,
    ) -> None:
        """``required``: what the section is for, when it must be given.

        ``numbers_as_text``: a number may also be written as a string (``port: "8873"``),
        and a whole number as a float, as some backends have always read them; a section
        hacore reads itself wants YAML numbers."""
        self.context = context
        self.prefix = prefix
        self.problems = Problems() if problems is None else problems
        self.known = tuple(known)
        #: keys read elsewhere, offered in "did you mean" but not accepted here
        self.hints = tuple(hints)
        self.clean = True
        self.numbers_as_text = numbers_as_text
        self._muted = False
        self._rejected = False
        self._meant: set[str] = set()
        self.raw: Mapping[str, Any] = {}
        if raw is None and required:
            self.problem(f"{prefix} is required: {required}")
            self._muted = True
            return
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            where = prefix or "the configuration"
            self.problem(f"{where} must be a mapping of keys to values (got {show(raw)})")
            self._muted = True
            return
        for key in raw:
            if not isinstance(key, str):
                self.problem(f"{self.where('')}keys must be strings (got {show(key)})")
                self._muted = True
                return
        self.raw = raw

    def line(self, message: str) -> str:
        return f"{self.context}: {message}" if self.context else message

    def fail(self, message: str) -> NoReturn:
        raise ConfigError(self.line(message))

    def problem(self, message: str) -> None:
        """Record a problem and go on reading."""
        self.clean = False
        self.problems.add(ConfigError(self.line(message)))

    def attempt(self, check: Callable[[], T], fallback: T) -> T:
        """``check()``, or ``fallback`` with the ConfigError it raised recorded."""
        before = len(self.problems)
        value = self.problems.attempt(check, fallback)
        if len(self.problems) != before:
            self.clean = False
        return value

    def passes(self, check: Callable[[], object]) -> bool:
        """Whether ``check()`` raised no ConfigError; the error is recorded when it did."""
        before = len(self.problems)
        self.attempt(check, None)
        return len(self.problems) == before

    def done(self) -> None:
        """Raise every problem recorded so far; a backend calls it before building its record."""
        self.problems.raise_if_any()

    def where(self, key: str) -> str:
        """``timing.ttl`` for a key, or ``timing: `` style prefix when ``key`` is empty."""
        if not key:
            return f"{self.prefix}: " if self.prefix else ""
        return f"{self.prefix}.{key}" if self.prefix else key

    def reject_unknown(self, elsewhere: Mapping[str, str] | None = None) -> None:
        """Record every key not in ``known``, each with the closest known one as a hint.

        ``elsewhere`` maps keys of other sections to their section, for "ttl belongs in
        timing" hints. Once per section: a second call finds nothing new.
        """
        if self._rejected:
            return
        self._rejected = True
        known = sorted({*self.known, *self.hints})
        for key in self.raw:
            if key in self.known:
                continue
            place = f"in {self.prefix}" if self.prefix else "at top level"
            hint = ""
            if elsewhere and key in elsewhere:
                hint = f'; "{key}" belongs in the {elsewhere[key]} section'
            if not hint:
                meant = closest(key, known)
                if meant:
                    hint = f'; did you mean "{meant}"?'
                    self._meant.add(meant)
            if not hint:
                hint = f" (known keys: {', '.join(known)})"
            self.problem(f'unknown key "{key}" {place}{hint}')

    def extra(self) -> dict[str, Any]:
        """Every key not in ``known`` (a backend's own settings)."""
        return {k: v for k, v in self.raw.items() if k not in self.known}

    def given(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def _get(self, key: str, default: Any, what: str) -> Any:
        """The value, the default, or ``_MISSING`` (recorded) when a required key is absent.

        A required key that an unknown key was probably meant to be is not reported again.
        """
        value = self.raw.get(key)
        if value is None:
            if default is _MISSING and not self._muted and key not in self._meant:
                self.problem(f"{self.where(key)} is required: {what}")
            return default
        return value

    def _bad(self, key: str, what: str, value: Any, fallback: T) -> T:
        self.problem(f"{self.where(key)} must be {what} (got {show(value)})")
        return fallback

    def _numeric(self, value: Any) -> Any:
        """``value`` as a number where ``numbers_as_text`` allows it; else as it is."""
        if not self.numbers_as_text or isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    def number(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        what: str = "a number > 0",
        low: float | None = None,
        high: float | None = None,
    ) -> float:
        """A finite number > 0; with ``low`` (and ``high``) one in ``low..high`` instead,
        the limits added to ``what`` in the message."""
        value = self._get(key, default, what)
        fallback = (1.0 if low is None else low) if default is _MISSING else float(default)
        if value is _MISSING:
            return fallback
        value = self._numeric(value)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if low is not None:
            limits = f"{low:g}-{high:g}" if high is not None else f">= {low:g}"
            if (
                not ok
                or not math.isfinite(value)
                or not low <= value <= (math.inf if high is None else high)
            ):
                return self._bad(key, f"{what} {limits}", value, fallback)
            return float(value)
        if not ok or not math.isfinite(value) or value <= 0:
            return self._bad(key, what, value, fallback)
        return float(value)

    def integer(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        low: int,
        high: int | None = None,
        what: str = "a whole number",
    ) -> int:
        """A whole number in ``low..high``; ``what`` names the unit (``a number of ms``)."""
        value = self._get(key, default, what)
        fallback = low if default is _MISSING else int(default)
        if value is _MISSING:
            return fallback
        value = self._numeric(value)
        if not isinstance(value, int) or isinstance(value, bool):
            return self._bad(key, what, value, fallback)
        if value < low or (high is not None and value > high):
            limits = f"{low}-{high}" if high is not None else f">= {low}"
            return self._bad(key, f"{what} {limits}", value, fallback)
        return value

    def count(self, key: str, default: int, *, what: str) -> int:
        value = self.optional_count(key, what=what)
        return default if value is None else value

    def optional_count(self, key: str, *, what: str) -> int | None:
        """An integer >= 0, or None when not given."""
        value = self.raw.get(key)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return self._bad(key, what, value, None)
        return value

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self._get(key, default, "")
        # YAML 1.1 reads a bare on/off as a boolean.
        if isinstance(value, bool):
            value = "on" if value else "off"
        if value not in choices:
            return self._bad(key, f"one of {', '.join(choices)}", value, default)
        return str(value)

    def boolean(self, key: str, default: Any = _MISSING) -> bool:
        value = self._get(key, default, "true or false")
        fallback = False if default is _MISSING else bool(default)
        if value is _MISSING:
            return fallback
        if not isinstance(value, bool):
            return self._bad(key, "true or false", value, fallback)
        return value

    def string(self, key: str, default: Any = _MISSING, *, what: str = "a non-empty string") -> str:
        value = self._get(key, default, what)
        fallback = "" if default is _MISSING else str(default)
        if value is _MISSING:
            return fallback
        if not isinstance(value, str) or not value.strip():
            return self._bad(key, what, value, fallback)
        return value

    def optional_string(self, key: str, *, what: str = "a non-empty string") -> str | None:
        """A string, or None when the key is absent, null or empty."""
        value = self.raw.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str) or not value.strip():
            return self._bad(key, what, value, None)
        return value

    def optional_secret(self, key: str, *, what: str) -> str | None:
        """Like :meth:`optional_string` but never shows the value: it may be a password."""
        value = self.raw.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            self.problem(f"{self.where(key)} must be {what} (got a {type(value).__name__})")
            return None
        return value

    def secret(self, key: str, *, what: str) -> str:
        """Like :meth:`string` but never shows the value: it may be a password."""
        value = self._get(key, _MISSING, what)
        if value is _MISSING:
            return ""
        if not isinstance(value, str) or not value:
            self.problem(f"{self.where(key)} must be {what} (got a {type(value).__name__})")
            return ""
        return value

    def name(self, key: str, default: Any = _MISSING, *, what: str = "a name") -> str:
        value = self._get(key, default, what)
        fallback = "" if default is _MISSING else str(default)
        if value is _MISSING:
            return fallback
        if not self.passes(lambda: check_name(value, self.where(key), self.fail, what=what)):
            return fallback
        return str(value)

    def port(self, key: str, default: Any = _MISSING) -> int:
        value = self._get(key, default, "a TCP port number")
        fallback = 1 if default is _MISSING else int(default)
        if value is _MISSING:
            return fallback
        value = self._numeric(value)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
            return self._bad(key, "a TCP port number 1-65535", value, fallback)
        return value

    def host(self, key: str) -> str:
        value = self.string(key, what="the IP address or DNS name other nodes reach this one at")
        if not value:
            return value
        return value if self.passes(lambda: check_host(value, self.where(key), self.fail)) else ""

    def optional_path(self, key: str) -> Path | None:
        """An absolute path, or None when the key is absent or null."""
        return self.absolute_path(key) if self.given(key) else None

    def absolute_path(self, key: str, default: Any = _MISSING) -> Path:
        value = self._get(key, default, "an absolute path")
        fallback = Path("/") if default is _MISSING else Path(default)
        if value is _MISSING:
            return fallback
        if not isinstance(value, str | Path) or not str(value) or not Path(value).is_absolute():
            return self._bad(key, "an absolute path", value, fallback)
        return Path(value)

    def string_list(self, key: str, *, what: str, names: bool = False) -> tuple[str, ...]:
        value = self._get(key, [], what)
        if not isinstance(value, list | tuple):
            return self._bad(key, f"a list of {what}", value, ())
        seen: list[str] = []
        for index, item in enumerate(value):
            where = f"{self.where(key)}[{index}]"
            if names:
                if not self.passes(partial(check_name, item, where, self.fail, what=what)):
                    continue
            elif not isinstance(item, str) or not item.strip():
                self.problem(f"{where} must be one of {what} (got {show(item)})")
                continue
            if item in seen:
                self.problem(f'{self.where(key)} lists "{item}" twice')
                continue
            seen.append(item)
        return tuple(seen)

    def mapping(self, key: str) -> dict[str, Any]:
        nested = Section(self.context, self.where(key), self.raw.get(key), problems=self.problems)
        return dict(nested.raw)


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


TLS_OFF_WARNING = (
    "tls.enabled is false: the agent API (with its credentials), the store and replication "
    "travel in clear text and nobody proves who they are, so anyone on the network can read "
    "and write the store and take over this cluster; use it only on a lab network "
    "(docs/security.md)"
)


def security_warnings(tls_enabled: bool) -> list[str]:
    """What ``config check`` and the agent's start warn about (not errors: a lab may want it)."""
    return [] if tls_enabled else [TLS_OFF_WARNING]


def is_dns_name(value: str) -> bool:
    """A host name as DNS has it: dot-separated labels of letters, digits and hyphens, 253
    characters at most, the last one not all digits (so no IP address passes)."""
    labels = value.rstrip(".").split(".")
    return (
        0 < len(value) <= 253
        and all(_HOST_LABEL_RE.fullmatch(label) for label in labels)
        and not labels[-1].isdigit()
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
