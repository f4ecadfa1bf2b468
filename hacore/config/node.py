"""A node's configuration (``node.yaml``), validated once into immutable records.

Everything is checked when the file is loaded, before any server is touched: unknown keys (with
a "did you mean"), wrong types, unusable names and the timing rule that makes self-fencing
safe. Every problem is one :class:`~hacore.errors.ConfigError` line that names the key, says
what is expected and shows what was given. ``docs/configuration.md`` documents every option.
The ``timing`` section and its profiles are read in :mod:`hacore.config.timing` (its public
names are importable from here too).
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

import attrs

from hacore.config.backend_checks import BackendLookup, check_backend
from hacore.config.check import (
    SECTION_KEYS,
    Problems,
    Section,
    check_name,
    is_dns_name,
    show,
)
from hacore.config.logging_setup import LoggingSettings, read_logging
from hacore.config.options import deep_merge, read_source
from hacore.config.timing import PROFILE_STORE_SETTINGS as PROFILE_STORE_SETTINGS
from hacore.config.timing import TIMING_PROFILES as TIMING_PROFILES
from hacore.config.timing import TimingSettings, managed_store_settings, read_timing
from hacore.config.timing import timing_mapping as timing_mapping
from hacore.errors import ConfigError

DEFAULT_API_PORT = 8008
DEFAULT_DATA_DIR = Path("/var/lib/hacore")
SYNC_MODES = ("off", "on", "strict")
FAILSAFE_MODES = ("off", "on")
MINORITY_MODES = ("off", "on")
_PASSWORD_HASH_RE = re.compile(r"\$?[A-Za-z0-9_-]+\$.+")


def _frozen_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(copy.deepcopy(dict(value)))


@attrs.frozen
class ClusterSettings:
    """Which cluster this node belongs to; ``namespace`` roots its keys in the store."""

    name: str = "hacore"
    namespace: str = "hacore"


@attrs.frozen
class NodeSettings:
    """This node: its unique name, the address peers reach it at, its API port, its data."""

    name: str
    host: str
    api_port: int = DEFAULT_API_PORT
    data_dir: Path = DEFAULT_DATA_DIR
    #: more names for the node certificate, beside ``host``: HAProxy's ``verifyhost`` and
    #: ``verify-full`` clients match DNS names only
    dns_names: tuple[str, ...] = ()


@attrs.frozen
class CheckSettings:
    #: a check's result stays valid for ``check.ttl * check_ttl_multiplier`` seconds
    check_ttl_multiplier: float = 1
    #: True: the first failing check makes the node unhealthy at once, without waiting for TTLs
    check_fail_fast: bool = True
    #: seconds after a promotion during which failing active-only checks are not held against
    #: the new active (its active-only services are still starting); 0: no grace
    active_grace: float = 10.0


@attrs.frozen
class FailoverSettings:
    """Who may take over, and how switchovers are paced."""

    #: "off"; "on": only a synchronous standby (or the former active) may campaign;
    #: "strict": also, the active refuses writes while no synchronous standby is connected
    synchronous_mode: str = "off"
    #: bytes; a standby further behind the last active never campaigns (None: no limit)
    maximum_lag_on_failover: int | None = None
    #: seconds a node waits before campaigning again after its promotion was vetoed
    promote_backoff: float = 10.0
    #: seconds after which an unanswered switchover request is dropped
    switchover_timeout: float = 30.0
    #: bytes; the active only hands over to a target at most this far behind
    switchover_max_lag: int = 16 * 1024 * 1024
    #: "off"; "on": with the whole store unreachable, the active stays active while every
    #: member's agent confirms it over the API (docs/fencing.md, "Failsafe mode")
    failsafe_mode: str = "off"
    #: "off"; "on": an active cut off from the store's majority stays active, and on the
    #: reconnection the losing side's writes are exported before it is rewound
    #: (docs/fencing.md, "Minority mode")
    minority_mode: str = "off"


@attrs.frozen
class BackendSection:
    """A family's section: the registered backend's name, and its own keys as ``settings``."""

    backend: str
    settings: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping)


@attrs.frozen
class ConsensusSection(BackendSection):
    #: True: hacore runs the store's server on this node (``cluster start`` bootstraps it,
    #: ``cluster join`` adds a member); False: ``settings`` point at an existing store.
    managed: bool = False


@attrs.frozen
class FilesyncSection(BackendSection):
    #: directories mirrored from the active to the standbys
    directories: tuple[Path, ...] = ()


@attrs.frozen
class ServicesSection(BackendSection):
    #: started on the active only, stopped on demotion (the manager's workers, its broker)
    active_only: tuple[str, ...] = ()
    #: kept running on every node whatever its role (a local metrics exporter)
    everywhere: tuple[str, ...] = ()


@attrs.frozen
class ApiAuth:
    username: str
    password_hash: str = attrs.field(repr=False)


#: roles of ``api.users``, least first; ``api.auth`` is the admin (docs/security.md)
API_ROLES = ("probe", "read")


@attrs.frozen
class ApiUser:
    """A less privileged API user: ``probe`` reads the probes and metrics only, ``read`` also
    the cluster views; neither may change anything or fetch a join ticket."""

    username: str
    password_hash: str = attrs.field(repr=False)
    role: str = "probe"


@attrs.frozen
class ApiSettings:
    #: None until ``cluster start`` creates the credentials; without it the API refuses
    #: everything that needs authentication.
    auth: ApiAuth | None = None
    #: True: even ``/status`` (for load balancers) needs credentials
    status_requires_auth: bool = False
    #: True: ``/metrics`` is served to anyone who reaches the port (by default it needs the
    #: probe role or higher, as a scrape with ``basic_auth`` sends)
    metrics_without_credentials: bool = False
    #: the probe and read-only users (``api.auth`` is the one admin)
    users: tuple[ApiUser, ...] = ()


@attrs.frozen
class TlsSettings:
    """Node-to-node TLS with the cluster's internal CA (DESIGN §5).

    On by default: ``cluster start`` creates the CA, ``cluster join`` hands it over, and the
    agent API, the managed store and database replication then use it. Off only for a lab on a
    network where nobody can listen or pretend to be a node; every node of a cluster must
    agree, which the join checks.
    """

    enabled: bool = True


@attrs.frozen
class PluginSettings:
    #: entry point names not to load (added to ``$HACORE_BLOCK_PLUGINS``)
    block: tuple[str, ...] = ()
    #: free-form sections for third-party plugins, by plugin name
    settings: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_mapping)


@attrs.frozen(kw_only=True)
class NodeConfig:
    node: NodeSettings
    consensus: ConsensusSection
    cluster: ClusterSettings = ClusterSettings()
    timing: TimingSettings = attrs.field(factory=TimingSettings)
    checks: CheckSettings = CheckSettings()
    failover: FailoverSettings = FailoverSettings()
    replication: BackendSection | None = None
    filesync: FilesyncSection | None = None
    services: ServicesSection | None = None
    api: ApiSettings = ApiSettings()
    tls: TlsSettings = TlsSettings()
    plugins: PluginSettings = PluginSettings()
    logging: LoggingSettings = attrs.field(factory=LoggingSettings)


#: keys found in exactly one section, for "ttl belongs in timing" hints at top level
_HOME_OF = {
    key: section
    for section, keys in SECTION_KEYS.items()
    for key in keys
    if sum(key in other for other in SECTION_KEYS.values()) == 1
}


#: the registry to check backends against, given the plugins the configuration allows
RegistryFor = Callable[[PluginSettings], BackendLookup]


# -------------------------------------------------------------------------------------------
# Loading
# -------------------------------------------------------------------------------------------


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    overrides: Mapping[str, Any] | None = None,
    registry: BackendLookup | None = None,
) -> NodeConfig:
    """Read, merge ``overrides`` (from ``--options``) over, and validate a configuration.

    With a ``registry`` the backend names must be registered ones, and each backend checks
    its own settings (``validate_settings``). Every problem found is reported, one line
    each, in a single :class:`ConfigError`.
    """
    raw, context = _load(source, overrides)
    return _build(raw, context, None if registry is None else lambda _plugins: registry)


def load_config_for(
    source: str | os.PathLike[str] | Mapping[str, Any],
    registry_for: RegistryFor,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> NodeConfig:
    """As :func:`load_config`, the registry chosen from the configuration's own ``plugins``
    section (``plugins.block`` decides which plugins load)."""
    raw, context = _load(source, overrides)
    return _build(raw, context, registry_for)


def validate_node_name(name: object) -> str:
    """Check a node name given outside a file (``--node-name``)."""

    def fail(message: str) -> NoReturn:
        raise ConfigError(message)

    check_name(name, "node name", fail, what="a node name")
    return str(name)


def _load(
    source: str | os.PathLike[str] | Mapping[str, Any], overrides: Mapping[str, Any] | None
) -> tuple[dict[str, Any], str]:
    raw, context = read_source(source)
    if overrides:
        raw = deep_merge(raw, overrides)
    return raw, context


def _build(raw: Mapping[str, Any], context: str, registry_for: RegistryFor | None) -> NodeConfig:
    """Read every section, whatever went wrong in the others, then raise all problems.

    A section with a problem still yields a record (defaults where values were bad), so the
    rest can be read; only backend sections read without a problem go to their backend.
    """
    problems = Problems()

    def section(name: str, required: str = "") -> Section:
        keys = SECTION_KEYS[name]
        return Section(context, name, raw.get(name), keys, problems=problems, required=required)

    top = Section(context, "", raw, SECTION_KEYS, problems=problems)
    top.reject_unknown(_HOME_OF)
    node = _node(section("node", "this node's name and host"))
    cluster = _cluster(section("cluster"))
    timing = read_timing(section("timing"))
    checks = _checks(section("checks"))
    failover_s = section("failover")
    failover = _failover(failover_s)

    backends: dict[str, BackendSection] = {}
    consensus_s = section("consensus", "the store that decides who is active, e.g. backend: etcd")
    managed = consensus_s.boolean("managed", False)
    backend_name = _backend_name(consensus_s)
    consensus = ConsensusSection(
        backend=backend_name,
        settings=managed_store_settings(consensus_s.extra(), timing, backend_name, managed),
        managed=managed,
    )
    if consensus_s.clean:
        backends["consensus"] = consensus
    replication = filesync = services = None
    if top.given("replication"):
        replication_s = section("replication")
        replication = BackendSection(_backend_name(replication_s), replication_s.extra())
        if replication_s.clean:
            backends["replication"] = replication
    if top.given("filesync"):
        filesync_s = section("filesync")
        filesync = _filesync(filesync_s)
        if filesync_s.clean:
            backends["filesync"] = filesync
    if top.given("services"):
        services_s = section("services")
        services = _services(services_s)
        if services_s.clean:
            backends["services"] = services

    api = _api(section("api"))
    tls = _tls(section("tls"))
    plugins_s = section("plugins")
    plugins = _plugins(plugins_s)
    logging_settings = read_logging(section("logging"))
    if registry_for is not None and plugins_s.clean:
        registry = registry_for(plugins)
        for key, backend in backends.items():
            check_backend(
                registry,
                key,
                backend,
                failover if failover_s.clean else None,
                problems,
                context,
                managed=isinstance(backend, ConsensusSection) and backend.managed,
                services=(
                    (*backend.active_only, *backend.everywhere)
                    if isinstance(backend, ServicesSection)
                    else None
                ),
            )
    problems.raise_if_any()
    return NodeConfig(
        node=node,
        cluster=cluster,
        timing=timing,
        checks=checks,
        failover=failover,
        consensus=consensus,
        replication=replication,
        filesync=filesync,
        services=services,
        api=api,
        tls=tls,
        plugins=plugins,
        logging=logging_settings,
    )


def _node(sec: Section) -> NodeSettings:
    sec.reject_unknown()
    return NodeSettings(
        name=sec.name("name", what="a node name"),
        host=sec.host("host"),
        api_port=sec.port("api_port", DEFAULT_API_PORT),
        data_dir=sec.absolute_path("data_dir", str(DEFAULT_DATA_DIR)),
        dns_names=_dns_names(sec),
    )


def _dns_names(sec: Section) -> tuple[str, ...]:
    names = sec.string_list("dns_names", what="DNS names")
    for name in names:
        if not is_dns_name(name):
            sec.problem(
                f"{sec.where('dns_names')}: {show(name)} is not a DNS name "
                "(an address goes in node.host)"
            )
    return tuple(n for n in names if is_dns_name(n))


def _cluster(sec: Section) -> ClusterSettings:
    sec.reject_unknown()
    name = sec.name("name", "hacore", what="a cluster name")
    return ClusterSettings(
        name=name, namespace=sec.name("namespace", name, what="a store namespace")
    )


def _checks(sec: Section) -> CheckSettings:
    sec.reject_unknown()
    return CheckSettings(
        check_ttl_multiplier=sec.number(
            "check_ttl_multiplier", 1, what="a number > 0 (check TTLs are multiplied by it)"
        ),
        check_fail_fast=sec.boolean("check_fail_fast", True),
        active_grace=_active_grace(sec),
    )


def _active_grace(sec: Section) -> float:
    value = sec.raw.get("active_grace")
    default = CheckSettings().active_grace
    if value is None:
        return default
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not 0 <= value < float("inf"):
        sec.problem(
            f"{sec.where('active_grace')} must be a number of seconds >= 0 (got {show(value)})"
        )
        return default
    return float(value)


def _failover(sec: Section) -> FailoverSettings:
    sec.reject_unknown()
    default = FailoverSettings()
    seconds = "a number of seconds > 0"
    return FailoverSettings(
        synchronous_mode=sec.choice("synchronous_mode", default.synchronous_mode, SYNC_MODES),
        maximum_lag_on_failover=sec.optional_count(
            "maximum_lag_on_failover", what="a number of bytes >= 0, or null for no limit"
        ),
        promote_backoff=sec.number("promote_backoff", default.promote_backoff, what=seconds),
        switchover_timeout=sec.number(
            "switchover_timeout", default.switchover_timeout, what=seconds
        ),
        switchover_max_lag=sec.count(
            "switchover_max_lag", default.switchover_max_lag, what="a number of bytes >= 0"
        ),
        failsafe_mode=sec.choice("failsafe_mode", default.failsafe_mode, FAILSAFE_MODES),
        minority_mode=sec.choice("minority_mode", default.minority_mode, MINORITY_MODES),
    )


def _backend_name(sec: Section) -> str:
    return sec.name(
        "backend", what=f"the name of a registered {sec.prefix} backend (for example etcd)"
    )


def _filesync(sec: Section) -> FilesyncSection:
    directories: list[Path] = []
    for index, entry in enumerate(sec.string_list("directories", what="absolute paths")):
        path = Path(entry)
        where = f"filesync.directories[{index}]"
        if not path.is_absolute():
            sec.problem(f"{where} must be an absolute path (got {show(entry)})")
            continue
        overlapping = [d for d in directories if path.is_relative_to(d) or d.is_relative_to(path)]
        if overlapping:
            sec.problem(f"{where} ({path}) overlaps {overlapping[0]}: list each tree once")
            continue
        directories.append(path)
    return FilesyncSection(_backend_name(sec), sec.extra(), directories=tuple(directories))


def _services(sec: Section) -> ServicesSection:
    active_only = sec.string_list("active_only", what="service names")
    everywhere = sec.string_list("everywhere", what="service names")
    for name in active_only:
        if name in everywhere:
            sec.problem(f'service "{name}" is listed in both active_only and everywhere')
    return ServicesSection(
        _backend_name(sec), sec.extra(), active_only=active_only, everywhere=everywhere
    )


def _api(sec: Section) -> ApiSettings:
    sec.reject_unknown()
    auth = None
    if sec.given("auth"):
        auth_s = Section(
            sec.context,
            "api.auth",
            sec.raw["auth"],
            ("username", "password_hash"),
            problems=sec.problems,
        )
        auth_s.reject_unknown()
        username = auth_s.string("username", what="the API user name")
        password_hash = auth_s.secret(
            "password_hash", what='a password hash such as "pbkdf2_sha256$..."'
        )
        if password_hash and not _PASSWORD_HASH_RE.fullmatch(password_hash):
            auth_s.problem(
                "api.auth.password_hash must be a password hash such as "
                '"pbkdf2_sha256$<iterations>$<salt>$<hash>", not a plain password '
                "(the value is not shown)"
            )
        auth = ApiAuth(username, password_hash)
    requires = sec.boolean("status_requires_auth", False)
    if requires and not sec.given("auth"):
        sec.problem(
            "api.status_requires_auth is true but api.auth (username, password_hash) is unset"
        )
    open_metrics = sec.boolean("metrics_without_credentials", False)
    users = _api_users(sec, auth)
    return ApiSettings(
        auth=auth,
        status_requires_auth=requires,
        metrics_without_credentials=open_metrics,
        users=users,
    )


def _api_users(sec: Section, admin: ApiAuth | None) -> tuple[ApiUser, ...]:
    raw = sec.raw.get("users")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        sec.problem("api.users must be a list of {username, password_hash, role}")
        return ()
    users: list[ApiUser] = []
    for index, item in enumerate(raw):
        where = f"api.users[{index}]"
        user_s = Section(
            sec.context, where, item, ("username", "password_hash", "role"), problems=sec.problems
        )
        user_s.reject_unknown()
        username = user_s.string("username", what="the API user name")
        password_hash = user_s.secret(
            "password_hash", what='a password hash such as "pbkdf2_sha256$..."'
        )
        if password_hash and not _PASSWORD_HASH_RE.fullmatch(password_hash):
            user_s.problem(
                f"{where}.password_hash must be a password hash (the value is not shown)"
            )
        role = user_s.choice("role", "probe", API_ROLES)
        taken = {u.username for u in users} | ({admin.username} if admin else set())
        if username in taken:
            user_s.problem(f"{where}: the user name {username!r} is already used")
        users.append(ApiUser(username, password_hash, role))
    return tuple(users)


def _tls(sec: Section) -> TlsSettings:
    sec.reject_unknown()
    return TlsSettings(enabled=sec.boolean("enabled", True))


def _plugins(sec: Section) -> PluginSettings:
    sec.reject_unknown()
    settings = sec.mapping("settings")
    for name, value in settings.items():
        where = f"plugins.settings.{name}"
        if sec.passes(partial(check_name, name, where, sec.fail, what="a plugin name")):
            Section(sec.context, where, value, problems=sec.problems)
    return PluginSettings(
        block=sec.string_list("block", what="plugin names", names=True), settings=settings
    )
