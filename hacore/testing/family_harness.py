"""What the replication, filesync and services contract suites need from a backend's harness.

A consensus harness (:mod:`hacore.testing.harness`) is picked by name from the plugin
registry (``--hacore-backend``); the other three families follow fsspec's pattern instead:
the implementer's test module (or ``conftest.py``) provides one fixture that yields a started
harness (:func:`hacore.testing.pytest_plugin.run_family_harness`), and subclasses the suite.
The harness owns whatever real servers the backend needs and stops them *by pid* at the end,
whatever the backend under test did, so a broken backend fails its tests without leaking
processes into the next ones.

This module imports neither pytest nor any plugin: a plugin's harness module
(``my_plugin/testing.py``) imports it and stays importable where only hacore is installed.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from hacore import (
    FilesyncBackend,
    ReplicationBackend,
    ReplicationSource,
    ServiceBackend,
)


class FamilyHarness:
    """Base of :class:`ReplicationHarness`, :class:`FilesyncHarness` and
    :class:`ServicesHarness`: a work directory, a start, a stop, a reason to skip."""

    #: the backend's name in the registry (used in skip messages and test ids)
    backend_name: ClassVar[str] = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why the backend cannot run on this machine (a missing binary), or None."""
        return None

    def start(self) -> None:
        """Start what every backend of the harness shares (a server, a directory layout)."""

    def stop(self) -> None:
        """Stop every process the harness or its backends started, by pid; idempotent."""


class ReplicationHarness(FamilyHarness, abc.ABC):
    """Makes backends for fresh nodes of one database kind, and stops their servers."""

    @abc.abstractmethod
    def make_backend(self, node_name: str) -> ReplicationBackend:
        """A backend for a new, empty node on loopback: its own port and data directory.

        Nothing is started. Two backends of one harness can replicate to each other once
        ``allow_member`` let them in.
        """

    @abc.abstractmethod
    def source(self, backend: ReplicationBackend, password: str) -> ReplicationSource:
        """Where a standby streams from ``backend``, with the replication ``password``
        (the one given to ``bootstrap``; the contract also passes wrong ones)."""


class FilesyncHarness(FamilyHarness, abc.ABC):
    """Makes backends for nodes on loopback, and stops what they started."""

    @abc.abstractmethod
    def make_backend(self, node_name: str, directories: Sequence[Path]) -> FilesyncBackend:
        """A backend for one node: its own ports and data directory under ``workdir``.

        Not started. Configure it so that a mirror notices the source's changes by itself
        within seconds (a short poll interval, say): the suite waits for changes, it never
        asks for them.
        """


class ServicesHarness(FamilyHarness, abc.ABC):
    """A service manager with a few services defined, and a way to see them run."""

    #: Two services the backend can start, each a program that runs until stopped.
    runnable: tuple[str, str] = ("alpha", "beta")
    #: A service whose program exits at once, or None when the manager cannot define one.
    failing: str | None = "crasher"
    #: A name the backend knows nothing of.
    unknown: str = "hacore-contract-no-such-service"

    @abc.abstractmethod
    def make_backend(self) -> ServiceBackend:
        """A backend that manages the harness's services."""

    @abc.abstractmethod
    def pids(self, name: str) -> frozenset[int]:
        """The processes of ``name``'s program that run now, found without the backend."""

    def instances(self, name: str) -> int:
        return len(self.pids(name))

    @abc.abstractmethod
    def kill(self, name: str) -> None:
        """SIGKILL ``name``'s program, as a crash would; the manager must not restart it."""
