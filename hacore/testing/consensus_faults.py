"""The consensus contract, faults: a store that loses a server, freezes or cannot be reached
makes the backend raise within its retry timeout instead of hanging."""

from __future__ import annotations

from typing import Any

import pytest

from hacore.backends.consensus import ConsensusBackend
from hacore.backends.records import Leader, Member
from hacore.errors import StoreUnavailableError
from hacore.testing.contract_support import SLACK, answered, timed
from hacore.testing.harness import ConsensusHarness
from hacore.testing.pytest_plugin import ConsensusFactory


class StoreFaultsContract:
    """A killed server, a frozen store, an unreachable one."""

    @pytest.mark.timeout(240, method="signal")
    def test_operations_continue_when_one_server_is_killed(
        self, consensus_harness: ConsensusHarness, consensus_factory: ConsensusFactory
    ) -> None:
        if not consensus_harness.can_kill_member:
            pytest.skip(f"{consensus_harness.backend_name}: the store cannot lose one server")
        node = consensus_factory("a", ttl=20.0, retry_timeout=2.0)
        lease = node.campaign()
        assert lease is not None
        assert node.put("before", b"1")
        consensus_harness.kill_member(0)
        try:
            assert answered(lambda: node.put("after", b"2"), 30, "a write after the kill")
            assert answered(lambda: node.renew(lease), 30, "renew after the kill") is True
            late = consensus_factory("late", retry_timeout=2.0)
            assert answered(late.leader, 30, "leader() of a new backend") == Leader(
                name="a", token=lease.token
            )
            after = answered(lambda: late.get("after"), 30, "a read of a new backend")
            assert after is not None and after.value == b"2"
        finally:
            consensus_harness.restart_member(0)
        assert answered(lambda: node.renew(lease), 30, "renew after the restart") is True

    @pytest.mark.timeout(180, method="signal")
    def test_frozen_store_raises_within_retry_timeout(
        self, consensus_harness: ConsensusHarness, consensus_factory: ConsensusFactory
    ) -> None:
        if not consensus_harness.can_freeze:
            pytest.skip(f"{consensus_harness.backend_name}: the store cannot be frozen")
        retry_timeout = 1.0
        node = consensus_factory("a", ttl=30.0, retry_timeout=retry_timeout)
        lease = node.campaign()
        assert lease is not None
        watcher = node.watch("frozen/")
        calls: dict[str, Any] = {
            "renew": lambda: node.renew(lease),
            "leader": node.leader,
            "put": lambda: node.put("frozen/k", b"1"),
            "members": node.members,
        }
        results: dict[str, tuple[float, BaseException | None]] = {}
        consensus_harness.freeze()
        try:
            for name, call in calls.items():
                results[name] = timed(call)
            watch_elapsed, watch_error = timed(lambda: watcher.get(timeout=0.5))
        finally:
            consensus_harness.thaw()
        for name, (elapsed, error) in results.items():
            assert isinstance(error, StoreUnavailableError), (
                f"{name}() on a frozen store: {error!r} after {elapsed:.2f}s"
            )
            assert elapsed <= retry_timeout + SLACK, (
                f"{name}() raised after {elapsed:.2f}s (retry_timeout {retry_timeout:g}s)"
            )
        assert watch_error is None or isinstance(watch_error, StoreUnavailableError)
        assert watch_elapsed <= 0.5 + retry_timeout + SLACK, (
            f"watcher.get(0.5) on a frozen store took {watch_elapsed:.2f}s"
        )
        answered(node.leader, 60, "leader() once the store is thawed")
        watcher.close()

    @pytest.mark.timeout(120, method="signal")
    def test_unreachable_store_raises_instead_of_hanging(
        self, consensus_harness: ConsensusHarness, consensus_factory: ConsensusFactory
    ) -> None:
        try:
            settings = consensus_harness.unreachable_settings()
        except NotImplementedError:
            pytest.skip(f"{consensus_harness.backend_name}: harness has no unreachable_settings()")
        retry_timeout = 1.0
        made: list[ConsensusBackend] = []
        elapsed, error = timed(
            lambda: made.append(
                consensus_factory("lost", settings=settings, retry_timeout=retry_timeout)
            )
        )
        assert elapsed <= retry_timeout + SLACK, f"making the backend took {elapsed:.2f}s"
        if isinstance(error, StoreUnavailableError):
            return
        assert error is None, f"making a backend for an unreachable store raised {error!r}"
        node = made[0]
        calls: dict[str, Any] = {
            "campaign": node.campaign,
            "leader": node.leader,
            "publish_member": lambda: node.publish_member(Member(name="lost")),
            "get": lambda: node.get("k"),
            "put": lambda: node.put("k", b"v"),
        }
        for name, call in calls.items():
            elapsed, error = timed(call)
            assert isinstance(error, StoreUnavailableError), (
                f"{name}() on an unreachable store: {error!r} after {elapsed:.2f}s"
            )
            assert elapsed <= retry_timeout + SLACK, (
                f"{name}() raised after {elapsed:.2f}s (retry_timeout {retry_timeout:g}s)"
            )
        elapsed, error = timed(node.close)
        assert elapsed <= retry_timeout + SLACK, f"close() took {elapsed:.2f}s"
