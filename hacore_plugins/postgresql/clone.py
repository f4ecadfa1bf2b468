"""Copying the leader's data with ``pg_basebackup``: straight in, or beside and then a swap.

A node with data copies into a temporary directory: its current data stays where it is,
untouched, until the copy is complete; only then are two renames done (old aside, new in) and
the old data removed. A clone that fails, is cut off, or is interrupted by its caller leaves
the old data as it was and no temporary directory behind.

A node without data (a join, or a node whose data was removed) copies straight into its data
directory: nothing is there to keep, and the swap would only cost time. A marker beside it,
written before the copy begins and removed once the copy is complete and on disk, says that
the directory is an unfinished copy; whoever finds the marker of a cloner that is gone (the
agent died mid-copy) removes the copy and the marker, and the node is empty again.

The node's own replication slot on the source is made while the copy runs (:class:`SlotBeside`),
not before it: a connection to the source (TLS, SCRAM) and the slot's creation (written to its
disk) would otherwise stand between the clone's start and the copy's. The copy is complete
only once the slot exists and keeps the WAL after the copy's end, so the standby finds every
segment it asks for; a slot that cannot be made stops the copy at once.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from hacore.atomic_files import sync_dir, write_atomic
from hacore.backends.replication import ProgressCallback, ReplicationSource
from hacore.backends.salvage import lsn
from hacore.errors import ReplicationError
from hacore_plugins.postgresql.commands import PgTools
from hacore_plugins.postgresql.layout import Layout
from hacore_plugins.postgresql.sql import explain
from hacore_plugins.postgresql.writeback import Writeback

log = logging.getLogger(__name__)

#: ``12345/67890 kB (18%), 0/1 tablespace ...``: pg_basebackup's progress line when its
#: output is not a terminal (one line per update, at most once a second).
_PROGRESS = re.compile(r"^\s*(\d+)/(\d+) kB \(")
#: ``pg_basebackup: write-ahead log end point: 0/9000100`` (-v): where the copy's WAL ends.
_END_POINT = re.compile(r"write-ahead log end point: ([0-9A-F]+/[0-9A-F]+)")


class SlotBeside:
    """This node's slot on the source, made on a connection of its own while the copy runs.

    Until the copy ends its temporary slot (``-X stream``) keeps the WAL; from then on the
    node's own slot must, until the standby streams. A physical slot keeps the WAL from the
    source's last checkpoint on (the copy's own fast checkpoint, or a later one), so a slot
    made during the copy keeps what follows the copy's end point; one whose start lies past
    that point (made late, after another checkpoint) cannot be trusted to, and fails the copy.

    ``create`` makes the slot (an unused one replaced) and returns where it keeps WAL from,
    or None when a walsender holds it already; ``drop`` removes it.
    """

    def __init__(self, create: Callable[[], int | None], drop: Callable[[], None]) -> None:
        self._create = create
        self._drop = drop
        self._thread: threading.Thread | None = None
        self._made: int | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hacore-clone-slot", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            self._made = self._create()
        except BaseException as err:  # raised again in the cloning thread
            self._error = err

    def raise_if_failed(self) -> None:
        """The slot could not be made: raise now, not once the whole copy is done."""
        if self._error is not None:
            raise self._error

    def check(self, end: int | None) -> None:
        """Wait for the slot; raise when it could not be made, or was made too late to keep
        the WAL after ``end`` (the copy's end point, None when unknown)."""
        self.start()
        assert self._thread is not None
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._made is not None and end is not None and self._made > end:
            raise ReplicationError(
                "clone failed: this node's replication slot was made after the copy ended and "
                "a checkpoint (it would not keep the WAL the standby needs first); copy again"
            )

    def undo(self) -> None:
        """The clone failed: drop the slot if this made it."""
        if self._thread is None:
            return
        self._thread.join()
        if self._made is not None:
            self._drop()


def remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def basebackup(
    tools: PgTools,
    target: Path,
    source: ReplicationSource,
    *,
    conninfo: str,
    max_rate: str | None,
    progress: ProgressCallback | None,
    slot: SlotBeside | None = None,
) -> None:
    """Copy ``source`` into ``target``, on disk when this returns; on any failure remove
    ``target`` and raise. ``target`` must hold nothing worth keeping. ``slot`` is made while
    the copy runs, and must be there when it ends (the caller drops it on a failure)."""
    remove_tree(target)
    args = ["-D", str(target), "-X", "stream", "-c", "fast", "-P", "-v", "-w", "--no-sync"]
    # No manifest: a standby never reads it (it is for pg_verifybackup of a backup kept as
    # is), and its checksums cost the active some 15% of the CPU it spends on the copy.
    args.append("--no-manifest")
    # No -S: a temporary slot guards the copy and the node's own slot, made meanwhile,
    # keeps the WAL after it; -S would fail while an old standby of this node holds the slot.
    args += ["-d", conninfo]
    if max_rate:
        args += ["-r", max_rate]
    proc = tools.spawn("pg_basebackup", args)
    if slot is not None:
        slot.start()
    # --no-sync: the copy is written back a chunk at a time, never in one burst: while it
    # runs once it outgrows the page cache's share, the rest at its end (writeback.py)
    writeback = Writeback(target)
    writeback.start()
    messages: collections.deque[str] = collections.deque(maxlen=40)
    done = total = 0
    end: int | None = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if slot is not None:
                slot.raise_if_failed()
            match = _PROGRESS.match(line)
            if match is None:
                found = _END_POINT.search(line)
                if found is not None:
                    end = lsn(found.group(1))
                messages.append(line.rstrip())
                log.debug("pg_basebackup: %s", line.rstrip())
                continue
            # The total is an estimate that may grow; keep both numbers monotonic.
            done = max(done, int(match.group(1)) * 1024)
            total = max(total, int(match.group(2)) * 1024, done)
            writeback.copied(done)
            if progress is not None:
                progress(done, total)
        code = proc.wait()
        if code == 0:
            if slot is not None:
                slot.check(end)
            try:
                writeback.finish()
            except OSError as err:
                raise ReplicationError(f"clone failed: cannot write the copy: {err}") from None
    except BaseException:
        writeback.stop()
        _terminate(proc)
        remove_tree(target)
        raise
    finally:
        writeback.stop()
    if code != 0:
        remove_tree(target)
        raise ReplicationError(f"clone failed: {explain(chr(10).join(messages), source)}")
    if progress is not None and total:
        progress(total, total)


@contextlib.contextmanager
def straight_in(layout: Layout) -> Iterator[Path]:
    """The data directory to copy into, marked unfinished until the block ends without error;
    an error removes the copy and the marker. Only for a node with no data to keep."""
    remove_tree(layout.pgdata)
    write_atomic(layout.cloning, json.dumps(_cloner()))
    try:
        yield layout.pgdata
    except BaseException:
        remove_tree(layout.pgdata)
        layout.cloning.unlink(missing_ok=True)
        raise
    layout.cloning.unlink()
    sync_dir(layout.home)


def _cloner(pid: int | None = None) -> dict[str, int] | None:
    """This process (or ``pid``) as its pid and start time: a pid alone may be reused."""
    pid = os.getpid() if pid is None else pid
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return {"pid": pid, "started": int(fields[19])}


def _cloner_alive(layout: Layout) -> bool:
    """The process that wrote the marker still runs (an unreadable marker: it does not)."""
    try:
        recorded = json.loads(layout.cloning.read_text())
        return bool(recorded) and _cloner(int(recorded["pid"])) == recorded
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _terminate(proc: subprocess.Popen[str]) -> None:
    """Stop the tool and every process it forked (its own process group)."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + wait
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not _group_alive(proc.pid):
            break
    if proc.stdout is not None:
        proc.stdout.close()


def _group_alive(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def swap_in(layout: Layout, new: Path) -> None:
    """Make ``new`` the data directory; the old one is removed only after the renames."""
    remove_tree(layout.aside)
    if layout.pgdata.exists():
        os.rename(layout.pgdata, layout.aside)
    os.rename(new, layout.pgdata)
    sync_dir(layout.home)
    remove_tree(layout.aside)


def recover_interrupted(layout: Layout) -> None:
    """Clean up after an agent that died mid-clone: an unfinished straight copy is removed
    (the node is empty again), a swap cut between its two renames is undone."""
    if layout.cloning.exists() and not _cloner_alive(layout):
        log.warning("removing %s: a clone into it was interrupted", layout.pgdata)
        remove_tree(layout.pgdata)
        layout.cloning.unlink(missing_ok=True)
        sync_dir(layout.home)
    if not layout.pgdata.exists() and layout.aside.exists():
        log.warning("restoring %s: a swap was interrupted", layout.pgdata)
        os.rename(layout.aside, layout.pgdata)


def rewind(tools: PgTools, layout: Layout, *, conninfo: str, dry_run: bool) -> str:
    """Run pg_rewind; its output on success, ReplicationError (with its words) if not."""
    args = ["-D", str(layout.pgdata), "--source-server", conninfo]
    if dry_run:
        args.append("--dry-run")
    result = tools.run("pg_rewind", args)
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise ReplicationError(f"pg_rewind failed: {_last_lines(output)}")
    return output


def _last_lines(text: str, count: int = 3) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " / ".join(lines[-count:]) or "no output"
