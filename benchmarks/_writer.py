"""The writer: one row at a time through a multi-host connection string, in its own process.

Run as a script it inserts ids ``first, first+1, ...`` into the benchmark table, one autocommit
INSERT each, and prints one line per event on stdout:

    A <id> <monotonic time> <server port>    the INSERT of <id> was acknowledged
    E <monotonic time> <message>             a connect or an INSERT failed

An id whose INSERT failed is never retried (it may or may not have been committed), so every
acknowledged id must be found on the new primary. No statement timeout: a cancelled
synchronous commit is reported as a success with only a warning, which would count as an
acknowledgement the standbys never saw. ``time.monotonic()`` is the system-wide
CLOCK_MONOTONIC, so the times compare directly with the benchmark process's. The server port
is the one the client connected to, or with ``--server-port`` the one the server says it
listens on (``inet_server_port()``): through a load balancer, the two differ.

Imported, :class:`Writer` runs the script and collects its lines in a thread.
"""

from __future__ import annotations

import argparse
import bisect
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import attrs


@attrs.frozen
class Ack:
    id: int
    at: float
    port: int


class Writer:
    """The writer process, seen from the benchmark."""

    def __init__(
        self,
        dsn: str,
        table: str,
        *,
        first_id: int = 1,
        interval: float = 0.01,
        server_port: bool = False,
    ):
        self.acks: list[Ack] = []
        self.errors: list[tuple[float, str]] = []
        self._argv = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--dsn",
            dsn,
            "--table",
            table,
            "--first-id",
            str(first_id),
            "--interval",
            str(interval),
            *(["--server-port"] if server_port else []),
        ]
        self._changed = threading.Condition()
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> Writer:
        self._proc = subprocess.Popen(
            self._argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, bufsize=1
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            kind, _, rest = line.rstrip("\n").partition(" ")
            with self._changed:
                if kind == "A":
                    ident, at, port = rest.split()
                    self.acks.append(Ack(int(ident), float(at), int(port)))
                else:
                    at, _, message = rest.partition(" ")
                    self.errors.append((float(at), message))
                self._changed.notify_all()

    def wait_acks(self, count: int, timeout: float) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.acks) >= count, timeout):
                raise TimeoutError(
                    f"the writer had {len(self.acks)} of {count} acknowledged writes after "
                    f"{timeout:g} s; last error: {self.last_error()}"
                )

    def first_ack(self, *, after: float, not_port: int | None, timeout: float) -> Ack:
        """The first write acknowledged after ``after`` by a server other than ``not_port``."""

        def found() -> Ack | None:
            start = bisect.bisect_right([a.at for a in self.acks], after)
            return next((a for a in self.acks[start:] if a.port != not_port), None)

        with self._changed:
            ack = self._changed.wait_for(found, timeout)
        if ack is None:
            raise TimeoutError(
                f"no write acknowledged within {timeout:g} s; last error: {self.last_error()}"
            )
        return ack

    def last_error(self) -> str:
        with self._changed:
            return self.errors[-1][1] if self.errors else "none"

    def stop(self) -> list[Ack]:
        """SIGTERM ends it after the statement in flight; SIGKILL if that statement hangs."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=10)
        with self._changed:
            return list(self.acks)


# -- the writer process -----------------------------------------------------------------------


_stopping = threading.Event()


def _on_term(signum: int, frame: FrameType | None) -> None:
    _stopping.set()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def run(dsn: str, table: str, first_id: int, interval: float, server_port: bool = False) -> None:
    import psycopg

    out = sys.stdout
    statement = f"INSERT INTO {table} (id) VALUES (%s)"
    conn: psycopg.Connection[tuple[object, ...]] | None = None
    port = 0
    next_id = first_id
    try:
        while not _stopping.is_set():
            if conn is None:
                try:
                    conn = psycopg.connect(dsn, autocommit=True)
                    port = int(conn.info.port)
                    if server_port:
                        row = conn.execute("SELECT inet_server_port()").fetchone()
                        port = int(str(row[0])) if row and row[0] is not None else port
                except psycopg.Error as exc:
                    if conn is not None:
                        conn.close()
                        conn = None
                    out.write(f"E {time.monotonic():.6f} connect: {_one_line(exc)}\n")
                    out.flush()
                    time.sleep(interval)
                    continue
            ident, next_id = next_id, next_id + 1
            try:
                conn.execute(statement, (ident,))
            except psycopg.Error as exc:
                out.write(f"E {time.monotonic():.6f} insert {ident}: {_one_line(exc)}\n")
                out.flush()
                conn.close()
                conn = None
                continue
            out.write(f"A {ident} {time.monotonic():.6f} {port}\n")
            out.flush()
            time.sleep(interval)
    finally:
        if conn is not None:
            conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="insert one row at a time, report acks")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--first-id", type=int, default=1)
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument(
        "--server-port", action="store_true", help="report the port the server listens on"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _on_term)
    run(args.dsn, args.table, args.first_id, args.interval, args.server_port)


if __name__ == "__main__":
    main()
