"""Salvage archives: the writes a losing node had that the winner does not, kept before a rewind.

With ``failover.minority_mode: on`` an active cut off from the store's majority keeps taking
writes while the majority elects another active (hacore/agent/minority.py). Only one history
can survive the reconnection: the store's lease holder's. Before the loser's database is
rewound (or re-cloned) onto the winner's history, its replication backend exports the
transactions committed after the point where the two histories forked to a timestamped JSON
archive in ``<data_dir>/salvage/`` on that node. ``hacore cluster salvage list|show`` read the
archives through every agent's API (``GET /salvage``, ``GET /salvage/<id>``).

An archive is written completely (to a temporary name, fsynced, renamed) before the rewind
starts; when the export fails the backend refuses to rewind, so no write is lost from disk
without a copy (docs/fencing.md, "Minority mode").

The parsing of PostgreSQL's ``test_decoding`` output and of pg_rewind's fork point is pure and
unit-tested here; the backend does the I/O.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import attrs

from hacore.atomic_files import write_atomic
from hacore.errors import HacoreError

#: the directory under the node's data_dir
DIR = "salvage"
#: the words that start a failed export's error (the rewind did not run)
FAILED = "salvage failed"
_ID = re.compile(r"^[0-9]{8}T[0-9]{6}(\.[0-9]{1,6})?Z-[A-Za-z0-9_.-]+$")
_DIVERGED = re.compile(r"servers diverged at WAL location ([0-9A-Fa-f]+)/([0-9A-Fa-f]+)")
_BEGIN = re.compile(r"^BEGIN( [0-9]+)?$")
_COMMIT = re.compile(r"^COMMIT( [0-9]+)?( \(at (?P<at>.+)\))?$")


class SalvageError(HacoreError):
    """An archive that cannot be read or written."""


@runtime_checkable
class Salvaging(Protocol):
    """A replication backend that can salvage a losing primary's writes (PostgreSQL)."""

    def configure_salvage(self, directory: Path) -> None:
        """Export diverged writes to ``directory`` before every rewind from now on."""

    def minority_holding(self) -> None:
        """The active holds on in a minority: commits must not wait for a standby on the
        other side, and its writes from here on must stay decodable."""

    def keep_salvage_slot(self, members: Sequence[str]) -> None:
        """As the active holding the lease: keep the salvage slot, advanced only as far as
        every other member in ``members`` has confirmed."""


def lsn(text: str) -> int:
    """PostgreSQL's ``X/Y`` WAL location as a number of bytes."""
    high, _, low = text.strip().partition("/")
    try:
        return (int(high, 16) << 32) | int(low, 16)
    except ValueError:
        raise SalvageError(f"not a WAL location: {text!r}") from None


def lsn_text(position: int) -> str:
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


def fork_point(pg_rewind_output: str) -> int | None:
    """Where the two histories diverged, from pg_rewind's (dry-run) output; None when it did
    not say (no rewind required, or it failed)."""
    found = _DIVERGED.search(pg_rewind_output)
    if found is None:
        return None
    return (int(found.group(1), 16) << 32) | int(found.group(2), 16)


@attrs.frozen
class Transaction:
    xid: int | None
    #: the end of its commit record: the winner has it when this is at or before the fork
    commit_lsn: int
    committed_at: str | None
    changes: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "xid": self.xid,
            "commit_lsn": lsn_text(self.commit_lsn),
            "committed_at": self.committed_at,
            "changes": list(self.changes),
        }


def transactions(rows: Iterable[tuple[str, Any, str]]) -> list[Transaction]:
    """Group ``pg_logical_slot_peek_changes`` rows ``(lsn, xid, data)`` of the
    ``test_decoding`` plugin into committed transactions. Decoding emits each transaction
    whole at its commit, so rows of two transactions never interleave."""
    found: list[Transaction] = []
    changes: list[str] = []
    for position, xid, data in rows:
        if _BEGIN.match(data):
            changes = []
            continue
        commit = _COMMIT.match(data)
        if commit is None:
            changes.append(data)
            continue
        found.append(
            Transaction(
                int(xid) if xid is not None else None,
                lsn(str(position)),
                commit.group("at"),
                tuple(changes),
            )
        )
        changes = []
    return found


def diverged(found: Sequence[Transaction], fork: int | None) -> list[Transaction]:
    """The transactions the winner does not have: committed past the fork point. Without a
    fork point (it could not be found) every decoded transaction is kept: a superset is
    safe, a guess is not."""
    if fork is None:
        return list(found)
    return [t for t in found if t.commit_lsn > fork]


def archive_id(node: str, now: datetime.datetime) -> str:
    return f"{now.astimezone(datetime.UTC):%Y%m%dT%H%M%S.%fZ}-{node}"


def archive(
    *,
    node: str,
    winner: str,
    now: datetime.datetime,
    timeline: int | None,
    fork: int | None,
    kept: Sequence[Transaction],
) -> dict[str, Any]:
    return {
        "id": archive_id(node, now),
        "node": node,
        "winner": winner,
        "created_at": now.astimezone(datetime.UTC).isoformat(),
        "timeline": timeline,
        "fork_point": None if fork is None else lsn_text(fork),
        "complete": True,
        "note": (
            "transactions this node committed after its history forked from the winner's: "
            "they are not in the cluster's database any more"
            if fork is not None
            else "the fork point could not be read: every transaction the salvage slot held "
            "is kept, some of them may also be in the winner's database"
        ),
        "transactions": [t.to_json() for t in kept],
    }


def summary(data: dict[str, Any]) -> dict[str, Any]:
    """What ``salvage list`` shows of an archive."""
    txs = data.get("transactions") or []
    return {
        "id": data.get("id"),
        "node": data.get("node"),
        "winner": data.get("winner"),
        "created_at": data.get("created_at"),
        "fork_point": data.get("fork_point"),
        "transactions": len(txs),
        "changes": sum(len(t.get("changes") or []) for t in txs if isinstance(t, dict)),
    }


def write(directory: Path, data: dict[str, Any]) -> Path:
    """Write an archive durably: temporary file, fsync, rename, fsync of the directory."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / f"{data['id']}.json"
    return write_atomic(path, json.dumps(data, indent=1, sort_keys=True))


def read(directory: Path, ident: str) -> dict[str, Any]:
    if not _ID.match(ident):
        raise SalvageError(f"no salvage archive {ident!r}")
    try:
        data = json.loads((directory / f"{ident}.json").read_text())
    except FileNotFoundError:
        raise SalvageError(f"no salvage archive {ident!r} on this node") from None
    except (OSError, ValueError) as err:
        raise SalvageError(f"salvage archive {ident} is unreadable: {err}") from None
    if not isinstance(data, dict):
        raise SalvageError(f"salvage archive {ident} is not a JSON object")
    return data


def listing(directory: Path) -> list[dict[str, Any]]:
    """Summaries of every archive in ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.glob("*.json")):
        try:
            found.append(summary(read(directory, path.stem)))
        except SalvageError as err:
            found.append({"id": path.stem, "error": str(err)})
    return found
