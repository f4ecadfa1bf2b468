"""The settings every node of a cluster must agree on, as one record kept in the store.

Timing, the failover policy (with the synchronous mode), the check settings and the
PostgreSQL ``parameters`` decide how the nodes judge each other; two nodes that disagree on
``ttl`` or on ``maximum_lag_on_failover`` would not agree on who may take over. So they live
in the store (``cluster start`` seeds them from the first active's ``node.yaml``) and every
agent runs with ``node.yaml`` *with this part replaced* (:meth:`ClusterWide.apply_to`).
Everything else in ``node.yaml`` (names, addresses, ports, backends, TLS, credentials,
logging) is node-local.

A changed record is checked with the same readers and the same one-line messages as
``hacore config check`` (:func:`from_mapping`), and once applied to a node's configuration
again with every backend's own checks (:func:`validated_for`), so an invalid change is
refused before anything is written.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import attrs
import yaml

from hacore.config.backend_checks import BackendLookup
from hacore.config.check import SECTION_KEYS, Problems, Section, show
from hacore.config.node import (
    BackendSection,
    CheckSettings,
    FailoverSettings,
    NodeConfig,
    _checks,
    _failover,
    load_config,
)
from hacore.config.timing import TimingSettings, read_timing, timing_mapping
from hacore.config.write_back import changed_keys, to_mapping
from hacore.errors import ConfigError

#: the sections of ``node.yaml`` that are cluster-wide as a whole
SECTIONS = ("timing", "failover", "checks")
#: ``replication.parameters``: the PostgreSQL parameters (the only cluster-wide backend key)
PARAMETERS = "parameters"
#: every top-level key of the record
KEYS = (*SECTIONS, PARAMETERS)
#: how errors name the record when it did not come from a file
CONTEXT = "cluster settings"


def is_cluster_wide(key: str) -> bool:
    """Whether a dotted ``node.yaml`` key (``timing.ttl``) is one of the cluster-wide ones."""
    section = key.split(".", 1)[0]
    return section in SECTIONS or key.startswith(f"replication.{PARAMETERS}")


def _parameters_mapping(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value))


@attrs.frozen
class ClusterWide:
    """The cluster-wide part of a node's configuration (docs/configuration.md,
    "Cluster-wide settings")."""

    timing: TimingSettings = attrs.field(factory=TimingSettings)
    failover: FailoverSettings = attrs.field(factory=FailoverSettings)
    checks: CheckSettings = attrs.field(factory=CheckSettings)
    #: ``replication.parameters`` (postgresql.conf names to values, as text)
    parameters: Mapping[str, str] = attrs.field(factory=dict, converter=_parameters_mapping)

    @classmethod
    def from_config(cls, config: NodeConfig) -> ClusterWide:
        """What ``config`` (a node's ``node.yaml``) says of the cluster-wide settings."""
        raw = {} if config.replication is None else config.replication.settings
        return cls(
            timing=config.timing,
            failover=config.failover,
            checks=config.checks,
            parameters=_parameters(raw.get(PARAMETERS), Problems(), CONTEXT),
        )

    def to_mapping(self) -> dict[str, Any]:
        """Plain data (JSON, YAML) that :func:`from_mapping` reads back as this record."""
        return {
            "timing": timing_mapping(self.timing),
            "failover": attrs.asdict(self.failover),
            "checks": attrs.asdict(self.checks),
            PARAMETERS: dict(self.parameters),
        }

    def apply_to(self, config: NodeConfig) -> NodeConfig:
        """``config`` with its cluster-wide part replaced by this record: the configuration
        a node runs with. The parameters are left alone on a node without a replication
        section (nothing there would read them)."""
        replication = config.replication
        if replication is not None:
            settings = copy.deepcopy(dict(replication.settings))
            if self.parameters:
                settings[PARAMETERS] = dict(self.parameters)
            else:
                settings.pop(PARAMETERS, None)
            replication = BackendSection(replication.backend, settings)
        return attrs.evolve(
            config,
            timing=self.timing,
            failover=self.failover,
            checks=self.checks,
            replication=replication,
        )

    def differences(self, other: ClusterWide) -> list[str]:
        """Dotted names of the settings that differ (values not shown: a reader may log them)."""
        return changed_keys(self.to_mapping(), other.to_mapping())


def from_mapping(raw: object, *, context: str = CONTEXT) -> ClusterWide:
    """Read a record (the store's, an edited YAML), every problem at once, one line each,
    with the messages of ``config check``. Absent sections and keys take their defaults."""
    problems = Problems()
    top = Section(context, "", raw, KEYS, problems=problems)
    top.reject_unknown()

    def section(name: str) -> Section:
        return Section(context, name, top.raw.get(name), problems=problems, known=_known(name))

    timing = read_timing(section("timing"))
    failover = _failover(section("failover"))
    checks = _checks(section("checks"))
    parameters = _parameters(top.raw.get(PARAMETERS), problems, context)
    problems.raise_if_any()
    return ClusterWide(timing=timing, failover=failover, checks=checks, parameters=parameters)


def validated_for(
    settings: ClusterWide, config: NodeConfig, registry: BackendLookup | None
) -> NodeConfig:
    """``settings`` applied to ``config``, read again as ``config check`` would read the
    file (with ``registry``, every backend checks its own settings: the PostgreSQL plugin
    refuses a parameter it owns). Raises :class:`ConfigError` with every problem."""
    return load_config(to_mapping(settings.apply_to(config)), registry=registry)


def with_assignments(settings: ClusterWide, assignments: Mapping[str, str]) -> ClusterWide:
    """``settings`` with ``timing.ttl=8``-style assignments made (``cluster config set``).

    A value is read as YAML (``8`` a number, ``null`` none, ``on`` kept as the text ``on``
    where a choice expects it); ``parameters.NAME`` sets a PostgreSQL parameter, and
    ``parameters.NAME=null`` removes it. ``timing.profile=NAME`` takes every timing value
    from that profile, except those assigned in the same command: the record holds all four
    values, which would otherwise keep the old profile's.
    """
    data = settings.to_mapping()
    if "timing.profile" in assignments:
        data["timing"] = {}
    problems: list[str] = []
    for key, text in assignments.items():
        path = key.split(".")
        if len(path) != 2 or path[0] not in KEYS or not path[1]:
            problems.append(
                f"{key}: expected SECTION.KEY with SECTION one of {', '.join(KEYS)} "
                "(for example failover.maximum_lag_on_failover=1048576)"
            )
            continue
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        if path[0] == PARAMETERS:
            if value is None:
                data[PARAMETERS].pop(path[1], None)
            else:
                data[PARAMETERS][path[1]] = text if isinstance(value, dict | list) else value
            continue
        data[path[0]][path[1]] = value
    if problems:
        raise ConfigError("\n".join(f"{CONTEXT}: {line}" for line in problems))
    return from_mapping(data)


@attrs.frozen
class IgnoredOption:
    """A cluster-wide key that a node's ``--options`` set to another value than the cluster
    runs: kept in the node's configuration, but the store's value is what applies."""

    #: the key as ``hacore cluster config set`` names it (``parameters.work_mem``)
    key: str
    #: the key as ``--options`` and ``node.yaml`` name it (``replication.parameters.work_mem``)
    option: str
    #: the value the options gave (as the cluster would read it, when it reads)
    given: object
    #: the value the cluster runs (None: not set, the default applies)
    cluster: object


def ignored_options(
    settings: ClusterWide | None, overrides: Mapping[str, Any]
) -> list[IgnoredOption]:
    """The cluster-wide keys among ``overrides`` (a join's ``--options``, nested like
    ``node.yaml``) that do not take effect because the cluster (``settings``, the store's
    record) runs another value. With ``settings`` None (unknown), every cluster-wide key
    given is listed, its cluster value None."""
    given: dict[str, tuple[str, object]] = {}
    for section in SECTIONS:
        values = overrides.get(section)
        if isinstance(values, Mapping):
            for name, value in values.items():
                given[f"{section}.{name}"] = (f"{section}.{name}", value)
    replication = overrides.get("replication")
    parameters = replication.get(PARAMETERS) if isinstance(replication, Mapping) else None
    if isinstance(parameters, Mapping):
        for name, value in parameters.items():
            given[f"{PARAMETERS}.{name}"] = (f"replication.{PARAMETERS}.{name}", value)
    if settings is None:
        return [IgnoredOption(k, o, v, None) for k, (o, v) in sorted(given.items())]
    running = settings.to_mapping()
    data = settings.to_mapping()
    for key, (_, value) in given.items():
        section, name = key.split(".", 1)
        data[section][name] = value
    try:
        wanted: ClusterWide | None = from_mapping(data)
    except ConfigError:
        wanted = None  # the join checked the options; list them all rather than guess
    differing = set(given) if wanted is None else set(settings.differences(wanted))
    read = None if wanted is None else wanted.to_mapping()
    found = []
    for key, (option, value) in sorted(given.items()):
        if key not in differing:
            continue
        section, name = key.split(".", 1)
        shown = value if read is None else read[section].get(name, value)
        found.append(IgnoredOption(key, option, shown, running[section].get(name)))
    return found


def _known(name: str) -> tuple[str, ...]:
    return tuple(SECTION_KEYS[name])


def _parameters(raw: object, problems: Problems, context: str) -> dict[str, str]:
    """The parameters as text, the way postgresql.conf holds them; a backend checks the
    names and values it owns (``validated_for``)."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.add(
            ConfigError(
                f"{context}: {PARAMETERS} must be a mapping of postgresql.conf names to values "
                f"(got {show(raw)})"
            )
        )
        return {}
    result: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not key:
            problems.add(ConfigError(f"{context}: {PARAMETERS}: names must be strings"))
        elif isinstance(value, bool):
            result[key] = "on" if value else "off"
        elif isinstance(value, int | float | str):
            result[key] = str(value)
        else:
            problems.add(
                ConfigError(
                    f"{context}: {PARAMETERS}.{key} must be a string, number or boolean "
                    f"(got {show(value)})"
                )
            )
    return result
