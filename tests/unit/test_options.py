"""``--options``: YAML files/globs/directories, JSON objects, and k1=v1;k2=v2 strings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hacore.config.options import deep_merge, parse_options
from hacore.errors import ConfigError


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- k1=v1;k2=v2 -------------------------------------------------------------------------


def test_pairs_with_dotted_keys_nest() -> None:
    assert parse_options("timing.ttl=3;consensus.backend=etcd") == {
        "timing": {"ttl": 3},
        "consensus": {"backend": "etcd"},
    }


def test_pair_values_are_yaml_scalars() -> None:
    parsed = parse_options(
        "a=3;b=2.5;c=true;d=off;e=null;f=etcd;g='007';h=[x, y];i={k: 1};j=http://h:2379/x"
    )
    assert parsed == {
        "a": 3,
        "b": 2.5,
        "c": True,
        "d": False,
        "e": None,
        "f": "etcd",
        "g": "007",
        "h": ["x", "y"],
        "i": {"k": 1},
        "j": "http://h:2379/x",
    }


def test_empty_value_is_null_so_the_option_falls_back_to_its_default() -> None:
    assert parse_options("timing.ttl=") == {"timing": {"ttl": None}}


def test_pairs_tolerate_blanks_and_empty_items() -> None:
    assert parse_options(" a.b = 1 ;; c=x ; ") == {"a": {"b": 1}, "c": "x"}


def test_quoted_or_bracketed_values_may_hold_semicolons() -> None:
    parsed = parse_options("""p='a;b';q="c;d\\";e";r=[1;2]; s=it's""")
    assert parsed["p"] == "a;b"
    assert parsed["q"] == 'c;d";e'
    assert parsed["r"] == ["1;2"]
    assert parsed["s"] == "it's"


def test_text_that_would_be_a_yaml_mapping_stays_a_string() -> None:
    assert parse_options("note=a: b;item=- x") == {"note": "a: b", "item": "- x"}


def test_sibling_dotted_keys_merge() -> None:
    assert parse_options("consensus.backend=etcd;consensus.endpoints=[a]") == {
        "consensus": {"backend": "etcd", "endpoints": ["a"]}
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("k1=;=v", '--options: cannot parse "k1=;=v" as k1=v1;k2=v2: empty key at position 4'),
        (
            "a=1;b",
            '--options: cannot parse "a=1;b" as k1=v1;k2=v2: missing "=" in "b" at position 4',
        ),
        (
            "a..b=1",
            '--options: cannot parse "a..b=1" as k1=v1;k2=v2: bad key "a..b" at position 0 '
            "(use dotted names like timing.ttl)",
        ),
        (
            "a=1;a.b=2",
            '--options: cannot parse "a=1;a.b=2" as k1=v1;k2=v2: '
            "a is given a value and sub-keys at position 4",
        ),
        (
            "a.b=2;a=1",
            '--options: cannot parse "a.b=2;a=1" as k1=v1;k2=v2: '
            "a is given a value and sub-keys at position 6",
        ),
        ("a='x;b=1", """--options: cannot parse "a='x;b=1" as k1=v1;k2=v2: unterminated ' quote"""),
    ],
)
def test_malformed_pairs_give_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_options(text)
    assert str(info.value) == message
    assert "\n" not in str(info.value)


def test_bad_bracketed_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"bad value for h: .*line 1"):
        parse_options("h=[x, y")


# -- JSON ----------------------------------------------------------------------------------


def test_json_object() -> None:
    value = {"timing": {"ttl": 8, "loop_wait": 0.5}, "checks": {"check_fail_fast": False}}
    assert parse_options(json.dumps(value)) == value


def test_yaml_flow_mapping_is_accepted_like_json() -> None:
    assert parse_options("{timing: {ttl: 8}}") == {"timing": {"ttl": 8}}


def test_invalid_json_says_where() -> None:
    with pytest.raises(ConfigError) as info:
        parse_options('{"timing": {"ttl": 8,}')
    assert str(info.value).startswith('--options: cannot parse "{"timing": {"ttl": 8,}" as JSON: ')
    assert "at position" in str(info.value)


def test_json_must_be_an_object_with_string_keys() -> None:
    with pytest.raises(ConfigError) as info:
        parse_options("[1, 2]")
    assert str(info.value) == '--options: "[1, 2]" must be a JSON object (got a list)'
    with pytest.raises(ConfigError, match="option names must be strings"):
        parse_options("{1: a}")


# -- YAML files ---------------------------------------------------------------------------


def test_yaml_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "o.yaml", "timing:\n  ttl: 9\nnode:\n  api_port: 9000\n")
    assert parse_options(str(path)) == {"timing": {"ttl": 9}, "node": {"api_port": 9000}}


def test_empty_yaml_file_overrides_nothing(tmp_path: Path) -> None:
    assert parse_options(str(_write(tmp_path / "empty.yaml", ""))) == {}


def test_several_files_merge_in_order(tmp_path: Path) -> None:
    first = _write(tmp_path / "first.yaml", "timing: {ttl: 9, loop_wait: 2}\nx: [1, 2]\n")
    second = _write(tmp_path / "second.yaml", "timing: {ttl: 7}\nx: [3]\n")
    assert parse_options([str(first), str(second)]) == {
        "timing": {"ttl": 7, "loop_wait": 2},
        "x": [3],
    }
    assert parse_options([str(second), str(first)])["timing"] == {"ttl": 9, "loop_wait": 2}


def test_glob_merges_matches_in_sorted_order(tmp_path: Path) -> None:
    _write(tmp_path / "20-b.yaml", "a: 2\nb: 2\n")
    _write(tmp_path / "10-a.yaml", "a: 1\nc: 1\n")
    _write(tmp_path / "30-c.yml", "a: 3\n")
    assert parse_options(str(tmp_path / "*.yaml")) == {"a": 2, "b": 2, "c": 1}


def test_directory_merges_its_yaml_files(tmp_path: Path) -> None:
    _write(tmp_path / "b.yml", "a: 2\n")
    _write(tmp_path / "a.yaml", "a: 1\nb: 1\n")
    _write(tmp_path / "notes.txt", "a: 99\n")
    assert parse_options(str(tmp_path)) == {"a": 2, "b": 1}


def test_glob_matching_nothing_names_the_pattern(tmp_path: Path) -> None:
    pattern = str(tmp_path / "nothing-*.yaml")
    with pytest.raises(ConfigError) as info:
        parse_options(pattern)
    assert str(info.value) == f'--options: no file matches "{pattern}"'


def test_missing_yaml_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError) as info:
        parse_options(path)
    assert str(info.value) == f'--options: no such file "{path}"'


def test_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"holds no \.yaml or \.yml file"):
        parse_options(str(tmp_path))


def test_yaml_file_must_hold_a_mapping(tmp_path: Path) -> None:
    path = _write(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError) as info:
        parse_options(str(path))
    assert str(info.value) == (
        f'--options: "{path}" must hold a mapping of option names to values (it holds a list)'
    )


def test_yaml_syntax_error_says_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.yaml", "timing:\n  ttl: 3\n   loop_wait: [\n")
    with pytest.raises(ConfigError) as info:
        parse_options(str(path))
    message = str(info.value)
    assert message.startswith(f'--options: cannot parse "{path}": ')
    assert "line 3" in message
    assert "\n" not in message


def test_unrecognisable_value() -> None:
    with pytest.raises(ConfigError) as info:
        parse_options("etcd")
    assert str(info.value) == (
        '--options: cannot parse "etcd": it is not an existing YAML file, directory or glob, '
        "a JSON object, or k1=v1;k2=v2"
    )


def test_all_three_forms_merge_in_order(tmp_path: Path) -> None:
    path = _write(tmp_path / "base.yaml", "timing: {ttl: 9, loop_wait: 2}\nnode: {api_port: 1}\n")
    parsed = parse_options([str(path), '{"timing": {"ttl": 8}}', "timing.loop_wait=0.5"])
    assert parsed == {"timing": {"ttl": 8, "loop_wait": 0.5}, "node": {"api_port": 1}}


def test_blank_value_overrides_nothing() -> None:
    assert parse_options("  ") == {}
    assert parse_options([]) == {}


# -- deep_merge ---------------------------------------------------------------------------


def test_deep_merge_merges_mappings_replaces_the_rest_and_copies() -> None:
    base = {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    override = {"a": {"c": [3], "e": {"f": 1}}, "d": {"x": 1}}
    merged = deep_merge(base, override)
    assert merged == {"a": {"b": 1, "c": [3], "e": {"f": 1}}, "d": {"x": 1}}
    merged["a"]["e"]["f"] = 2
    merged["a"]["b"] = 9
    assert base == {"a": {"b": 1, "c": [1, 2]}, "d": 1}
    assert override == {"a": {"c": [3], "e": {"f": 1}}, "d": {"x": 1}}
