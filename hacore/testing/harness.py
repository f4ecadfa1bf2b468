"""What the contract suite needs from a backend under test.

A harness starts the store's servers, makes backends for it, and injures it on request
(kill one server, freeze them all). Each backend plugin registers one with
``registry.add_test_harness(name, "module:Class")``; the contract suite picks it by name
(``pytest --hacore-backend=NAME``) or a third-party conftest provides its own.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar

from hacore.backends.consensus import ConsensusBackend, ManagedStore


class ConsensusHarness(abc.ABC):
    #: the backend name in the registry
    backend_name: ClassVar[str] = ""
    #: False when the store cannot lose one server (a single in-memory store)
    can_kill_member: ClassVar[bool] = True
    #: False when the store cannot be frozen (SIGSTOP)
    can_freeze: ClassVar[bool] = True
    #: True when a holder can be a separate process killed with SIGKILL
    out_of_process: ClassVar[bool] = True

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why this store cannot run on this machine (a missing binary), or None."""
        return None

    @abc.abstractmethod
    def start(self) -> None:
        """Start the store's servers (3 where it can) and wait until they serve."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop every server started, by pid, and wait for the pids to exit."""

    @abc.abstractmethod
    def settings(self) -> dict[str, Any]:
        """The backend ``settings`` that reach this store (JSON-serialisable)."""

    def make_backend(
        self,
        node_name: str,
        *,
        ttl: float = 2.0,
        retry_timeout: float = 1.0,
        namespace: str = "test",
    ) -> ConsensusBackend:
        from hacore.plugins.registry import load_plugins

        cls = load_plugins().registry.consensus(self.backend_name)
        return cls(
            self.settings(),
            namespace=namespace,
            node_name=node_name,
            ttl=ttl,
            retry_timeout=retry_timeout,
        )

    def unreachable_settings(self) -> dict[str, Any]:
        """Backend ``settings`` naming a store nobody answers at (e.g. a closed loopback port).

        The contract suite checks that every call then raises
        :class:`~hacore.errors.StoreUnavailableError` within ``retry_timeout`` instead of hanging.
        """
        raise NotImplementedError

    def kill_member(self, index: int = 0) -> None:
        """SIGKILL one server of the store."""
        raise NotImplementedError

    def restart_member(self, index: int = 0) -> None:
        """Start again a server killed by :meth:`kill_member`; waits until it serves."""
        raise NotImplementedError

    def freeze(self) -> None:
        """SIGSTOP every server of the store."""
        raise NotImplementedError

    def thaw(self) -> None:
        """SIGCONT every server frozen by :meth:`freeze`."""
        raise NotImplementedError

    # -- managed servers (optional) -----------------------------------------------------

    supports_managed: ClassVar[bool] = False

    def make_managed_store(self, name: str, data_dir: Path) -> ManagedStore:
        """A managed store for one node, with its own free loopback ports."""
        raise NotImplementedError
