"""The "mgmtworker": runs pending workflows step by step, recording each step in the database.

``python -m sample_manager.worker --dsn DSN [--node NAME] [--step-seconds 0.5] [--concurrency 2]``

It only ever takes ``pending`` workflows. A ``running`` one belongs to the worker holding its
lock (see :mod:`sample_manager.workflows`); if that worker is gone, deciding whether the work
resumes or fails is the job of a recovery pass (hacore's ``after_promote`` hook, or
``python -m sample_manager.recover``), never of a worker that happens to poll at that moment.

It may be killed at any point: a step is recorded together with the workflow's progress in one
transaction, so it is either recorded or not. On SIGTERM/SIGINT it stops between two steps:
a resumable workflow is handed back as ``pending`` (another node's worker carries on after a
switchover), a non-resumable one is run to its end (give the service a stop timeout that
allows it; if it is killed first, the next recovery marks it failed).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType

import psycopg

from sample_manager import workflows
from sample_manager.db import (
    Conn,
    DatabaseConfigError,
    connect,
    ensure_schema,
    first_line,
    resolve_dsn,
)
from sample_manager.workflows import LostWorkflowError, Workflow

log = logging.getLogger("sample_manager.worker")

#: seconds between two attempts to reach the database
RETRY_SECONDS = 1.0


class Worker:
    """One worker thread: its own connection, one workflow at a time."""

    def __init__(
        self,
        dsn: str,
        node: str,
        *,
        step_seconds: float,
        poll_seconds: float,
        stop: threading.Event,
    ) -> None:
        self.dsn = dsn
        self.node = node
        self.step_seconds = step_seconds
        self.poll_seconds = poll_seconds
        self.stop = stop
        self._conn: Conn | None = None
        #: the workflow this thread was running when its connection broke
        self._orphan: int | None = None
        self._last_error = ""

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                if not self.run_once():
                    self.stop.wait(self.poll_seconds)
                self._last_error = ""
            except psycopg.Error as err:
                if first_line(err) != self._last_error:  # once, not every second of an outage
                    log.warning(
                        "database unavailable: %s; retrying every %gs",
                        first_line(err),
                        RETRY_SECONDS,
                    )
                self._last_error = first_line(err)
                self._close()
                self.stop.wait(RETRY_SECONDS)
        self._close()

    def run_once(self) -> bool:
        """Run one workflow if there is one; False when there was nothing to do."""
        conn = self._connection()
        workflow = None
        if self._orphan is not None:
            workflow = workflows.adopt(conn, self._orphan, self.node)
            if workflow is not None:
                log.info("workflow %d: carrying on after a lost connection", workflow.id)
            self._orphan = None
        if workflow is None:
            workflow = workflows.claim(conn, self.node)
        if workflow is None:
            return False
        try:
            self._execute(conn, workflow)
        except psycopg.OperationalError:
            self._orphan = workflow.id
            raise
        except psycopg.Error as err:
            log.error("workflow %d failed: %s", workflow.id, first_line(err))
            with contextlib.suppress(psycopg.Error):
                workflows.fail(conn, workflow.id, self.node, first_line(err))
        finally:
            with contextlib.suppress(psycopg.Error):
                workflows.unlock(conn, workflow.id)
        return True

    def _execute(self, conn: Conn, workflow: Workflow) -> None:
        first = workflow.current_step + 1
        log.info(
            "workflow %d (%s): running steps %d..%d",
            workflow.id,
            workflow.name,
            first,
            workflow.total_steps,
        )
        for step in range(first, workflow.total_steps + 1):
            if self.stop.is_set() and workflow.resumable:
                workflows.hand_back(conn, workflow.id, self.node)
                log.info("workflow %d: handed back at step %d (stopping)", workflow.id, step - 1)
                return
            time.sleep(self.step_seconds)  # the step's work
            try:
                workflows.record_step(conn, workflow, step, self.node)
            except LostWorkflowError as err:
                log.warning("%s: dropping it", err)
                return
        log.info("workflow %d: succeeded", workflow.id)

    def _connection(self) -> Conn:
        if self._conn is None or self._conn.closed:
            conn = connect(self.dsn, application=f"sample-manager-worker {self.node}")
            try:
                ensure_schema(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (got {text})")
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (got {text})")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sample-manager-worker", description=__doc__)
    parser.add_argument("--dsn", help="PostgreSQL DSN (default: $SAMPLE_MANAGER_DSN)")
    parser.add_argument(
        "--node", default=socket.gethostname(), help="this node's name, recorded with each step"
    )
    parser.add_argument("--step-seconds", type=_positive, default=0.5)
    parser.add_argument("--poll-seconds", type=_positive, default=0.5)
    parser.add_argument("--concurrency", type=_count, default=2, help="workflows run at once")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        dsn = resolve_dsn(args.dsn)
    except DatabaseConfigError as err:
        print(f"sample-manager-worker: {err}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping after the current steps", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threads = [
        threading.Thread(
            target=Worker(
                dsn,
                args.node,
                step_seconds=args.step_seconds,
                poll_seconds=args.poll_seconds,
                stop=stop,
            ).run,
            name=f"worker-{i}",
        )
        for i in range(args.concurrency)
    ]
    log.info(
        "worker %s: %d thread(s), polling every %gs", args.node, len(threads), args.poll_seconds
    )
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        for thread in threads:
            thread.join(0.2)
    log.info("worker %s stopped", args.node)
    return 0


if __name__ == "__main__":
    sys.exit(main())
