"""The ``replication`` settings of the postgresql backend, checked before anything runs.

Everything is validated once, here, so later steps never meet a half-valid value: a typo in
a setting name, a PostgreSQL parameter the plugin must own itself, or binaries that are too
old are all reported as one clear :class:`~hacore.errors.ConfigError`.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import attrs

from hacore.config.check import backend_settings, show
from hacore.errors import ConfigError

SYNC_MODES = ("off", "on", "strict")
MIN_MAJOR = 15
TOOLS = ("initdb", "pg_ctl", "postgres", "pg_basebackup", "pg_rewind", "pg_controldata")
SUPERUSER = "postgres"

KNOWN = (
    "port",
    "bin_dir",
    "superuser_password",
    "replication_user",
    "database",
    "parameters",
    "synchronous",
    "os_user",
    "listen_addresses",
    "locale",
    "clone_max_rate",
    "start_timeout",
    "stop_timeout",
    "clients",
)

#: What a ``clients`` row may ask of a client: a password (scram), or a client certificate
#: alone (``cert``, TLS only). Never md5, trust or password: those send or need no secret.
CLIENT_METHODS = ("scram-sha-256", "cert")
CLIENT_KEYS = frozenset({"network", "method", "client_cert", "database", "user"})

#: Parameters the plugin sets per node or per role. A clone or rewind copies the source's
#: configuration, so none of these may come from a file that travels with the data.
MANAGED_PARAMETERS = frozenset(
    {
        "port",
        "listen_addresses",
        "unix_socket_directories",
        "hba_file",
        "ident_file",
        "config_file",
        "data_directory",
        "external_pid_file",
        "cluster_name",
        "primary_conninfo",
        "primary_slot_name",
        "synchronous_standby_names",
        "include",
        "include_if_exists",
        "include_dir",
    }
)

#: What replication needs; ``parameters`` may override the sizes, not turn the features off.
DEFAULT_PARAMETERS: Mapping[str, str] = {
    "wal_level": "replica",
    "hot_standby": "on",
    "wal_log_hints": "on",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "wal_keep_size": "256MB",
    "recovery_target_timeline": "latest",
    "password_encryption": "scram-sha-256",
    # a standby's silence is noticed within seconds (sql.STANDBY_SILENCE_S)
    "wal_receiver_status_interval": "1s",
}

_IDENT = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_PARAM = re.compile(r"[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)?")
_RATE = re.compile(r"[1-9][0-9]*[kM]?")
_VERSION = re.compile(r"\(PostgreSQL\) (\d+)")
_REQUIRED_ON = {"hot_standby": "standbys must answer read-only queries"}
_OFF = {"off", "false", "no", "0"}


@attrs.frozen
class ClientNetwork:
    """One network applications may connect from (a ``hostssl`` row, ``host`` without TLS).

    ``network`` is normalised (``10.0.0.7/24`` is refused rather than silently widened)."""

    network: str
    method: str = "scram-sha-256"
    client_cert: bool = False
    database: str = "all"
    user: str = "all"


@attrs.frozen
class PgSettings:
    bin_dir: Path
    major: int
    os_user: str
    port: int = 5432
    superuser_password: str | None = attrs.field(default=None, repr=False)
    replication_user: str = "replicator"
    database: str = "postgres"
    parameters: Mapping[str, str] = attrs.field(factory=dict)
    synchronous: str = "off"
    listen_addresses: str | None = None
    locale: str = "C.UTF-8"
    clone_max_rate: str | None = None
    start_timeout: float = 120.0
    stop_timeout: float = 60.0
    clients: tuple[ClientNetwork, ...] = ()

    @property
    def strict(self) -> bool:
        return self.synchronous == "strict"

    def server_parameters(self) -> dict[str, str]:
        """The cluster-wide parameters in force: the plugin's defaults, then the user's."""
        return {**DEFAULT_PARAMETERS, **self.parameters}


def parse_settings(raw: Mapping[str, Any]) -> PgSettings:
    """Every problem at once, one line each; the binaries are looked at only when
    ``bin_dir`` names a usable directory."""
    sec = backend_settings("replication", raw, KNOWN)
    bin_dir = sec.attempt(lambda: _bin_dir(raw.get("bin_dir")), None)
    major = MIN_MAJOR if bin_dir is None else sec.attempt(lambda: server_major(bin_dir), MIN_MAJOR)
    seconds = "a number of seconds > 0"
    settings = PgSettings(
        bin_dir=bin_dir or Path("/"),
        major=major,
        os_user=sec.attempt(lambda: _os_user(raw.get("os_user")), ""),
        port=sec.port("port", 5432),
        superuser_password=sec.optional_secret("superuser_password", what="a string"),
        replication_user=sec.attempt(
            lambda: _identifier(raw, "replication_user", "replicator"), "replicator"
        ),
        database=sec.attempt(lambda: _identifier(raw, "database", "postgres"), "postgres"),
        parameters=sec.attempt(lambda: _parameters(raw.get("parameters")), {}),
        synchronous=sec.attempt(lambda: _sync_mode(raw.get("synchronous", "off")), "off"),
        listen_addresses=sec.optional_string("listen_addresses"),
        locale=sec.optional_string("locale") or "C.UTF-8",
        clone_max_rate=sec.attempt(lambda: _rate(raw.get("clone_max_rate")), None),
        start_timeout=sec.number("start_timeout", 120.0, what=seconds),
        stop_timeout=sec.number("stop_timeout", 60.0, what=seconds),
        clients=sec.attempt(lambda: parse_clients(raw.get("clients")), ()),
    )
    sec.done()
    return settings


def parse_clients(raw: object) -> tuple[ClientNetwork, ...]:
    """The ``clients`` list: each row a mapping with at least ``network`` (a CIDR)."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(
            "postgresql setting 'clients' must be a list of {network: CIDR, method: ...} rows"
        )
    return tuple(_client(row, index) for index, row in enumerate(raw))


def _client(row: object, index: int) -> ClientNetwork:
    where = f"postgresql setting 'clients' row {index + 1}"
    if isinstance(row, str):
        row = {"network": row}
    if not isinstance(row, Mapping):
        raise ConfigError(f"{where} must be a mapping with a 'network' (got {row!r})")
    unknown = sorted(set(row) - CLIENT_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(str, unknown))}; "
            f"known: {', '.join(sorted(CLIENT_KEYS))}"
        )
    network = row.get("network")
    if not isinstance(network, str) or not network:
        raise ConfigError(f"{where} needs 'network', a CIDR such as 10.0.0.0/24")
    try:
        parsed = ipaddress.ip_network(network, strict=True)
    except ValueError as err:
        raise ConfigError(f"{where}: 'network' {network!r} is not a CIDR network: {err}") from None
    method = row.get("method", "scram-sha-256")
    if method not in CLIENT_METHODS:
        raise ConfigError(
            f"{where}: 'method' must be one of {', '.join(CLIENT_METHODS)} (got {method!r})"
        )
    client_cert = row.get("client_cert", False)
    if not isinstance(client_cert, bool):
        raise ConfigError(f"{where}: 'client_cert' must be true or false (got {client_cert!r})")
    return ClientNetwork(
        network=str(parsed),
        method=str(method),
        client_cert=client_cert,
        database=_client_name(row, "database", where),
        user=_client_name(row, "user", where),
    )


def _client_name(row: Mapping[str, Any], key: str, where: str) -> str:
    value = row.get(key, "all")
    if not isinstance(value, str) or not (value == "all" or _IDENT.fullmatch(value)):
        raise ConfigError(
            f"{where}: '{key}' must be 'all' or a lower-case SQL name (got {value!r})"
        )
    if key == "database" and value == "replication":
        raise ConfigError(f"{where}: 'database' cannot be 'replication': only members replicate")
    return value


def check_synchronous(raw: Mapping[str, Any], synchronous_mode: str) -> None:
    """``synchronous`` must say what ``failover.synchronous_mode`` says.

    The agent names a synchronous standby only in ``on`` and ``strict`` mode, and only a
    ``synchronous: strict`` database refuses commits until one is named (from bootstrap and
    after each promotion). So strict failover over a database that is not strict acknowledges
    writes on a new active alone, and a strict database under another mode holds commits the
    agent expects to go through. An invalid value is left to :func:`parse_settings`.
    """
    given = raw.get("synchronous")
    try:
        mode = _sync_mode("off" if given is None else given)
    except ConfigError:
        return
    if mode == synchronous_mode or (given is None and synchronous_mode != "strict"):
        return
    if synchronous_mode == "strict":
        fix = (
            "a promoted database would accept writes before any standby has them; "
            "set replication.synchronous: strict"
        )
    elif mode == "strict":
        fix = (
            "the database would hold every commit while no standby is synchronous, which the "
            "agent expects only in strict mode; set failover.synchronous_mode: strict too"
        )
    else:
        fix = (
            "the agent picks synchronous standbys by failover.synchronous_mode: give both one value"
        )
    shown = mode if given is not None else "off (not set)"
    raise ConfigError(
        f"replication.synchronous is {shown} but failover.synchronous_mode is "
        f"{synchronous_mode}: {fix}"
    )


def default_bin_dir() -> Path | None:
    """The newest installed PostgreSQL: Debian's, then RHEL's layout, then ``pg_ctl`` on PATH."""
    candidates = [
        *Path("/usr/lib/postgresql").glob("*/bin"),
        *Path("/usr").glob("pgsql-*/bin"),
    ]
    found = [d for d in candidates if (d / "pg_ctl").is_file()]
    if found:
        return max(found, key=lambda d: _numeric_version(d.parent.name.removeprefix("pgsql-")))
    on_path = shutil.which("pg_ctl")
    return Path(on_path).resolve().parent if on_path else None


@lru_cache(maxsize=8)
def server_major(bin_dir: Path) -> int:
    try:
        out = subprocess.run(
            [str(bin_dir / "pg_ctl"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise ConfigError(f"cannot run {bin_dir / 'pg_ctl'}: {err}") from None
    match = _VERSION.search(out)
    if not match:
        raise ConfigError(f"cannot tell the PostgreSQL version from {out.strip()!r}")
    major = int(match.group(1))
    if major < MIN_MAJOR:
        raise ConfigError(
            f"PostgreSQL {major} in {bin_dir} is too old: the postgresql backend needs "
            f"{MIN_MAJOR} or newer (pg_checkpoint role, reloadable primary_conninfo)"
        )
    return major


def _numeric_version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)) or (0,)


def _bin_dir(raw: object) -> Path:
    if raw is None or raw == "":
        found = default_bin_dir()
        if found is None:
            raise ConfigError(
                "no PostgreSQL binaries found (looked in /usr/lib/postgresql/*/bin, "
                "/usr/pgsql-*/bin and PATH): install PostgreSQL or set 'bin_dir'"
            )
        raw = found
    if not isinstance(raw, str | os.PathLike):
        raise ConfigError(f"replication.bin_dir must be a path (got {show(raw)})")
    path = Path(raw)
    missing = [tool for tool in TOOLS if not (path / tool).is_file()]
    if missing:
        raise ConfigError(
            f"postgresql 'bin_dir' {path} lacks {', '.join(missing)}: "
            "give the directory holding pg_ctl, initdb, pg_basebackup and pg_rewind"
        )
    return path


def _os_user(raw: object) -> str:
    current = pwd.getpwuid(os.geteuid()).pw_name
    if raw is None or raw == "":
        if os.geteuid() != 0:
            return current
        raw = "postgres"
    if not isinstance(raw, str):
        raise ConfigError(f"replication.os_user must be a user name (got {show(raw)})")
    try:
        pwd.getpwnam(raw)
    except KeyError:
        raise ConfigError(f"postgresql 'os_user' {raw!r} is not a user on this machine") from None
    if raw == "root":
        raise ConfigError("postgresql 'os_user' cannot be root: PostgreSQL refuses to run as root")
    if os.geteuid() != 0 and raw != current:
        raise ConfigError(
            f"postgresql 'os_user' is {raw!r} but hacore runs as {current!r}: only root can run "
            "the server as another user"
        )
    return raw


def _identifier(raw: Mapping[str, Any], name: str, default: str) -> str:
    value = raw.get(name, default)
    if not isinstance(value, str) or not _IDENT.fullmatch(value):
        raise ConfigError(
            f"replication.{name} must be a lower-case SQL name of letters, digits and "
            f"'_' (got {show(value)})"
        )
    return value


def _sync_mode(raw: object) -> str:
    # YAML 1.1 reads a bare on/off as a boolean.
    if raw is True:
        return "on"
    if raw is False:
        return "off"
    if raw not in SYNC_MODES:
        raise ConfigError(
            f"replication.synchronous must be one of {', '.join(SYNC_MODES)} (got {show(raw)})"
        )
    return str(raw)


def _rate(raw: object) -> str | None:
    if raw is None or raw == "":
        return None
    text = str(raw)
    if isinstance(raw, bool) or not _RATE.fullmatch(text):
        raise ConfigError(
            f"replication.clone_max_rate must be kB per second, or end in k or M "
            f"such as '50M' (got {show(raw)})"
        )
    return text


def _parameters(raw: object) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(
            "replication.parameters must be a mapping of postgresql.conf names to values"
        )
    result: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not _PARAM.fullmatch(key):
            raise ConfigError(f"postgresql parameter name {key!r} is not a valid setting name")
        if key in MANAGED_PARAMETERS:
            raise ConfigError(
                f"postgresql parameter {key!r} is set by hacore per node; "
                "use the backend's own settings instead"
            )
        if isinstance(value, bool):
            text = "on" if value else "off"
        elif isinstance(value, int | float | str):
            text = str(value)
        else:
            raise ConfigError(f"postgresql parameter {key!r} must be a string, number or boolean")
        if key in _REQUIRED_ON and text.lower() in _OFF:
            raise ConfigError(f"postgresql parameter {key!r} must stay on: {_REQUIRED_ON[key]}")
        if key == "wal_level" and text not in ("replica", "logical"):
            raise ConfigError("postgresql parameter 'wal_level' must be replica or logical")
        result[key] = text
    return result
