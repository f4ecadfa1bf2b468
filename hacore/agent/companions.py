"""The file sync engine and the services: they follow the database's role.

Their failures are logged and reported (the ``active_services`` check sees a service that did
not start), but never stop a transition: a node must not be left half-promoted because a
worker would not start, nor stay writable because one would not stop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import partial

from hacore.filesync import FilesyncBackend
from hacore.services import ServiceBackend


class Companions:
    def __init__(
        self,
        name: str,
        filesync: FilesyncBackend | None,
        services: ServiceBackend | None,
        *,
        active_only: Sequence[str],
        everywhere: Sequence[str],
        log: logging.LoggerAdapter,  # type: ignore[type-arg]
    ) -> None:
        self.name = name
        self.filesync = filesync
        self.services = services
        self.active_only = tuple(active_only)
        self.everywhere = tuple(everywhere)
        self.log = log
        #: Whom the file sync engine mirrors now: this node's name when it is the source.
        self.files_source: str | None = None

    def safely(self, what: str, step: Callable[[], object]) -> bool:
        try:
            step()
        except Exception as err:  # a plugin's failure must not stop a transition
            self.log.error("%s failed: %s", what, err)
            return False
        return True

    # -- files -----------------------------------------------------------------------------

    def start_files(self) -> None:
        if self.filesync is not None:
            self.safely("starting file sync", self.filesync.start)

    def files_from(self, source: str) -> None:
        """Mirror ``source``'s directories, or send ours when ``source`` is this node."""
        fs = self.filesync
        if fs is None or self.files_source == source:
            return
        if source == self.name:
            done = self.safely("file sync source", fs.become_source)
        else:
            done = self.safely(f"file sync mirror of {source}", partial(fs.become_mirror, source))
        if done:
            self.files_source = source

    def scan_files(self) -> None:
        if self.filesync is not None:
            self.safely("file scan", self.filesync.scan)

    # -- services --------------------------------------------------------------------------

    def start_everywhere(self) -> None:
        services = self.services
        if services is not None and self.everywhere:
            self.safely("starting services", partial(services.start_all, self.everywhere))

    def start_active(self) -> bool:
        services = self.services
        if services is None or not self.active_only:
            return True
        return self.safely(
            "starting active-only services", partial(services.start_all, self.active_only)
        )

    def ensure_active(self) -> bool:
        """Restart any active-only service that stopped; True when all run."""
        services = self.services
        if services is None or not self.active_only:
            return True
        ok = True
        for name in self.active_only:
            if not services.status(name).running:
                self.log.warning("active-only service %s is not running: starting it", name)
                ok = self.safely(f"starting {name}", partial(services.start, name)) and ok
        return ok

    def stop_active(self) -> None:
        services = self.services
        if services is not None and self.active_only:
            self.safely(
                "stopping active-only services", partial(services.stop_all, self.active_only)
            )
