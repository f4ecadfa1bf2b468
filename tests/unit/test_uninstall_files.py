"""What ``node uninstall`` deletes: hacore's own entries only, never through a link, never a
parent, and the data directory itself only when the agent service created it; which unit
files are this node's; the teardown order (dead standbys, live ones, the active)."""

from __future__ import annotations

from pathlib import Path

import attrs

from hacore.agent.snapshot import NodeSnapshot, member_json
from hacore.agent.vocabulary import NodeState
from hacore.api.metrics import SnapshotCollector, render
from hacore.backends.records import Member, NodeRole
from hacore.cli.agent_unit import agent_unit
from hacore.cluster.teardown import lease_token_in, order_steps
from hacore.cluster.uninstall import (
    CREATED_MARKER,
    agent_units,
    mark_created,
    remove_own_files,
)


def _fill(data_dir: Path) -> None:
    for name in ("replication/pgdata", "store/data", "filesync/syncthing", "pki/node"):
        (data_dir / name).mkdir(parents=True)
        (data_dir / name / "file").write_text("x")
    for name in ("cluster.json", "bootstrap.token", "keeper.pid", ".cluster.json.abc.tmp"):
        (data_dir / name).write_text("x")


def test_a_directory_the_service_created_goes_entirely(tmp_path: Path) -> None:
    data_dir = tmp_path / "parent" / "node"
    mark_created(data_dir)
    _fill(data_dir)
    (tmp_path / "parent" / "sibling").write_text("the operator's")
    removed, left = remove_own_files(data_dir, lambda _: None)
    assert not data_dir.exists()
    assert left == []
    assert str(data_dir) in removed
    assert (tmp_path / "parent" / "sibling").read_text() == "the operator's"


def test_foreign_entries_stay_and_so_does_their_directory(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    mark_created(data_dir)
    _fill(data_dir)
    (data_dir / "notes.txt").write_text("mine")
    (data_dir / ".bashrc.tmp").write_text("mine too")
    _, left = remove_own_files(data_dir, lambda _: None)
    assert sorted(p.name for p in data_dir.iterdir()) == sorted(
        [CREATED_MARKER, ".bashrc.tmp", "notes.txt"]
    )
    assert sorted(Path(p).name for p in left) == [".bashrc.tmp", "notes.txt"]


def test_a_directory_the_operator_made_is_emptied_not_removed(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    data_dir.mkdir()
    mark_created(data_dir)  # it existed: no marker
    assert not (data_dir / CREATED_MARKER).exists()
    _fill(data_dir)
    remove_own_files(data_dir, lambda _: None)
    assert data_dir.is_dir() and not any(data_dir.iterdir())


def test_links_are_removed_never_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("keep")
    data_dir = tmp_path / "node"
    mark_created(data_dir)
    (data_dir / "store").symlink_to(elsewhere)
    (data_dir / "replication").mkdir()
    (data_dir / "replication" / "link").symlink_to(elsewhere)
    remove_own_files(data_dir, lambda _: None)
    assert not data_dir.exists()
    assert (elsewhere / "precious").read_text() == "keep"


def test_only_the_units_running_this_configuration(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    other = tmp_path / "other.yaml"
    units = tmp_path / "units"
    units.mkdir()
    (units / "mine.service").write_text(agent_unit(config))
    (units / "theirs.service").write_text(agent_unit(other))
    (units / "unrelated.service").write_text("[Service]\nExecStart=/bin/sleep 1\n")
    assert agent_units(units, config) == [units / "mine.service"]
    assert agent_units(tmp_path / "absent", config) == []


def test_teardown_order_dead_first_then_live_then_the_active() -> None:
    steps = order_steps(
        "n1", "https://a", {"n3": "https://c", "n2": "https://b", "n4": None}, {"n3": True}
    )
    assert [(s.name, s.kind) for s in steps] == [
        ("n2", "down"),
        ("n4", "down"),
        ("n3", "standby"),
        ("n1", "active"),
    ]


def test_teardown_reads_the_fencing_token_from_the_node_view() -> None:
    snap = NodeSnapshot("a", "0", NodeState.ACTIVE, lease_token=41)
    me = Member("a", host="127.0.0.1", role=NodeRole.ACTIVE, healthy=True)
    assert lease_token_in(member_json(me, attrs.evolve(snap, members=(me,)))) == 41
    assert lease_token_in({"name": "a"}) is None
    # /metrics no longer carries it (issue 10, point 1)
    assert "hacore_lease_token" not in render(SnapshotCollector(lambda: snap)).decode()
