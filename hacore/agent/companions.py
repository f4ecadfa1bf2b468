"""The file sync engine and the services: they follow the database's role.

Their failures are logged and reported (the ``active_services`` check sees a service that did
not start), but never stop a transition: a node must not be left half-promoted because a
worker would not start, nor stay writable because one would not stop. For the same reason a
flip of the file sync direction is given a time budget by the caller: a flip that takes longer
(a large tree to scan) finishes on its own thread instead of making the node miss its
self-fencing deadline.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from functools import partial
from typing import cast

from hacore.backends.filesync import FilesyncBackend, PeerNarrowing
from hacore.backends.services import ServiceBackend


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
        self._files_started = False
        self._lock = threading.Lock()
        #: A flip that outlived its time budget and still runs.
        self._flip: threading.Thread | None = None
        #: The last failure of each step, logged once while it repeats every loop.
        self._failures: dict[str, str] = {}

    def safely(self, what: str, step: Callable[[], object]) -> bool:
        try:
            step()
        except Exception as err:  # a plugin's failure must not stop a transition
            message = f"{what} failed: {err}"
            if self._failures.get(what) != message:
                self.log.error("%s", message)
            else:
                self.log.debug("%s", message)
            self._failures[what] = message
            return False
        self._failures.pop(what, None)
        return True

    # -- files -----------------------------------------------------------------------------

    def start_files(self) -> bool:
        """Start the engine unless it runs; True when it does. Retried by every flip, so an
        engine that could not start with the agent (a port still taken) starts later."""
        fs = self.filesync
        if fs is None:
            return False
        if not self._files_started:
            self._files_started = self.safely("starting file sync", fs.start)
        return self._files_started

    def stop_files(self) -> None:
        fs = self.filesync
        if fs is None or not self._files_started:
            return
        flip = self._flip
        if flip is not None:
            flip.join()
        self.safely("stopping file sync", fs.stop)
        with self._lock:
            self._files_started = False
            self.files_source = None

    def files_from(self, source: str, *, within: float | None = None) -> bool:
        """Mirror ``source``'s directories, or send ours when ``source`` is this node.

        An engine (re)starts with no role, so this is called after every start. ``within``:
        wait at most that many seconds; a flip still running then goes on by itself (and this
        returns False, as when the flip failed: the next call tries again).
        """
        fs = self.filesync
        if fs is None:
            return True
        with self._lock:
            if self.files_source == source:
                return True
            if self._flip is not None and self._flip.is_alive():
                return False
        if not self.start_files():
            return False
        if within is None:
            return self._flip_to(source)
        thread = threading.Thread(
            target=self._flip_to, args=(source,), name=f"hacore-files-{self.name}", daemon=True
        )
        thread.start()
        thread.join(max(0.0, within))
        if thread.is_alive():
            self._flip = thread
            if within > 0:
                self.log.warning(
                    "file sync flip toward %s goes on in the background after %.1fs",
                    source,
                    within,
                )
            return False
        return self.files_source == source

    def _flip_to(self, source: str) -> bool:
        fs = self.filesync
        assert fs is not None
        if source == self.name:
            done = self.safely("making this node the file sync source", fs.become_source)
        else:
            what = f"mirroring the files of {source}"
            done = self.safely(what, partial(fs.become_mirror, source))
        if done:
            with self._lock:
                self.files_source = source
            self.log.info(
                "file sync: %s",
                "this node is the source" if source == self.name else f"mirroring {source}",
            )
        return done

    def release_files(self) -> None:
        """Stop being the file sync source while no successor is known (a step-down without
        target, a fence). Left a source, the engine would keep announcing this node's files
        as the truth once another node is the source. Engines start with no role (Syncthing:
        receive-only folders), so a restart releases it."""
        if self.filesync is None or self.files_source != self.name:
            return
        self.log.info("file sync: no longer the source; restarting the engine without a role")
        self.stop_files()
        self.start_files()

    def scan_files(self) -> None:
        if self.filesync is not None:
            self.safely("file scan", self.filesync.scan)

    def files_gap(self, target: str) -> str | None:
        """Why ``target``'s copy of the files differs from this node's now, or None when it
        does not (or there is no file sync). Asks the engine once, without waiting."""
        fs = self.filesync
        if fs is None:
            return None
        try:
            if fs.narrows_to_peers:
                state = cast(PeerNarrowing, fs).state(peers=[target])
            else:
                state = fs.state()
        except Exception as err:
            return f"cannot tell whether {target} has every file ({err})"
        if state.in_sync:
            return None
        return state.detail or f"{state.need_bytes} bytes missing"

    def wait_files(self, target: str, timeout: float) -> str | None:
        """Wait up to ``timeout`` for ``target`` to hold every file; None once it does, else
        what is still missing."""
        fs = self.filesync
        if fs is None:
            return None
        try:
            wait = max(0.0, timeout)
            # a switchover waits for the standby that takes over, not for one that is down
            if fs.narrows_to_peers:
                cast(PeerNarrowing, fs).wait_in_sync(wait, peers=[target])
            else:
                fs.wait_in_sync(wait)
        except Exception as err:
            return str(err)
        return None

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
            try:
                running = services.status(name).running
            except Exception as err:
                self.log.error("status of active-only service %s failed: %s", name, err)
                running = False
            if not running:
                self.log.warning("active-only service %s is not running: starting it", name)
                ok = self.safely(f"starting {name}", partial(services.start, name)) and ok
        return ok

    def stop_active(self) -> None:
        services = self.services
        if services is not None and self.active_only:
            self.safely(
                "stopping active-only services", partial(services.stop_all, self.active_only)
            )
