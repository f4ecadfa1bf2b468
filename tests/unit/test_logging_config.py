"""The ``logging`` section of node.yaml: validation, the handler it installs, SIGHUP reload,
and the systemd unit text."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from hacore.agent.reload import Reloader, changed_keys
from hacore.backends.log_files import LogTrimmer, trim_log
from hacore.cli import cli
from hacore.cli.agent_unit import agent_unit
from hacore.config.logging_setup import LoggingSettings, LogSetup, effective_level
from hacore.config.node import load_config
from hacore.config.write_back import to_mapping
from hacore.errors import ConfigError
from hacore.testing.procs import wait_for
from hacore_plugins.zookeeper.server import ServerLimits, write_static_config

BASE: dict[str, Any] = {
    "node": {"name": "n1", "host": "127.0.0.1"},
    "consensus": {"backend": "etcd"},
}


def config_with(logging_section: Any) -> dict[str, Any]:
    return {**BASE, "logging": logging_section}


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, its handlers and level put back after the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


def test_defaults_are_stderr_info_text() -> None:
    settings = load_config(BASE).logging
    assert settings == LoggingSettings()
    assert (settings.level, settings.format, settings.file) == ("INFO", "text", None)


def test_a_full_section_is_read_and_round_trips() -> None:
    config = load_config(
        config_with(
            {
                "level": "debug",
                "format": "json",
                "file": "/var/log/hacore/agent.log",
                "max_bytes": 1048576,
                "backups": 3,
            }
        )
    )
    assert config.logging == LoggingSettings(
        level="DEBUG",
        format="json",
        file=Path("/var/log/hacore/agent.log"),
        max_bytes=1048576,
        backups=3,
    )
    assert load_config(to_mapping(config)) == config


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"level": "loud"},
            'logging.level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL (got "loud")',
        ),
        ({"format": "xml"}, 'logging.format must be one of text, json (got "xml")'),
        ({"file": "agent.log"}, 'logging.file must be an absolute path (got "agent.log")'),
        ({"max_bytes": 10}, "logging.max_bytes must be a size in bytes >= 65536 (got 10)"),
        ({"backups": -1}, "logging.backups must be a file count 0-1000 (got -1)"),
        ({"levle": "INFO"}, 'unknown key "levle" in logging; did you mean "level"?'),
        ("INFO", 'logging must be a mapping of keys to values (got "INFO")'),
    ],
)
def test_each_bad_value_is_one_line_naming_the_key(section: Any, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(config_with(section))
    assert str(caught.value) == f"config error: {message}"


def test_every_problem_of_the_section_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(config_with({"level": 3, "format": "yaml", "backups": "five"}))
    lines = str(caught.value).splitlines()
    assert len(lines) == 3
    assert all(line.startswith("config error: logging.") for line in lines)


def test_a_logging_key_at_top_level_points_to_the_section() -> None:
    with pytest.raises(ConfigError, match='"max_bytes" belongs in the logging section'):
        load_config({**BASE, "max_bytes": 1})


def test_config_check_reports_logging_problems(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(config_with({"level": "chatty"})))
    result = CliRunner().invoke(cli, ["config", "check", "-c", str(path), "--no-connect"])
    assert result.exit_code == 2
    assert f"error: config error in {path}: logging.level must be one of" in result.output


def test_verbose_flags_override_the_level() -> None:
    quiet = LoggingSettings(level="ERROR")
    assert effective_level(quiet, 0) == logging.ERROR
    assert effective_level(quiet, 1) == logging.INFO
    assert effective_level(quiet, 2) == logging.DEBUG
    assert effective_level(quiet, 5) == logging.DEBUG


def test_text_lines_carry_the_level_name(tmp_path: Path, root_logger: logging.Logger) -> None:
    path = tmp_path / "agent.log"
    LogSetup().apply(LoggingSettings(file=path))
    logging.getLogger("hacore.test").warning("disk %s", "full")
    logging.getLogger("hacore.test").debug("not shown at INFO")
    text = path.read_text()
    assert " WARNING hacore.test disk full" in text
    assert "not shown" not in text


def test_json_lines_for_log_shippers(tmp_path: Path, root_logger: logging.Logger) -> None:
    path = tmp_path / "agent.log"
    LogSetup().apply(LoggingSettings(file=path, format="json", level="DEBUG"))
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("hacore.test").exception("it failed")
    entry = json.loads(path.read_text().splitlines()[-1])
    assert entry["level"] == "ERROR"
    assert entry["logger"] == "hacore.test"
    assert entry["message"] == "it failed"
    assert "ValueError: boom" in entry["exception"]
    assert entry["time"].endswith("Z")


def test_the_file_rotates_by_size(tmp_path: Path, root_logger: logging.Logger) -> None:
    path = tmp_path / "agent.log"
    LogSetup().apply(LoggingSettings(file=path, max_bytes=65536, backups=2))
    line = "x" * 1000
    for _ in range(300):
        logging.getLogger("hacore.test").info("%s", line)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["agent.log", "agent.log.1", "agent.log.2"]
    assert all((tmp_path / name).stat().st_size <= 65536 + 1100 for name in files)


def test_apply_again_swaps_only_its_own_handler(
    tmp_path: Path, root_logger: logging.Logger
) -> None:
    foreign = logging.NullHandler()
    setup = LogSetup()
    setup.apply(LoggingSettings(file=tmp_path / "a.log"))
    root_logger.addHandler(foreign)
    changes = setup.apply(LoggingSettings(file=tmp_path / "b.log", level="DEBUG"))
    assert foreign in root_logger.handlers
    assert sum(isinstance(h, logging.FileHandler) for h in root_logger.handlers) == 1
    assert changes == [
        "logging.level: INFO -> DEBUG",
        f"logging.file: {tmp_path / 'a.log'} -> {tmp_path / 'b.log'}",
    ]
    assert root_logger.level == logging.DEBUG


def test_sighup_reload_applies_logging_and_reports_the_rest(
    tmp_path: Path, root_logger: logging.Logger
) -> None:
    path = tmp_path / "node.yaml"
    log_file = tmp_path / "agent.log"
    raw = {
        **config_with({"file": str(log_file)}),
        "api": {"auth": {"username": "admin", "password_hash": "$pbkdf2$secret-hash"}},
    }
    path.write_text(yaml.safe_dump(raw))
    setup = LogSetup()
    started = load_config(path)
    setup.apply(started.logging)
    reloader = Reloader(path, started, setup)

    raw["logging"] = {"file": str(log_file), "level": "DEBUG"}
    raw["timing"] = {"loop_wait": 0.5}
    raw["api"]["auth"]["password_hash"] = "$pbkdf2$another-secret-hash"
    path.write_text(yaml.safe_dump(raw))
    assert reloader.reload() == ["api.auth.password_hash", "timing.loop_wait"]
    assert root_logger.level == logging.DEBUG
    text = log_file.read_text()
    assert "reload applied logging.level: INFO -> DEBUG" in text
    assert "timing.loop_wait changed; restart the agent to apply it" in text
    assert "secret-hash" not in text, "values are never logged, only keys"

    path.write_text(yaml.safe_dump({**raw, "logging": {"level": "nope"}}))
    assert reloader.reload() == []
    assert root_logger.level == logging.DEBUG, "an invalid file changes nothing"
    assert "reload refused, nothing changed: config error in" in log_file.read_text()


def test_changed_keys_names_nested_keys_only() -> None:
    old = {"a": {"b": 1, "c": [1]}, "d": "x"}
    new = {"a": {"b": 2, "c": [1]}, "e": "y"}
    assert changed_keys(old, new) == ["a.b", "d", "e"]


def test_the_unit_signals_the_agent_alone() -> None:
    text = agent_unit("/etc/hacore/node.yaml", user="hacore", command=["/usr/bin/hacore"])
    lines = text.splitlines()
    assert "ExecStart=/usr/bin/hacore agent run -c /etc/hacore/node.yaml" in lines
    for line in (
        "User=hacore",
        "KillMode=process",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "TimeoutStopSec=180",
        "LimitNOFILE=65536",
    ):
        assert line in lines
    assert "User=" not in agent_unit("/etc/hacore/node.yaml")


def test_agent_unit_command_prints_the_unit(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    result = CliRunner().invoke(cli, ["agent", "unit", "-c", str(path)])
    assert result.exit_code == 0, result.output
    assert f"agent run -c {path}" in result.output
    assert "KillMode=process" in result.output


def test_a_server_log_is_bounded_by_copy_and_truncate(tmp_path: Path) -> None:
    """The writer appends (O_APPEND, as the servers hacore starts do): after the truncation
    its next line lands at the start of the small file, not at its old offset."""
    path = tmp_path / "etcd.log"
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdin=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdin is not None

        def write(count: int) -> None:
            assert writer.stdin is not None
            before = path.stat().st_size if path.exists() else 0
            writer.stdin.write(f"{count}\n")
            writer.stdin.flush()
            wait_for(lambda: path.exists() and path.stat().st_size >= before + count * 100, 10.0)

        def sizes() -> list[int]:
            return [(tmp_path / f"etcd.log{n}").stat().st_size for n in ("", ".1", ".2")]

        write(30)
        assert not trim_log(path, max_bytes=4000, keep=2)
        write(60)
        assert trim_log(path, max_bytes=4000, keep=2)
        assert path.stat().st_size == 0
        assert (tmp_path / "etcd.log.1").stat().st_size == 9000
        write(10)
        assert path.stat().st_size == 1000, "the writer kept its old offset: a sparse file"
        write(50)
        assert trim_log(path, max_bytes=4000, keep=2)
        assert sizes() == [0, 6000, 9000]
        write(50)
        assert trim_log(path, max_bytes=4000, keep=2)
        assert sizes() == [0, 5000, 6000], "the oldest copy is dropped"
        assert len(list(tmp_path.iterdir())) == 3
    finally:
        writer.kill()
        writer.wait()


WRITER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
for line in sys.stdin:
    for _ in range(int(line)):
        os.write(fd, b"x" * 99 + b"\\n")
"""


def test_a_trimmer_looks_at_most_once_per_interval(tmp_path: Path) -> None:
    path = tmp_path / "zookeeper.log"
    path.write_bytes(b"x" * 5000)
    trimmer = LogTrimmer(path, max_bytes=4000, keep=1, interval=3600)
    assert trimmer.tick()
    path.write_bytes(b"x" * 5000)
    assert not trimmer.tick(), "checked again before the interval"
    assert trimmer.now()


def test_managed_zookeeper_purges_old_snapshots(tmp_path: Path) -> None:
    dynamic = tmp_path / "zoo.cfg.dynamic"
    dynamic.write_text("server.1=127.0.0.1:2888:3888:participant;127.0.0.1:2181\n")
    static = write_static_config(
        tmp_path, data_dir=tmp_path / "data", dynamic_file=dynamic, limits=ServerLimits()
    )
    lines = static.read_text().splitlines()
    assert "autopurge.snapRetainCount=3" in lines
    assert "autopurge.purgeInterval=1" in lines
