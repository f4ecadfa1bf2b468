"""The pure parts of minority mode's salvage (hacore/backends/salvage.py): PostgreSQL's
``test_decoding`` rows grouped into transactions, pg_rewind's fork point, what is kept, and
the archive files; plus the ``nodes list`` / ``cluster status`` warning."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from hacore.backends import salvage
from hacore.cli.nodes import minority_warnings

ROWS = [
    ("0/3000100", "740", "BEGIN 740"),
    ("0/3000100", "740", "table public.t: INSERT: id[integer]:1 side[text]:'a'"),
    ("0/3000200", "740", "COMMIT 740 (at 2026-12-06 23:00:00.1+00)"),
    ("0/3000300", "741", "BEGIN 741"),
    ("0/3000300", "741", "table public.t: INSERT: id[integer]:2 side[text]:'a'"),
    ("0/3000300", "741", "table public.t: UPDATE: id[integer]:1 side[text]:'b'"),
    ("0/3000400", "741", "COMMIT 741 (at 2026-12-06 23:00:00.2+00)"),
]


def test_rows_group_into_committed_transactions() -> None:
    found = salvage.transactions(ROWS)
    assert [t.xid for t in found] == [740, 741]
    assert found[0].commit_lsn == 0x3000200
    assert found[0].committed_at == "2026-12-06 23:00:00.1+00"
    assert found[1].changes == (
        "table public.t: INSERT: id[integer]:2 side[text]:'a'",
        "table public.t: UPDATE: id[integer]:1 side[text]:'b'",
    )


def test_only_transactions_committed_past_the_fork_are_kept() -> None:
    found = salvage.transactions(ROWS)
    # the winner received WAL up to 0/3000200: it has transaction 740, not 741
    assert [t.xid for t in salvage.diverged(found, 0x3000200)] == [741]
    assert [t.xid for t in salvage.diverged(found, 0x3000100)] == [740, 741]
    assert salvage.diverged(found, 0x3000400) == []


def test_an_unknown_fork_keeps_everything() -> None:
    found = salvage.transactions(ROWS)
    assert salvage.diverged(found, None) == found


@pytest.mark.parametrize(
    ("output", "fork"),
    [
        (
            "pg_rewind: servers diverged at WAL location 0/3000200 on timeline 1\n"
            "pg_rewind: rewinding from last common checkpoint at 0/2000060 on timeline 1",
            0x3000200,
        ),
        ("pg_rewind: servers diverged at WAL location 1A/FF on timeline 3", (0x1A << 32) | 0xFF),
        ("pg_rewind: source and target cluster are on the same timeline\nno rewind required", None),
        ("", None),
    ],
)
def test_fork_point_from_pg_rewind(output: str, fork: int | None) -> None:
    assert salvage.fork_point(output) == fork


def test_lsn_round_trip() -> None:
    for text in ("0/0", "0/3000200", "1A/FF"):
        assert salvage.lsn_text(salvage.lsn(text)) == text
    with pytest.raises(salvage.SalvageError):
        salvage.lsn("nonsense")


def test_archives_are_written_listed_and_read(tmp_path: Path) -> None:
    now = datetime.datetime(2026, 12, 6, 23, 0, 1, 5, tzinfo=datetime.UTC)
    kept = salvage.diverged(salvage.transactions(ROWS), 0x3000200)
    data = salvage.archive(node="n1", winner="n2", now=now, timeline=2, fork=0x3000200, kept=kept)
    path = salvage.write(tmp_path / "salvage", data)
    assert path.name == "20261206T230001.000005Z-n1.json"
    (listed,) = salvage.listing(tmp_path / "salvage")
    assert listed == {
        "id": "20261206T230001.000005Z-n1",
        "node": "n1",
        "winner": "n2",
        "created_at": "2026-12-06T23:00:01.000005+00:00",
        "fork_point": "0/3000200",
        "transactions": 1,
        "changes": 2,
    }
    back = salvage.read(tmp_path / "salvage", "20261206T230001.000005Z-n1")
    assert back["transactions"][0]["commit_lsn"] == "0/3000400"
    with pytest.raises(salvage.SalvageError):
        salvage.read(tmp_path / "salvage", "../../etc/passwd")
    with pytest.raises(salvage.SalvageError):
        salvage.read(tmp_path / "salvage", "20261206T230001.000005Z-n9")


def test_no_directory_lists_nothing(tmp_path: Path) -> None:
    assert salvage.listing(tmp_path / "absent") == []


def test_the_warning_names_a_node_holding_in_a_minority() -> None:
    rows = [
        {"name": "n1", "minority": {"mode": "on", "holding": True, "cut_off_for": 12.5}},
        {"name": "n2", "minority": {"mode": "on", "holding": False, "cut_off_for": None}},
        {"name": "n3", "minority": None},
    ]
    (warning,) = minority_warnings(rows)
    assert warning.startswith("WARNING: n1 cannot reach a majority of the store")
    assert "salvage" in warning


def test_a_failed_export_is_a_warning_too() -> None:
    error = (
        "rewind failed: salvage failed on n1 (disk full); not rewinding, so that nothing is lost"
    )
    rows = [{"name": "n1", "minority": {"holding": False, "salvage_error": error}}]
    (warning,) = minority_warnings(rows)
    assert warning.startswith("WARNING: n1 is not rewound") and "disk full" in warning
