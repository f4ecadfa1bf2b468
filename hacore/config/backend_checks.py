"""Each configured backend's own checks of its settings, run while ``node.yaml`` is loaded.

The configuration does not know any backend: it hands each family's settings to the class a
registry names (:class:`BackendLookup`), through the checks every backend class declares
(``validate_settings``, ``validate_failover``, and for services ``validate_services``; see
:mod:`hacore.backends.declarations`), and prefixes each line the backend reports with the
file and the section, so a backend's problem reads like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from hacore.config.check import Problems
from hacore.errors import ConfigError, UnknownBackendError

if TYPE_CHECKING:
    from hacore.config.node import BackendSection, FailoverSettings


class BackendLookup(Protocol):
    """What the configuration needs of a backend registry: the names of a family, and a
    backend class by name (:class:`hacore.plugins.registry.BackendRegistry` is one). A
    protocol, so that the configuration does not import the plugin layer."""

    def names(self, family: str) -> list[str]: ...

    def get(self, family: str, name: str) -> Any: ...


def check_backend(
    registry: BackendLookup,
    key: str,
    section: BackendSection,
    failover: FailoverSettings | None,
    problems: Problems,
    context: str,
    *,
    managed: bool = False,
    services: Sequence[str] | None = None,
) -> None:
    """The backend's own checks of its settings, each problem prefixed with the file and key.

    ``managed``: the consensus section asks hacore to run the store, so the store server's
    class checks the settings. ``services``: the names listed in the services section, which
    a services backend checks too. ``failover`` is None when that section had a problem: a
    backend then does not check its settings against values nobody wrote.
    """
    family = key
    try:
        if managed:
            family = "managed_store"
            if section.backend not in registry.names(family):
                _backend_class(registry, "consensus", section, key, context)  # unknown name first
                servers = ", ".join(registry.names(family)) or "none"
                raise ConfigError(
                    f"{context}: consensus.managed: the {section.backend} backend cannot run its "
                    f"own servers (backends that can: {servers}); set managed: false and give the "
                    "settings of an existing store"
                )
        cls = _backend_class(registry, family, section, key, context)
    except ConfigError as err:
        problems.add(err)
        return
    where = f"{context}: {key} ({section.backend}): "
    try:
        cls.validate_settings(section.settings)
        if services is not None:
            cls.validate_services(section.settings, services)
    except ConfigError as err:
        problems.add(prefixed(where, err))
    # A backend whose settings must agree with the failover section (the database's
    # synchronous mode) checks that here; settings of its own are for validate_settings.
    if failover is not None:
        try:
            cls.validate_failover(section.settings, failover)
        except ConfigError as err:
            problems.add(prefixed(where, err))


def _backend_class(
    registry: BackendLookup, family: str, section: BackendSection, key: str, context: str
) -> Any:
    try:
        return registry.get(family, section.backend)
    except UnknownBackendError as err:
        raise UnknownBackendError(f"{context}: {key}.backend: {err}") from None


def prefixed(where: str, err: ConfigError) -> ConfigError:
    """A backend may report several problems, one line each: every line gets the prefix."""
    return ConfigError("\n".join(where + line for line in str(err).splitlines()))
