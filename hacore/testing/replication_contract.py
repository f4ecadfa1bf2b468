"""The replication contract: what every :class:`~hacore.ReplicationBackend` must do.

A backend passes when :class:`ReplicationContract` passes against real database servers.
The implementer provides one fixture, ``replication_harness``, yielding a started
:class:`ReplicationHarness` that makes backends for fresh nodes on loopback, and subclasses
the suite::

    import pytest
    from hacore.testing.pytest_plugin import run_family_harness
    from hacore.testing.replication_contract import ReplicationContract
    from my_pkg.testing import MyHarness

    @pytest.fixture(scope="module")
    def replication_harness(tmp_path_factory):
        yield from run_family_harness(MyHarness, tmp_path_factory.mktemp("mine"))

    class TestMine(ReplicationContract): pass

What is checked is what the interface promises (``hacore.replication``): status of an empty,
a stopped and a running node; bootstrap makes a writable primary; a clone reports progress
and streams from its source; the fencing token written on the primary reaches the standby
through replication; getting ready for a handover leaves the primary serving; a fence stops
writes at once; promote makes a standby writable; a former primary comes back read-only
(never a writable primary without ``promote``) and knows it needs a rewind; rewind makes it
follow the new primary; failed operations raise :class:`~hacore.ReplicationError` and a
failed clone leaves the node empty. Database specifics (SQL, slots, files) are the
backend's own tests' business.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator

import attrs
import pytest

from hacore import ReplicationBackend, ReplicationError, ReplicationRole, ReplicationStatus
from hacore.testing.family_harness import ReplicationHarness
from hacore.testing.procs import free_port, wait_for

#: Seconds a write, a restart or a promotion may take on a loaded machine (not a number
#: under test: the benchmarks measure those).
WAIT = 90.0


@attrs.define
class Pair:
    """A bootstrapped primary and a standby cloned from it, streaming."""

    primary: ReplicationBackend
    standby: ReplicationBackend
    progress: list[tuple[int, int]]
    password: str


def _status(backend: ReplicationBackend) -> ReplicationStatus:
    status = backend.status()
    assert isinstance(status, ReplicationStatus), f"status() returned {status!r}"
    return status


def _following(backend: ReplicationBackend, upstream: str) -> ReplicationStatus | None:
    status = _status(backend)
    return status if status.following == upstream else None


def _wait_following(backend: ReplicationBackend, upstream: str) -> ReplicationStatus:
    found = wait_for(
        lambda: _following(backend, upstream),
        WAIT,
        what=f"{backend.node_name} to report streaming from {upstream}",
    )
    assert isinstance(found, ReplicationStatus)
    return found


def _wait_token(backend: ReplicationBackend, token: int) -> None:
    wait_for(
        lambda: backend.fencing_token() == token,
        WAIT,
        what=f"fencing token {token} to reach {backend.node_name} through replication",
    )


def _new_standby(
    harness: ReplicationHarness,
    primary: ReplicationBackend,
    name: str,
    password: str,
    progress: list[tuple[int, int]] | None = None,
) -> ReplicationBackend:
    standby = harness.make_backend(name)
    primary.allow_member(name, standby.host)
    source = harness.source(primary, password)
    if progress is None:
        standby.clone(source)
    else:
        standby.clone(source, progress=lambda done, total: progress.append((done, total)))
    # as the agent does: only a node that holds a database lets members in
    standby.allow_member(primary.node_name, primary.host)
    standby.start(follow=source)
    _wait_following(standby, primary.node_name)
    return standby


class ReplicationContract:
    """Roles, streaming, fencing token, failover and errors on real database servers."""

    @pytest.fixture(scope="class")
    @classmethod
    def pair(cls, replication_harness: ReplicationHarness) -> Iterator[Pair]:
        password = f"repl-{secrets.token_hex(8)}"
        primary = replication_harness.make_backend("p1")
        primary.bootstrap(replication_password=password, allowed_hosts=[])
        progress: list[tuple[int, int]] = []
        standby = _new_standby(replication_harness, primary, "s1", password, progress)
        yield Pair(primary, standby, progress, password)

    # -- a node's life ---------------------------------------------------------------------

    def test_a_new_node_is_empty_and_stopped(self, replication_harness: ReplicationHarness) -> None:
        node = replication_harness.make_backend("empty")
        assert node.is_initialized() is False
        status = _status(node)
        assert status.known, f"an empty node's status is not unknown: {status}"
        assert (status.running, status.role, status.writable) == (
            False,
            ReplicationRole.STOPPED,
            False,
        )
        with pytest.raises(ReplicationError):
            node.start()
        assert not _status(node).running
        # nothing to let a member into yet: either accepted or a clear ReplicationError
        with contextlib.suppress(ReplicationError):
            node.allow_member("other", "127.0.0.9")

    def test_address_names_the_node_and_a_port(self, pair: Pair) -> None:
        host, port = pair.primary.address()
        assert host == pair.primary.host
        assert isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536

    def test_bootstrap_makes_a_writable_primary(self, pair: Pair) -> None:
        assert pair.primary.is_initialized() is True
        status = _status(pair.primary)
        assert (status.running, status.role, status.writable) == (
            True,
            ReplicationRole.PRIMARY,
            True,
        ), status
        assert status.following is None, status
        assert status.needs_rewind is False, status
        assert isinstance(status.position, int), status

    def test_clone_reports_progress_and_the_standby_streams(self, pair: Pair) -> None:
        calls = pair.progress
        assert calls, "clone() reported no progress"
        assert all(done >= 0 and total >= 0 for done, total in calls), calls
        assert all(total == 0 or done <= total for done, total in calls), calls
        dones = [done for done, _ in calls]
        assert dones == sorted(dones), f"progress went backwards: {calls}"
        assert pair.standby.is_initialized() is True
        status = _wait_following(pair.standby, pair.primary.node_name)
        assert (status.running, status.role, status.writable) == (
            True,
            ReplicationRole.STANDBY,
            False,
        ), status
        wait_for(
            lambda: any(sb.name == "s1" for sb in _status(pair.primary).standbys),
            WAIT,
            what="the primary to list s1 among its standbys",
        )

    def test_the_fencing_token_reaches_the_standby(self, pair: Pair) -> None:
        token = (pair.primary.fencing_token() or 0) + 10
        pair.primary.record_fencing_token(token)
        assert pair.primary.fencing_token() == token
        _wait_token(pair.standby, token)
        target = _status(pair.primary).position
        assert target is not None
        wait_for(
            lambda: (_status(pair.standby).position or 0) >= target,
            WAIT,
            what=f"the standby's position to reach the primary's {target}",
        )
        with pytest.raises(ReplicationError):
            pair.standby.record_fencing_token(token + 5)
        assert pair.primary.fencing_token() == token

    def test_a_stopped_standby_restarts_and_catches_up(self, pair: Pair) -> None:
        pair.standby.stop()
        pair.standby.stop()
        status = _status(pair.standby)
        assert (status.running, status.role, status.writable) == (
            False,
            ReplicationRole.STOPPED,
            False,
        )
        token = (pair.primary.fencing_token() or 0) + 1
        pair.primary.record_fencing_token(token)
        pair.standby.start()
        status = _wait_following(pair.standby, pair.primary.node_name)
        assert status.writable is False
        _wait_token(pair.standby, token)

    def test_set_synchronous_names_the_standby(self, pair: Pair) -> None:
        def sync_names() -> set[str]:
            return {sb.name for sb in _status(pair.primary).standbys if sb.sync}

        try:
            pair.primary.set_synchronous(["s1"], strict=False)
            wait_for(lambda: sync_names() == {"s1"}, WAIT, what="s1 to confirm commits")
            token = (pair.primary.fencing_token() or 0) + 1
            pair.primary.record_fencing_token(token)
            _wait_token(pair.standby, token)
        finally:
            pair.primary.set_synchronous([], strict=False)
        wait_for(lambda: sync_names() == set(), WAIT, what="no standby to be synchronous")

    def test_prepare_handover_leaves_the_primary_serving(self, pair: Pair) -> None:
        """The agent calls it on the active before a planned handover, while writes go on:
        on a healthy primary given time enough it succeeds, and changes nothing a client or
        a standby sees."""
        pair.primary.prepare_handover(timeout=WAIT)
        status = _status(pair.primary)
        assert (status.role, status.writable) == (ReplicationRole.PRIMARY, True), status
        token = (pair.primary.fencing_token() or 0) + 1
        pair.primary.record_fencing_token(token)
        _wait_token(pair.standby, token)

    # -- errors ----------------------------------------------------------------------------

    def test_a_clone_with_a_wrong_password_fails_and_leaves_the_node_empty(
        self, pair: Pair, replication_harness: ReplicationHarness
    ) -> None:
        node = replication_harness.make_backend("wrongpw")
        pair.primary.allow_member("wrongpw", node.host)
        with pytest.raises(ReplicationError):
            node.clone(replication_harness.source(pair.primary, "wrong-" + pair.password))
        assert node.is_initialized() is False
        assert _status(node).running is False

    def test_a_clone_from_an_unreachable_source_fails_and_leaves_the_node_empty(
        self, pair: Pair, replication_harness: ReplicationHarness
    ) -> None:
        node = replication_harness.make_backend("nosource")
        real = replication_harness.source(pair.primary, pair.password)
        ghost = attrs.evolve(real, node_name="ghost", host="127.0.0.1", port=free_port())
        with pytest.raises(ReplicationError):
            node.clone(ghost)
        assert node.is_initialized() is False

    # -- failover --------------------------------------------------------------------------

    def test_fence_promote_and_rewind(self, replication_harness: ReplicationHarness) -> None:
        """The failover the agent runs: fence the old primary, promote a standby, bring the
        old primary back read-only, rewind it to follow the new one."""
        password = f"repl-{secrets.token_hex(8)}"
        old = replication_harness.make_backend("a")
        old.bootstrap(replication_password=password, allowed_hosts=[])
        new = _new_standby(replication_harness, old, "b", password)
        old.record_fencing_token(7)
        _wait_token(new, 7)

        old.fence()
        fenced = _status(old)
        assert fenced.writable is False, f"writable right after fence(): {fenced}"

        new.promote(timeout=WAIT)
        promoted = _status(new)
        assert (promoted.running, promoted.role, promoted.writable) == (
            True,
            ReplicationRole.PRIMARY,
            True,
        ), promoted
        assert promoted.following is None, promoted
        new.record_fencing_token(8)
        assert new.fencing_token() == 8

        old.start()
        restarted = _status(old)
        assert restarted.running is True, restarted
        assert restarted.writable is False, (
            f"a former primary started without the lease accepts writes: {restarted}"
        )
        assert restarted.needs_rewind is True, (
            f"a former primary does not say it needs a rewind: {restarted}"
        )

        new.allow_member("a", old.host)
        old.rewind(replication_harness.source(new, password))
        rewound = _wait_following(old, "b")
        assert (rewound.role, rewound.writable, rewound.needs_rewind) == (
            ReplicationRole.STANDBY,
            False,
            False,
        )
        _wait_token(old, 8)
        new.record_fencing_token(9)
        _wait_token(old, 9)
