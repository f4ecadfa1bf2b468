"""Calling the lifecycle hooks one implementation at a time.

pluggy stops at the first implementation that raises and reports no plugin name. The agent
needs the opposite around role transitions: every plugin hears about the transition, a
raising one is logged *with its plugin's name*, and the transition itself carries on (or, for
``before_promote``, the failure counts as a veto) so a node is never left half-promoted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from hacore.backends.records import ClusterView
from hacore.config.node import NodeConfig
from hacore.plugins.registry import HacorePlugins

log = logging.getLogger(__name__)


class NodeLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes every message with the node's name: tests run several agents in a process."""

    def __init__(self, logger: logging.Logger, node: str) -> None:
        super().__init__(logger, {"node": node})
        self.node = node

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"{self.node}: {msg}", kwargs


class HookCaller:
    def __init__(self, plugins: HacorePlugins, config: NodeConfig) -> None:
        self.plugins = plugins
        self.config = config
        self.log = NodeLog(log, config.node.name)

    def call(self, hook: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call every implementation of ``hook`` (newest plugin first, as pluggy does).

        Returns ``(plugin name, result)`` for every implementation that returned something
        other than None; one that raised is logged and left out.
        """
        results: list[tuple[str, Any]] = []
        for plugin, outcome, failed in self._each(hook, {"config": self.config, **kwargs}):
            if not failed and outcome is not None:
                results.append((plugin, outcome))
        return results

    def veto(self, view: ClusterView) -> str | None:
        """Ask every ``before_promote``: the first veto's reason, or None to go ahead.

        An implementation that raises vetoes too: a fencing script that failed has not made
        the old active harmless, so promoting would risk two writers.
        """
        kwargs = {"config": self.config, "view": view}
        for plugin, outcome, failed in self._each("hacore_before_promote", kwargs):
            if failed:
                return f"{plugin}'s before_promote raised: {outcome}"
            if outcome:
                return f"{plugin}: {outcome}"
        return None

    def _each(self, hook: str, kwargs: dict[str, Any]) -> Iterator[tuple[str, Any, bool]]:
        """Lazily, so a veto stops the ``before_promote`` implementations after it."""
        caller = getattr(self.plugins.hook, hook)
        for impl in reversed(caller.get_hookimpls()):
            name = _plugin_name(impl.plugin_name, impl.plugin)
            if impl.hookwrapper or impl.wrapper:
                self.log.warning(
                    "ignoring %s's %s: hook wrappers are not supported here", name, hook
                )
                continue
            try:
                args = {arg: kwargs[arg] for arg in impl.argnames}
            except KeyError as missing:
                self.log.error("%s's %s asks for unknown argument %s", name, hook, missing)
                continue
            try:
                outcome = impl.function(**args)
            except Exception as err:
                self.log.exception("%s's %s raised %s: %s", name, hook, type(err).__name__, err)
                yield name, f"{type(err).__name__}: {err}", True
            else:
                yield name, outcome, False


def _plugin_name(registered: str, plugin: object) -> str:
    """The entry point name, else (an object registered without a name) its class's name."""
    if registered and not registered.isdigit():
        return registered
    return getattr(plugin, "__name__", None) or type(plugin).__name__
