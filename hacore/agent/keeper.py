"""The fence keeper: a small process per node that fences a primary whose agent stopped feeding it.

Self-fencing inside the agent loop (rule 1) cannot help when the loop itself is dead or hung:
the database runs detached and outlives it, so a killed or SIGSTOPped agent would leave a
writable primary behind long after its lease expired elsewhere (DESIGN rule 6). The keeper is
that rule's guard, deliberately outside the loop:

- the agent writes a tiny record (``<data_dir>/keeper.json``) on every renewal while its
  database may write: ``holder`` with the self-fencing deadline (``CLOCK_MONOTONIC``, shared by
  every process of one boot), its pid and the boot id; ``released`` once it has seen its
  database refuse writes;
- the keeper (``hacore agent keeper``, started detached by the agent, restarted by it when it
  died) reads the record every 100 ms; past a ``holder`` deadline it fences the database
  through the replication backend's own ``fence()``, once per deadline. It talks to no store
  and waits for no agent: a file read, ``/proc`` and the local database are all it touches;
- it exits on its own when there is nothing left to guard and the agent's pid is gone.
- while the cluster is paused (``hacore cluster pause``) the record says ``paused``: no
  deadline, so the agent can be stopped, restarted or upgraded without a fence
  (docs/fencing.md, "Maintenance mode").

The record is written without fsync: a deadline on the monotonic clock means nothing after a
reboot, and a record of another boot (its boot id differs) is ignored.

Everything that decides is pure (:func:`keeper_decide`, :func:`fed_record`) and unit-tested;
the rest is the I/O around it. docs/fencing.md has the reasoning and what this does not cover.
"""

from __future__ import annotations

import concurrent.futures as cf
import enum
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from hacore.agent.hooks import NodeLog
from hacore.agent.supervise import RestartLog
from hacore.atomic_files import write_atomic
from hacore.backends.health import CheckResult, HealthCheck
from hacore.backends.processes import DetachedProcess, read_proc
from hacore.backends.replication import ReplicationBackend, ReplicationRole
from hacore.errors import HacoreError

log = logging.getLogger(__name__)

RECORD_FILE = "keeper.json"
PID_FILE = "keeper.pid"
LOG_FILE = "keeper.log"
#: seconds between two looks at the record: the deadline is enforced this late at most
POLL = 0.1
#: seconds the keeper waits for the database's role past a deadline; no answer is "unknown",
#: which fences (rule 7): a hung database must not hold the fence back
ROLE_TIMEOUT = 0.5
#: a keeper restarted this many times within ``RESTART_WINDOW`` seconds fails its check
RESTARTS_FAILING = 3
RESTART_WINDOW = 60.0
_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def boot_id() -> str:
    """This boot's id: a monotonic deadline written on another boot is meaningless."""
    try:
        return _BOOT_ID.read_text().strip()
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    """True for a live process, a stopped (SIGSTOP) one included: a hung agent is not gone."""
    entry = read_proc(pid)
    return entry is not None and entry.alive


# -------------------------------------------------------------------------------------------
# The record the agent feeds
# -------------------------------------------------------------------------------------------


class Hold(enum.Enum):
    #: the database may write under a lease; it must stop writing by ``deadline``
    HOLDER = "holder"
    #: the agent saw its database refuse writes: nothing to guard
    RELEASED = "released"
    #: the cluster is paused (``hacore cluster pause``): the database may write with no
    #: deadline, even once the agent is gone, so the agent can be restarted or upgraded
    #: without a failover; no other node can become a writer until the pause ends
    PAUSED = "paused"


@attrs.frozen
class FenceRecord:
    hold: Hold
    #: this boot's monotonic time past which the database must not be writable (holder only)
    deadline: float | None
    agent_pid: int
    boot: str

    def __attrs_post_init__(self) -> None:
        if (self.hold is Hold.HOLDER) != (self.deadline is not None):
            raise ValueError("a holder record needs a deadline, a released one has none")

    @property
    def holds(self) -> bool:
        return self.hold is Hold.HOLDER

    @property
    def key(self) -> tuple[Hold, float | None]:
        """What the keeper enforces once; a new agent adopting the record keeps the key."""
        return (self.hold, self.deadline)

    def encode(self) -> bytes:
        body = {
            "hold": self.hold.value,
            "deadline": self.deadline,
            "agent_pid": self.agent_pid,
            "boot": self.boot,
        }
        return json.dumps(body, sort_keys=True).encode()

    @classmethod
    def decode(cls, data: bytes) -> FenceRecord:
        try:
            body = json.loads(data)
            deadline = body["deadline"]
            return cls(
                Hold(body["hold"]),
                None if deadline is None else float(deadline),
                int(body["agent_pid"]),
                str(body["boot"]),
            )
        except (ValueError, KeyError, TypeError) as err:
            raise HacoreError(f"not a fence keeper record: {err}") from None


def fed_record(
    current: FenceRecord | None,
    *,
    pid: int,
    boot: str,
    may_write: bool,
    deadline: float | None,
    db_role: ReplicationRole | None,
    paused: bool = False,
) -> FenceRecord | None:
    """The record the agent must write now, None to leave the current one.

    ``holder`` whenever the database may write under a lease (written before a promotion
    and after every renewal). ``released`` only on evidence: the agent no longer lets the
    database write *and* read it as not a primary (``db_role``; None: not read, or the read
    failed). Anything else keeps the last record, so a lease dropped before the fence, or a
    fence that failed, leaves the last deadline for the keeper to enforce.

    While the cluster is ``paused``, a database not seen refusing writes is ``paused``: no
    deadline. Once the pause ends, a ``paused`` record the agent does not replace by a
    deadline of its own (it holds no lease) becomes a deadline already past: that database
    writes under no lease, and its agent fences it too (rule 11).
    """
    not_primary = db_role is not None and db_role is not ReplicationRole.PRIMARY
    if paused:
        wanted = FenceRecord(Hold.RELEASED if not_primary else Hold.PAUSED, None, pid, boot)
    elif may_write and deadline is not None:
        wanted = FenceRecord(Hold.HOLDER, deadline, pid, boot)
    elif not may_write and not_primary:
        wanted = FenceRecord(Hold.RELEASED, None, pid, boot)
    elif current is not None and current.hold is Hold.PAUSED:
        wanted = FenceRecord(Hold.HOLDER, 0.0, pid, boot)
    else:
        return None
    return None if wanted == current else wanted


# -------------------------------------------------------------------------------------------
# The keeper's decision
# -------------------------------------------------------------------------------------------


class DbRole(enum.Enum):
    PRIMARY = "primary"
    #: a standby, or stopped
    NOT_PRIMARY = "not primary"
    #: no answer in time, or an error: treated as a primary (rule 7)
    UNKNOWN = "unknown"


class KeeperAction(enum.Enum):
    WAIT = "wait"
    #: past a holder's deadline: read the database's role, then decide again
    READ_DB = "read_db"
    FENCE = "fence"
    EXIT = "exit"


@attrs.frozen
class KeeperView:
    now: float
    #: the last readable record of this boot; None when there is none
    record: FenceRecord | None
    #: the record's agent (or, with no record, the agent that started the keeper) runs,
    #: stopped or not
    agent_alive: bool
    #: this record's deadline was already enforced, or found nothing to fence
    settled: bool = False
    db: DbRole | None = None


@attrs.frozen
class KeeperDecision:
    action: KeeperAction
    reason: str
    #: the record's deadline needs no more looks (nothing was writable)
    settles: bool = False


def keeper_decide(view: KeeperView) -> KeeperDecision:
    """One look at the record: wait, read the database, fence it, or exit.

    The deadline alone decides a fence: a live agent that did not renew in time is hung, and
    a hung agent is as dangerous as a dead one. The agent's liveness only decides when the
    keeper may go away.
    """
    rec = view.record
    gone = "the agent is gone"
    if rec is not None and rec.hold is Hold.PAUSED:
        if view.agent_alive:
            return KeeperDecision(KeeperAction.WAIT, "the cluster is paused: no deadline")
        return KeeperDecision(KeeperAction.EXIT, f"the cluster is paused and {gone}")
    if rec is None or not rec.holds:
        if view.agent_alive:
            return KeeperDecision(KeeperAction.WAIT, "the agent lets no database write")
        return KeeperDecision(KeeperAction.EXIT, f"{gone} and left nothing to guard")
    assert rec.deadline is not None
    if view.now < rec.deadline:
        return KeeperDecision(
            KeeperAction.WAIT, f"the agent's deadline is {rec.deadline - view.now:.1f}s away"
        )
    late = f"the agent (pid {rec.agent_pid}) did not renew by its deadline"
    if view.settled:
        if view.agent_alive:
            return KeeperDecision(KeeperAction.WAIT, f"{late}; already enforced")
        return KeeperDecision(KeeperAction.EXIT, f"{late}; already enforced and {gone}")
    if view.db is None:
        return KeeperDecision(KeeperAction.READ_DB, f"{late}: is the database a primary?")
    if view.db is DbRole.NOT_PRIMARY:
        action = KeeperAction.WAIT if view.agent_alive else KeeperAction.EXIT
        return KeeperDecision(action, f"{late}, but the database is not a primary", settles=True)
    return KeeperDecision(
        KeeperAction.FENCE,
        f"{late} ({view.now - rec.deadline:.2f}s ago; the agent is "
        f"{'alive: hung, or fencing it too' if view.agent_alive else 'gone'}) and the "
        f"database is {view.db.value}: fencing it",
    )


# -------------------------------------------------------------------------------------------
# The agent's side: feeding the record, running the keeper
# -------------------------------------------------------------------------------------------


def read_record(path: Path) -> FenceRecord | None:
    """The record, None when there is none or it is another boot's; raises HacoreError when
    the file cannot be read or parsed."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise HacoreError(f"cannot read {path}: {err.strerror}") from None
    record = FenceRecord.decode(data)
    return record if record.boot == boot_id() else None


class DeadlineFeed:
    """The agent's writer of the record; never raises (a failure is kept for the check)."""

    def __init__(self, path: Path, pid: int, log: NodeLog) -> None:
        self.path = path
        self.pid = pid
        self.boot = boot_id()
        self.log = log
        self.current: FenceRecord | None = None
        #: why the last write failed, "" when it succeeded
        self.error = ""

    def adopt(self) -> None:
        """At agent start: take over a predecessor's record with this pid, its deadline
        untouched (a killed agent's deadline is still the keeper's to enforce)."""
        try:
            found = read_record(self.path)
        except HacoreError as err:
            # Unknown is not "released": left as it is until the database is seen fenced.
            self.log.warning("the fence keeper's record is unreadable: %s", err)
            return
        if found is None:
            self._write(FenceRecord(Hold.RELEASED, None, self.pid, self.boot))
        else:
            self._write(attrs.evolve(found, agent_pid=self.pid))

    def update(
        self,
        *,
        may_write: bool,
        deadline: float | None,
        db_role: ReplicationRole | None,
        paused: bool = False,
    ) -> None:
        record = fed_record(
            self.current,
            pid=self.pid,
            boot=self.boot,
            may_write=may_write,
            deadline=deadline,
            db_role=db_role,
            paused=paused,
        )
        if record is not None:
            self._write(record)

    def _write(self, record: FenceRecord) -> None:
        try:
            write_atomic(self.path, record.encode(), 0o644, durable=False)
        except OSError as err:
            error = f"cannot write {self.path}: {err.strerror}"
            if error != self.error:
                self.log.error("the fence keeper cannot be fed: %s", error)
            self.error = error
            return
        self.current, self.error = record, ""


#: what the keeper keeps of the agent's environment beyond the minimum (prefixes)
KEEPER_ENV = ("HACORE_BLOCK_PLUGINS", "HACORE_PLUGINS", "HACORE_TESTING_VERSION", "PYTHON")


class KeeperProcess:
    """The agent's handle on its node's keeper: started detached, found again by pid file."""

    def __init__(self, config_path: Path, data_dir: Path) -> None:
        self.config_path = Path(config_path).absolute()
        self.data_dir = Path(data_dir)
        self.record_path = self.data_dir / RECORD_FILE
        self.process = DetachedProcess(
            "fence keeper",
            log_path=self.data_dir / LOG_FILE,
            pid_path=self.data_dir / PID_FILE,
            executable_name=os.path.basename(sys.executable),
        )
        self.starts = 0
        #: the restarts (not the first start), for a keeper that keeps dying
        self._restarts = RestartLog(RESTART_WINDOW)
        self._last_exit: int | None = None
        #: why the last start failed, "" when it did not
        self.error = ""

    def argv(self) -> list[str]:
        return [
            sys.executable, "-m", "hacore.cli", "agent", "keeper",
            "-c", str(self.config_path), "--agent-pid", str(os.getpid()),
        ]  # fmt: skip

    def ensure(self, log: NodeLog) -> None:
        """Start the keeper unless one runs (a predecessor's is adopted as it is)."""
        if self.process.pid() is not None:
            return
        exited = self.process.exit_code()
        try:
            # hacore itself: the plugin settings it loads with, and the interpreter's
            pid = self.process.start(self.argv(), cwd=self.data_dir, keep_prefixes=KEEPER_ENV)
        except (HacoreError, OSError) as err:
            self.error = f"cannot start the fence keeper: {err}"
            log.error("%s", self.error)
            return
        self.error = ""
        self.starts += 1
        if self.starts == 1:
            log.info("fence keeper running (pid %d)", pid)
            return
        self._restarts.record(time.monotonic())
        say = log.warning if exited != self._last_exit else log.debug
        self._last_exit = exited
        say(
            "the fence keeper had exited (status %s): started again (pid %d); its log: %s",
            exited,
            pid,
            self.process.log_path,
        )

    def health(self, feed_error: str = "") -> CheckResult:
        if feed_error:
            return CheckResult(False, f"the keeper's record cannot be written: {feed_error}")
        pid = self.process.pid()
        if pid is None:
            return CheckResult(False, self.error or "the fence keeper is not running")
        recent = self._restarts.recent(time.monotonic())
        if recent >= RESTARTS_FAILING:
            return CheckResult(
                False,
                f"the fence keeper keeps exiting ({recent} restarts in "
                f"{RESTART_WINDOW:g}s; see {self.process.log_path})",
            )
        entry = read_proc(pid)
        if entry is not None and entry.state in ("T", "t"):
            return CheckResult(False, f"the fence keeper (pid {pid}) is stopped")
        return CheckResult(True, f"the fence keeper (pid {pid}) guards the lease deadline")

    def stop(self) -> None:
        self.process.stop(signal.SIGTERM, timeout=5.0)


class KeeperRunning(HealthCheck):
    """The node's fence keeper runs and is fed: without it rule 6 does not hold here, so the
    node is no candidate and an active steps down once the check expires."""

    name = "keeper"

    def __init__(self, keeper: KeeperProcess, feed: DeadlineFeed, ttl: float) -> None:
        self.keeper = keeper
        self.feed = feed
        self.ttl = ttl

    def run(self) -> CheckResult:
        return self.keeper.health(self.feed.error)


# -------------------------------------------------------------------------------------------
# The keeper process
# -------------------------------------------------------------------------------------------


def read_role(replication: ReplicationBackend, timeout: float = ROLE_TIMEOUT) -> DbRole:
    """The database's role within ``timeout``, from a daemon thread so a hung database
    cannot hold the keeper."""
    future: cf.Future[DbRole] = cf.Future()

    def ask() -> None:
        try:
            status = replication.status()
        except BaseException as err:
            future.set_exception(err)
            return
        running_primary = status.running and status.role is ReplicationRole.PRIMARY
        future.set_result(DbRole.PRIMARY if running_primary else DbRole.NOT_PRIMARY)

    threading.Thread(target=ask, name="hacore-keeper-role", daemon=True).start()
    try:
        return future.result(timeout=timeout)
    except cf.TimeoutError:
        log.warning("the database did not say its role within %gs: treated as a primary", timeout)
    except Exception as err:
        log.warning("cannot read the database's role (%s): treated as a primary", err)
    return DbRole.UNKNOWN


class Keeper:
    """The keeper's loop; :meth:`step` is one look, for tests."""

    def __init__(
        self,
        replication: ReplicationBackend,
        record_path: Path,
        *,
        agent_pid: int,
        clock: Callable[[], float] = time.monotonic,
        alive: Callable[[int], bool] = pid_alive,
    ) -> None:
        self.replication = replication
        self.record_path = record_path
        self.agent_pid = agent_pid
        self.clock = clock
        self.alive = alive
        self._record: FenceRecord | None = None
        self._settled: tuple[Hold, float | None] | None = None
        self._unreadable = ""

    def run(self, poll: float = POLL) -> None:
        node = self.replication.node_name
        log.info("guarding the database of %s (record %s)", node, self.record_path)
        while self.step():
            time.sleep(poll)

    def step(self) -> bool:
        """One look; False once the keeper should exit."""
        record = self._read()
        pid = record.agent_pid if record is not None else self.agent_pid
        view = KeeperView(
            now=self.clock(),
            record=record,
            agent_alive=self.alive(pid),
            settled=record is not None and record.key == self._settled,
        )
        decision = keeper_decide(view)
        if decision.action is KeeperAction.READ_DB:
            view = attrs.evolve(view, db=read_role(self.replication), now=self.clock())
            decision = keeper_decide(view)
        if decision.settles and record is not None:
            self._settled = record.key
        if decision.action is KeeperAction.FENCE:
            assert record is not None
            latest = self._read()
            if latest is None or latest.key != record.key:
                return True  # renewed (or released) while the role was read: look again
            log.warning("%s", decision.reason)
            try:
                self.replication.fence()
            except Exception as err:
                log.error("the fence failed (tried again in %gs): %s", POLL, err)
                return True
            self._settled = record.key
            log.warning("fenced: the database refuses writes until the agent decides again")
        elif decision.action is KeeperAction.EXIT:
            log.info("exiting: %s", decision.reason)
            return False
        return True

    def _read(self) -> FenceRecord | None:
        """The record; an unreadable one keeps the last one read (its deadline still holds)."""
        try:
            self._record = read_record(self.record_path)
        except HacoreError as err:
            if str(err) != self._unreadable:
                log.error("%s: the last record read still applies", err)
            self._unreadable = str(err)
            return self._record
        self._unreadable = ""
        return self._record
