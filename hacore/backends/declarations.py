"""What a backend class declares about itself, read from the class before any instance exists.

The configuration is checked, and a node's backends are built, from the registered classes:
whether a backend takes the node's TLS material and how it checks its settings are class
attributes every family's base class has, with defaults that say "nothing to declare". A
backend overrides the ones it needs; hacore never guesses them from a constructor's signature
or from a missing attribute (docs/plugin-authors.md, "Declaring TLS support and optional
abilities").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar


class Declarations:
    """Mixed into the base class of every backend family."""

    #: True: the constructor takes a ``tls`` keyword (:class:`~hacore.backends.records.TlsFiles`,
    #: or None when the node runs without TLS). For the store, its server and the database a
    #: backend without it cannot be used while ``tls.enabled`` is true; a file sync engine
    #: without it simply gets no TLS material (it may authenticate its peers itself).
    accepts_tls: ClassVar[bool] = False

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        """Raise :class:`~hacore.errors.ConfigError` when ``settings`` cannot work.

        Called when the configuration is loaded (``hacore config check``, the agent's start,
        ``cluster start/join --options``), before any server is touched. Several problems go
        in one error, one line each (:func:`hacore.config.check.backend_settings` reads them
        so). The default accepts anything.
        """

    @classmethod
    def validate_failover(cls, settings: Mapping[str, Any], failover: Any) -> None:
        """Raise :class:`~hacore.errors.ConfigError` when ``settings`` disagree with the
        node's ``failover`` section (a :class:`hacore.config.node.FailoverSettings`: the
        database's synchronous mode, say). Not called when that section has a problem of its
        own. The default accepts anything."""
