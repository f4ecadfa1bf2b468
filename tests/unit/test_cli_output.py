"""Output formats, exit statuses and password sources of the CLI, where no cluster is needed.

The commands run through click's runner (in this process) against what needs no cluster:
``plugins list``, a CLI profile whose only node listens nowhere, a missing profile. The
formed-cluster side (``nodes list -o tsv``, ``cluster profile create``) is in
tests/integration/test_cluster_cli.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from hacore.agent.errors import StateConflictError
from hacore.api.errors import (
    ApiUnreachableError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    UnavailableError,
)
from hacore.cli import cli
from hacore.cli.exit_codes import UsageProblem, exit_code_for
from hacore.cli.output import Output, render, tsv_rows
from hacore.client.profile import Profile, save_profile
from hacore.errors import ConfigError, HacoreError, StoreUnavailableError
from hacore.testing.procs import free_port


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def nowhere(tmp_path: Path) -> dict[str, str]:
    """A profile whose only node is a port nothing listens on."""
    path = tmp_path / "profile.json"
    url = f"http://127.0.0.1:{free_port()}"
    save_profile(path, Profile("c1", "admin", "secret", nodes=(("n1", url),)))
    return {"HACORE_PROFILE": str(path), "HACORE_PASSWORD": "", "HACORE_PASSWORD_FILE": ""}


# ---- formats -------------------------------------------------------------------------------


def test_every_format_carries_the_same_value() -> None:
    code, out, _ = run("plugins", "list", "--json")
    assert code == 0
    data = json.loads(out)
    assert "etcd" in data["backends"]["consensus"]
    code, same, _ = run("plugins", "list", "-o", "json")
    assert code == 0 and json.loads(same) == data
    code, out, _ = run("plugins", "list", "--output", "yaml")
    assert code == 0 and yaml.safe_load(out) == data
    code, out, _ = run("plugins", "list", "-o", "tsv")
    assert code == 0
    fields = dict(line.split("\t") for line in out.splitlines())
    assert json.loads(fields["backends.consensus"]) == data["backends"]["consensus"]
    assert fields["plugins"] == json.dumps(data["plugins"], separators=(",", ":"))
    code, out, _ = run("plugins", "list", "-o", "table")
    assert code == 0 and "hacore backends" in out
    assert not out.lstrip().startswith("{")


def test_json_and_another_format_is_a_usage_error() -> None:
    code, out, err = run("plugins", "list", "--json", "-o", "yaml")
    assert code == 2
    assert "--json and -o yaml contradict each other" in err
    assert out == ""
    code, _, err = run("plugins", "list", "-o", "xml")
    assert code == 2 and "'xml' is not one of" in err


def test_tsv_of_records_has_a_header_and_one_line_per_record() -> None:
    data = {
        "cluster": "c1",
        "nodes": [
            {"name": "n1", "state": "active", "lag": None, "checks": {"db": True}},
            {"name": "n2", "state": "standby", "lag": 12, "note": "a\tb\nc\\d"},
        ],
    }
    rows = tsv_rows(data, "nodes")
    assert rows[0] == ["name", "state", "lag", "checks", "note"]
    assert rows[1] == ["n1", "active", "", '{"db":true}', ""]
    assert rows[2] == ["n2", "standby", "12", "", "a\\tb\\nc\\\\d"]
    text = render(Output.TSV, data, "nodes")
    assert len(text.splitlines()) == 3
    assert all(line.count("\t") == 4 for line in text.splitlines())
    assert tsv_rows({"nodes": []}, "nodes") == []


def test_tsv_never_guesses_the_list_of_a_command_that_names_none() -> None:
    """The shape of a command's TSV does not depend on what the cluster holds."""
    data = {"active": "n1", "nodes": [{"name": "n1"}]}
    assert tsv_rows(data) == [["active", "n1"], ["nodes", '[{"name":"n1"}]']]


def test_tsv_of_one_record_is_one_line_per_field() -> None:
    assert tsv_rows({"b": {"y": False, "x": 1}, "a": [1, 2], "c": {}}) == [
        ["a", "[1,2]"],
        ["b.x", "1"],
        ["b.y", "false"],
        ["c", "{}"],
    ]


def test_table_is_false_and_script_formats_are_true() -> None:
    """Commands keep progress lines out of a script's output with ``if not as_json``."""
    assert not Output.TABLE
    assert all(Output(name) for name in ("json", "yaml", "tsv"))


# ---- exit statuses -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (HacoreError("a step failed"), 1),
        (ConfigError("bad node.yaml"), 2),
        (UsageProblem("no --yes"), 2),
        (BadRequestError("bad field"), 2),
        (ApiUnreachableError("connection refused"), 3),
        (UnavailableError("no active"), 3),
        (StoreUnavailableError("etcd down"), 3),
        (ConflictError("is the active"), 4),
        (NotFoundError("no node"), 4),
        (AuthenticationError("wrong password"), 4),
        (ForbiddenError("read-only"), 4),
        (StateConflictError("paused"), 4),
    ],
)
def test_each_kind_of_error_has_its_status(error: HacoreError, code: int) -> None:
    assert exit_code_for(error) == code


def test_an_unreachable_cluster_exits_3_with_one_line(nowhere: dict[str, str]) -> None:
    code, out, err = run("cluster", "nodes", "list", "-o", "tsv", env=nowhere)
    assert code == 3, err
    assert out == ""
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_a_missing_profile_is_a_configuration_error(tmp_path: Path) -> None:
    code, _, err = run("cluster", "status", env={"HACORE_PROFILE": str(tmp_path / "none.json")})
    assert code == 2
    assert "no CLI profile at" in err and "hacore cluster profile create" in err


def test_a_usage_error_is_2_like_clicks_own() -> None:
    code, _, err = run("cluster", "nodes", "list", "--no-such-option")
    assert code == 2 and "No such option" in err


# ---- passwords -----------------------------------------------------------------------------


def test_password_twice_is_refused_before_anything_runs(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("S3cret\n")
    code, _, err = run(
        "cluster", "start", "-c", str(tmp_path / "node.yaml"), "--password-file", str(secret),
        env={"HACORE_PASSWORD": "other", "HACORE_PROFILE": str(tmp_path / "p.json")},
    )  # fmt: skip
    assert code == 2
    assert "the password is given twice" in err
    assert "S3cret" not in err


def test_an_empty_password_file_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("\n")
    code, _, err = run(
        "cluster", "join", "127.0.0.1:1", "-c", str(tmp_path / "node.yaml"),
        "--node-name", "n9", "--username", "admin", "--password-file", str(secret),
        env={"HACORE_PASSWORD": "", "HACORE_PROFILE": str(tmp_path / "p.json")},
    )  # fmt: skip
    assert code == 2
    assert f"the password file {secret} is empty" in err


# ---- profile create ------------------------------------------------------------------------


def test_profile_create_needs_the_ca(tmp_path: Path) -> None:
    env = {"HACORE_PROFILE": str(tmp_path / "p.json")}
    code, _, err = run("cluster", "profile", "create", "127.0.0.1:1", env=env)
    assert code == 2 and "--ca-fingerprint FP or --ca-file" in err
    assert not (tmp_path / "p.json").exists()


def test_profile_create_has_no_password_option(tmp_path: Path) -> None:
    code, _, err = run(
        "cluster", "profile", "create", "127.0.0.1:1", "--ca-fingerprint", "AA", "--password",
        "S3cret",
    )  # fmt: skip
    assert code == 2 and "No such option '--password'" in err


def test_profile_create_of_an_address_nothing_answers_at_exits_3(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    code, _, err = run(
        "cluster", "profile", "create", f"127.0.0.1:{free_port()}", "--ca-fingerprint", "AA",
        env={"HACORE_PROFILE": str(path), "HACORE_PASSWORD": "S3cret"},
    )  # fmt: skip
    assert code == 3, err
    assert "cannot reach the hacore agent" in err
    assert not path.exists()
