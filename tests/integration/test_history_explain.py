"""``cluster explain`` and ``cluster history`` against a real cluster (3 nodes, etcd,
synchronous mode on), through the CLI.

In file order: explain on the formed cluster (the synchronous standby would take over, the
other is not a synchronous standby), explain with one standby's PostgreSQL frozen (SIGSTOP:
its database does not answer, so its state is unknown and its checks fail), then the history
through a switchover and a crash of the active.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest
from cluster_fixtures import WAIT, CliCluster, formed_cluster

from hacore.testing.procs import wait_for
from hacore_plugins.postgresql.settings import default_bin_dir

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(default_bin_dir() is None, reason="no PostgreSQL binaries installed"),
]


@pytest.fixture(scope="module")
def formed() -> Iterator[CliCluster]:
    yield from formed_cluster("etcd", extra={"failover": {"synchronous_mode": "on"}})


def explained(cluster: CliCluster, *node: str) -> dict[str, dict[str, Any]]:
    answer = cluster.cli_json("cluster", "explain", *node)
    return {n["node"]: n for n in answer["nodes"]}


def codes(answer: dict[str, Any]) -> set[str]:
    return {r["code"] for r in answer["reasons"]}


def _sync_split(cluster: CliCluster) -> tuple[str, str, str] | None:
    """(active, the standby that would take over, the one that would not), once settled."""
    found = explained(cluster)
    active = [n for n, a in found.items() if a["active"]]
    yes = [n for n, a in found.items() if a["would_take_over"] is True]
    no = [n for n, a in found.items() if a["would_take_over"] is False]
    settled = len(active) == 1 and len(yes) == 1 and len(no) == 1
    if settled and codes(found[no[0]]) == {"not_synchronous_standby"}:
        return active[0], yes[0], no[0]
    return None


def settled_split(cluster: CliCluster, what: str) -> tuple[str, str, str]:
    split = wait_for(lambda: _sync_split(cluster), timeout=WAIT, interval=1.0, what=what)
    assert isinstance(split, tuple)
    return split


def test_explain_names_the_synchronous_standby(formed: CliCluster) -> None:
    active, sync, other = settled_split(formed, "a settled sync split")
    found = explained(formed)
    assert found[active]["state"] == "active" and found[active]["would_take_over"] is None
    assert found[sync]["reasons"] == []
    assert found[sync]["last_decision"]["reason"] == f"following {active}"
    reason = found[other]["reasons"][0]
    assert "neither a synchronous standby nor the former active" in reason["text"]
    # one node only, and the words an operator reads
    assert list(explained(formed, other)) == [other]
    text = formed.cli("cluster", "explain", other).output
    assert "would take over if the active died now: no, because" in text
    assert "[not_synchronous_standby]" in text
    formed.cli("cluster", "explain", "nosuchnode", code=2)


def test_explain_a_standby_whose_database_does_not_answer(formed: CliCluster) -> None:
    _, _, other = settled_split(formed, "a settled sync split")
    postmaster = formed.nodes[other].postmaster()
    assert postmaster is not None
    os.kill(postmaster, signal.SIGSTOP)
    try:

        def frozen() -> dict[str, Any] | None:
            answer = explained(formed, other)[other]
            found = codes(answer)
            return answer if {"database_unknown", "failing_checks"} <= found else None

        answer = wait_for(frozen, timeout=WAIT, interval=1.0, what=f"{other} explained unknown")
        assert isinstance(answer, dict)
        assert answer["would_take_over"] is False
        assert "not_synchronous_standby" in codes(answer)
        assert answer["failing_checks"], answer
        text = formed.cli("cluster", "explain", other).output
        assert "its state is unknown" in text and "failing check" in text
    finally:
        os.kill(postmaster, signal.SIGCONT)
    settled_split(formed, "the split back after SIGCONT")


def test_history_through_switchover_and_crash(formed: CliCluster) -> None:
    first, sync, _ = settled_split(formed, "a settled sync split")
    formed.cli("cluster", "switchover", "--to", sync, "--timeout", str(WAIT))
    wait_for(lambda: formed.active().name == sync, timeout=WAIT, interval=1.0, what="switched")
    # the new active must have a synchronous standby before its crash can be survived
    after = settled_split(formed, "a sync split after the switchover")
    assert after[0] == sync
    heir = after[1]
    formed.nodes[sync].crash()

    def new_active() -> bool:
        # exit status 1 while no node is active
        status = json.loads(formed.cli("cluster", "status", "--json", code=None).stdout)
        return bool(status["active"] == heir)

    wait_for(new_active, timeout=WAIT, interval=1.0, what=f"{heir} active after the crash")

    def three() -> list[dict[str, Any]] | None:
        found: list[dict[str, Any]] = formed.cli_json("cluster", "history")["history"]
        return found if len(found) >= 3 else None

    entries = wait_for(three, timeout=WAIT, interval=1.0, what="three history entries")
    assert isinstance(entries, list)
    assert [(e["previous"], e["node"], e["reason"]) for e in entries] == [
        (None, first, "first_start"),
        (first, sync, "switchover"),
        (sync, heir, "lease_expired"),
    ], entries
    tokens = [e["token"] for e in entries]
    assert tokens == sorted(tokens) and len(set(tokens)) == 3
    assert entries[1]["switchover_to"] == sync
    for entry in entries[1:]:
        assert entry["previous_position"] is not None and entry["position"] is not None
        assert entry["timeline"] > entry["previous_timeline"]
    assert entries[2]["position"] >= entries[2]["previous_position"]
    assert entries[2]["reason_text"].startswith("the old active's lease expired")
    # the table may wrap a cell over lines at the runner's width: look at its words
    words = set(formed.cli("cluster", "history").output.replace("│", " ").split())
    assert {"changes", "switchover", "expired", first, sync, heir} <= words, words
    assert {str(t) for t in tokens} <= words, words
