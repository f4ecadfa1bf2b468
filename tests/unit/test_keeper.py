"""The fence keeper's decisions (docs/fencing.md): when it fences, waits, or goes away, and
which record the agent feeds it. Pure functions first, then one keeper step at a time on a
record file with a fake clock and a fake database."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hacore.agent.hooks import NodeLog
from hacore.agent.keeper import (
    DbRole,
    DeadlineFeed,
    FenceRecord,
    Hold,
    Keeper,
    KeeperAction,
    KeeperView,
    boot_id,
    fed_record,
    keeper_decide,
    read_record,
)
from hacore.backends.replication import ReplicationBackend, ReplicationRole, ReplicationStatus
from hacore.errors import HacoreError

BOOT = "boot-1"
HOLDER = FenceRecord(Hold.HOLDER, 100.0, 42, BOOT)
RELEASED = FenceRecord(Hold.RELEASED, None, 42, BOOT)


def view(record: FenceRecord | None, now: float, **kw: object) -> KeeperView:
    return KeeperView(now=now, record=record, agent_alive=bool(kw.pop("alive", True)), **kw)  # type: ignore[arg-type]


# -- keeper_decide ------------------------------------------------------------------------------


def test_before_the_deadline_the_keeper_waits_whatever_the_agent_does() -> None:
    for alive in (True, False):
        assert keeper_decide(view(HOLDER, 99.9, alive=alive)).action is KeeperAction.WAIT


def test_past_the_deadline_it_asks_the_database_then_fences_a_primary() -> None:
    assert keeper_decide(view(HOLDER, 100.0)).action is KeeperAction.READ_DB
    for alive in (True, False):  # hung or dead: the deadline alone decides
        decision = keeper_decide(view(HOLDER, 100.0, alive=alive, db=DbRole.PRIMARY))
        assert decision.action is KeeperAction.FENCE


def test_a_database_that_does_not_answer_is_fenced() -> None:
    decision = keeper_decide(view(HOLDER, 101.0, db=DbRole.UNKNOWN))
    assert decision.action is KeeperAction.FENCE


def test_a_database_that_is_not_a_primary_settles_the_deadline() -> None:
    hung = keeper_decide(view(HOLDER, 101.0, db=DbRole.NOT_PRIMARY))
    assert (hung.action, hung.settles) == (KeeperAction.WAIT, True)
    dead = keeper_decide(view(HOLDER, 101.0, alive=False, db=DbRole.NOT_PRIMARY))
    assert (dead.action, dead.settles) == (KeeperAction.EXIT, True)


def test_an_enforced_deadline_is_not_enforced_again() -> None:
    assert keeper_decide(view(HOLDER, 105.0, settled=True)).action is KeeperAction.WAIT
    gone = keeper_decide(view(HOLDER, 105.0, settled=True, alive=False))
    assert gone.action is KeeperAction.EXIT


def test_it_exits_only_when_the_agent_is_gone_and_nothing_is_guarded() -> None:
    for record in (None, RELEASED):
        assert keeper_decide(view(record, 500.0)).action is KeeperAction.WAIT
        assert keeper_decide(view(record, 500.0, alive=False)).action is KeeperAction.EXIT
    assert keeper_decide(view(HOLDER, 50.0, alive=False)).action is KeeperAction.WAIT


@given(
    now=st.floats(0, 200),
    deadline=st.floats(0, 200),
    alive=st.booleans(),
    settled=st.booleans(),
    db=st.sampled_from([None, *DbRole]),
)
def test_safety_properties(
    now: float, deadline: float, alive: bool, settled: bool, db: DbRole | None
) -> None:
    record = FenceRecord(Hold.HOLDER, deadline, 7, BOOT)
    decision = keeper_decide(
        KeeperView(now=now, record=record, agent_alive=alive, settled=settled, db=db)
    )
    if now < deadline:
        assert decision.action is KeeperAction.WAIT
    if now >= deadline and not settled and db in (DbRole.PRIMARY, DbRole.UNKNOWN):
        assert decision.action is KeeperAction.FENCE
    if decision.action is KeeperAction.EXIT:
        assert not alive and now >= deadline


# -- fed_record ---------------------------------------------------------------------------------


def feed(current: FenceRecord | None, **kw: object) -> FenceRecord | None:
    args: dict[str, object] = {"may_write": False, "deadline": None, "db_role": None, **kw}
    return fed_record(current, pid=42, boot=BOOT, **args)  # type: ignore[arg-type]


def test_the_agent_writes_its_deadline_while_the_database_may_write() -> None:
    assert feed(None, may_write=True, deadline=100.0) == HOLDER
    assert feed(HOLDER, may_write=True, deadline=100.0) is None  # unchanged: no write
    assert feed(HOLDER, may_write=True, deadline=101.0) == FenceRecord(Hold.HOLDER, 101.0, 42, BOOT)


def test_it_releases_only_once_the_database_is_seen_not_to_be_a_primary() -> None:
    assert feed(HOLDER, db_role=ReplicationRole.STOPPED) == RELEASED
    assert feed(HOLDER, db_role=ReplicationRole.STANDBY) == RELEASED
    # the lease was dropped but the fence has not happened (or failed): keep the deadline
    assert feed(HOLDER, db_role=ReplicationRole.PRIMARY) is None
    # the database could not be read: unknown is not "not a primary"
    assert feed(HOLDER, db_role=None) is None
    # fenced under a lease still held: the agent lets nothing write
    assert (
        feed(HOLDER, may_write=False, deadline=100.0, db_role=ReplicationRole.STOPPED) == RELEASED
    )


def test_records_survive_a_round_trip_and_bad_ones_are_refused() -> None:
    for record in (HOLDER, RELEASED):
        assert FenceRecord.decode(record.encode()) == record
    with pytest.raises(HacoreError):
        FenceRecord.decode(b'{"hold": "holder"}')
    with pytest.raises(ValueError):
        FenceRecord(Hold.HOLDER, None, 1, BOOT)


# -- the feed and the keeper, on a record file ---------------------------------------------------


class FakeDatabase:
    node_name = "n1"

    def __init__(self, role: ReplicationRole | None = ReplicationRole.PRIMARY) -> None:
        #: None: the database does not answer
        self.role = role
        self.fences = 0

    def status(self) -> ReplicationStatus:
        if self.role is None:
            raise HacoreError("no answer")
        return ReplicationStatus(running=self.role is not ReplicationRole.STOPPED, role=self.role)

    def fence(self) -> None:
        self.fences += 1
        self.role = ReplicationRole.STOPPED


class World:
    def __init__(
        self, tmp_path: Path, role: ReplicationRole | None = ReplicationRole.PRIMARY
    ) -> None:
        self.now = 0.0
        self.alive = {42}
        self.db = FakeDatabase(role)
        self.path = tmp_path / "keeper.json"
        self.feed = DeadlineFeed(self.path, 42, NodeLog(logging.getLogger("test"), "n1"))
        self.keeper = Keeper(
            cast(ReplicationBackend, self.db),
            self.path,
            agent_pid=42,
            clock=lambda: self.now,
            alive=lambda pid: pid in self.alive,
        )


def test_a_killed_agent_s_primary_is_fenced_at_its_deadline_once(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.feed.adopt()
    w.feed.update(may_write=True, deadline=10.0, db_role=None)
    w.alive.clear()  # SIGKILL
    w.now = 9.9
    assert w.keeper.step() and w.db.fences == 0
    w.now = 10.0
    assert w.keeper.step() and w.db.fences == 1
    w.db.role = ReplicationRole.PRIMARY  # nobody but a new lease's agent may make it writable again
    assert not w.keeper.step(), "the deadline is enforced and the agent is gone: exit"
    assert w.db.fences == 1


def test_a_hung_agent_s_primary_is_fenced_and_the_keeper_stays(tmp_path: Path) -> None:
    w = World(tmp_path, role=None)  # the database does not answer either
    w.feed.adopt()
    w.feed.update(may_write=True, deadline=10.0, db_role=None)
    w.now = 11.0
    assert w.keeper.step() and w.db.fences == 1
    w.now = 30.0
    assert w.keeper.step() and w.db.fences == 1
    # the thawed agent sees its database stopped and releases; later it leads again
    w.feed.update(may_write=False, deadline=None, db_role=ReplicationRole.STOPPED)
    assert w.keeper.step() and w.db.fences == 1
    w.db.role = ReplicationRole.PRIMARY
    w.feed.update(may_write=True, deadline=40.0, db_role=None)
    w.now = 39.0
    assert w.keeper.step() and w.db.fences == 1
    w.now = 40.5
    assert w.keeper.step() and w.db.fences == 2


def test_a_restarted_agent_adopts_the_deadline_and_the_keeper_follows_it(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.feed.adopt()
    w.feed.update(may_write=True, deadline=10.0, db_role=None)
    w.alive = {43}  # the agent was restarted as pid 43
    successor = DeadlineFeed(w.path, 43, NodeLog(logging.getLogger("test"), "n1"))
    successor.adopt()
    assert read_record(w.path) == FenceRecord(Hold.HOLDER, 10.0, 43, boot_id())
    w.now = 10.0
    assert w.keeper.step() and w.db.fences == 1  # the old deadline still holds
    successor.update(may_write=False, deadline=None, db_role=ReplicationRole.STOPPED)
    w.now = 20.0
    assert w.keeper.step(), "the new agent lives: the keeper stays"
    w.alive.clear()
    assert not w.keeper.step()


def test_the_keeper_exits_when_the_node_s_files_are_gone(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.feed.adopt()
    w.alive.clear()
    w.path.unlink()
    assert not w.keeper.step()
    assert w.db.fences == 0


def test_an_unreadable_record_keeps_the_last_deadline(tmp_path: Path) -> None:
    w = World(tmp_path)
    w.feed.adopt()
    w.feed.update(may_write=True, deadline=10.0, db_role=None)
    assert w.keeper.step()
    w.path.write_bytes(b"garbage")
    w.alive.clear()
    w.now = 10.0
    assert w.keeper.step() and w.db.fences == 1


def test_a_record_of_another_boot_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "keeper.json"
    path.write_bytes(FenceRecord(Hold.HOLDER, 1.0, 42, "another boot").encode())
    assert read_record(path) is None
