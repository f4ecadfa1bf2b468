"""A three-server ZooKeeper ensemble on loopback, for the contract suite and integration tests.

Each server is a JVM (~70 MB, a few seconds to start on a busy machine) in its own process
group, with its files under ``workdir/zk<i>``. The ensemble runs with ``skipACL`` and a short
tick (250 ms, sessions of 0.5 to 60 s) so tests can use TTLs of one second.

The servers write their transaction log without fsync (``zookeeper.forceSync=no``), as the
test PostgreSQL clusters run with ``fsync=off``: a write is in the kernel before it is
acknowledged, so it survives the SIGKILL of a server (tests kill processes, never the
machine). With fsync, a busy disk (a full test run) stretched each write, the session a new
backend opens included, to most of a second, past the ``retry_timeout`` of one second the
contract suite gives every call.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, ClassVar

from hacore import ManagedStore
from hacore.testing.harness import ConsensusHarness
from hacore.testing.procs import ServerProcess, free_port
from hacore_plugins.zookeeper import server as zk
from hacore_plugins.zookeeper.managed import ZooKeeperManagedStore

HOST = "127.0.0.1"
START_TIMEOUT = 120.0
#: quicker JVM start for short-lived test servers (less JIT work), and no fsync (see above)
TEST_JVM_OPTIONS = (
    *zk.DEFAULT_JVM_OPTIONS,
    "-XX:TieredStopAtLevel=1",
    "-Xss512k",
    "-Dzookeeper.forceSync=no",
)
LIMITS = zk.ServerLimits()


class ZooKeeperHarness(ConsensusHarness):
    backend_name: ClassVar[str] = "zookeeper"
    supports_managed: ClassVar[bool] = True
    size: ClassVar[int] = 3

    def __init__(
        self,
        workdir: Path,
        *,
        limits: zk.ServerLimits = LIMITS,
        jvm_options: tuple[str, ...] = TEST_JVM_OPTIONS,
        system_properties: dict[str, str] | None = None,
    ) -> None:
        """``limits``, ``jvm_options`` and ``system_properties`` are for a benchmark that
        times a deployment (its tick, the production JVM options with fsync)."""
        super().__init__(workdir)
        self.limits = limits
        self.jvm_options = jvm_options
        self.system_properties = system_properties
        self.entries: list[zk.ServerEntry] = []
        self.procs: list[ServerProcess] = []
        self._stores: list[ManagedStore] = []

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return zk.missing_runtime()

    # -- ensemble ----------------------------------------------------------------------------

    def _conf_dir(self, index: int) -> Path:
        return self.workdir / f"zk{index}"

    def start(self) -> None:
        self.entries = [
            zk.ServerEntry(
                server_id=index + 1,
                host=HOST,
                peer_port=free_port(),
                election_port=free_port(),
                client_port=free_port(),
                client_host=HOST,
            )
            for index in range(self.size)
        ]
        dynamic = zk.DynamicConfig(tuple(self.entries)).render()
        for index, entry in enumerate(self.entries):
            conf_dir = self._conf_dir(index)
            if conf_dir.exists():
                shutil.rmtree(conf_dir)
            conf_dir.mkdir(parents=True)
            zk.write_myid(conf_dir / "data", entry.server_id)
            (conf_dir / zk.DYNAMIC_FILE).write_text(dynamic)
            self.procs.append(
                ServerProcess(
                    f"zookeeper-{entry.server_id}",
                    self._argv(index),
                    conf_dir / "zookeeper.log",
                    cwd=conf_dir,
                )
            )
        for proc in self.procs:
            proc.start()
        for index in range(self.size):
            self._wait_serving(index)

    def _argv(self, index: int) -> list[str]:
        conf_dir = self._conf_dir(index)
        dynamic = zk.newest_dynamic_file(conf_dir)
        assert dynamic is not None
        static = zk.write_static_config(
            conf_dir,
            data_dir=conf_dir / "data",
            dynamic_file=dynamic,
            limits=self.limits,
            skip_acl=True,
            four_letter_words=("*",),
            max_client_connections=0,
        )
        return zk.server_argv(
            static, jvm_options=self.jvm_options, system_properties=self.system_properties
        )

    def _wait_serving(self, index: int) -> None:
        address = self.entries[index].client_address
        proc = self.procs[index]
        deadline = time.monotonic() + START_TIMEOUT
        while zk.server_mode(address) is None:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{proc.name} at {address} did not serve within {START_TIMEOUT:g}s:\n"
                    f"{proc.log_tail()}"
                )
            time.sleep(0.2)

    def stop(self) -> None:
        while self._stores:
            self._stores.pop().stop()
        for proc in self.procs:
            proc.stop()

    def settings(self) -> dict[str, Any]:
        return {"hosts": [entry.client_address for entry in self.entries]}

    def unreachable_settings(self) -> dict[str, Any]:
        return {"hosts": [f"{HOST}:{free_port()}"]}

    def kill_member(self, index: int = 0) -> None:
        self.procs[index].kill()

    def restart_member(self, index: int = 0) -> None:
        self.restart_members([index])

    def restart_members(self, indices: list[int]) -> None:
        """Start several servers at once (one alone cannot serve without a quorum)."""
        for index in indices:
            proc = self.procs[index]
            proc.stop()
            # ZooKeeper rewrote its static file; start from ours, with its newest dynamic file.
            proc.argv = self._argv(index)
            proc.start()
        for index in indices:
            self._wait_serving(index)

    def freeze(self) -> None:
        for proc in self.procs:
            proc.freeze()

    def thaw(self) -> None:
        for proc in self.procs:
            proc.thaw()

    # -- managed servers ---------------------------------------------------------------------

    def make_managed_store(self, name: str, data_dir: Path) -> ManagedStore:
        store = ZooKeeperManagedStore(
            {
                "client_port": free_port(),
                "peer_port": free_port(),
                "election_port": free_port(),
                "jvm_options": list(TEST_JVM_OPTIONS),
            },
            name=name,
            host=HOST,
            data_dir=data_dir,
        )
        self._stores.append(store)
        return store
