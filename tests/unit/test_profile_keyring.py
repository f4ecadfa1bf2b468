"""The CLI profile's password in a keyring (issue 10, point 5): a real keyring backend that
works headless (``keyrings.alt``'s file backend, chosen with ``PYTHON_KEYRING_BACKEND`` as an
operator would, its file under a temporary ``XDG_DATA_HOME``), the fallback to the 0600 file,
and profiles written before the keyring."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from hacore.cli import cli
from hacore.client.profile import (
    Profile,
    load_profile,
    password_location,
    remove_profile,
    save_profile,
)
from hacore.errors import ConfigError

pytest.importorskip("keyrings.alt")

FILE_BACKEND = "keyrings.alt.file.PlaintextKeyring"
NULL_BACKEND = "keyring.backends.null.Keyring"
SECRET = "the-admin-password-" + "9c" * 8
PROFILE = Profile("c1", "admin", SECRET, (("n1", "https://127.0.0.1:8008"),))


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keyring data and configuration under ``tmp_path``; no backend named yet."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("PYTHON_KEYRING_BACKEND", raising=False)
    return tmp_path


def _keyring_file(home: Path) -> Path:
    return home / "data" / "python_keyring" / "keyring_pass.cfg"


def _in_keyring(path: Path) -> str | None:
    """What the file backend holds for the profile at ``path`` (it stores base64 under
    escaped names, so the file's text says nothing)."""
    import keyring.core

    backend = keyring.core.load_keyring(FILE_BACKEND)
    found = backend.get_password("hacore-cli-profile", str(path.resolve()))
    return None if found is None else str(found)


def _read_elsewhere(path: Path) -> str:
    """The password as another process reads the profile (nothing cached in this one)."""
    code = (
        "import sys; from pathlib import Path; from hacore.client.profile import load_profile; "
        "print(load_profile(Path(sys.argv[1])).password)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
        check=True,
    )
    return out.stdout.strip()


def test_a_usable_keyring_gets_the_password_and_the_file_a_reference(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", FILE_BACKEND)
    path = home / "p" / "profile.json"
    where = save_profile(path, PROFILE)
    assert where == f"the keyring ({FILE_BACKEND})"
    text = path.read_text()
    assert SECRET not in text
    data = json.loads(text)
    assert "password" not in data
    assert data["password_keyring"] == {
        "backend": FILE_BACKEND,
        "service": "hacore-cli-profile",
        "name": str(path.resolve()),
    }
    assert path.stat().st_mode & 0o777 == 0o600
    assert _in_keyring(path) == SECRET
    loaded = load_profile(path)
    assert loaded == PROFILE and loaded is not None and loaded.password == SECRET
    assert _read_elsewhere(path) == SECRET
    assert password_location(path) == where
    shown = CliRunner().invoke(cli, ["cluster", "--profile", str(path), "profile", "show"])
    assert shown.exit_code == 0, shown.output
    assert f"password in the keyring ({FILE_BACKEND})" in shown.output
    assert SECRET not in shown.output
    # removing the profile removes its keyring entry
    remove_profile(path)
    assert not path.exists()
    assert _in_keyring(path) is None


def test_without_a_usable_keyring_the_0600_file_keeps_it(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = home / "profile.json"
    # the null backend turns the keyring off
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", NULL_BACKEND)
    assert save_profile(path, PROFILE) == "the profile file (mode 0600)"
    assert json.loads(path.read_text())["password"] == SECRET
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_profile(path) == PROFILE
    shown = CliRunner().invoke(cli, ["cluster", "--profile", str(path), "profile", "show"])
    assert "password in the profile file (mode 0600)" in shown.output
    # the keyring package missing altogether
    monkeypatch.delenv("PYTHON_KEYRING_BACKEND")
    monkeypatch.setitem(sys.modules, "keyring", None)
    assert save_profile(path, PROFILE) == "the profile file (mode 0600)"
    assert load_profile(path) == PROFILE


def test_keyrings_alts_plain_file_is_not_picked_unless_named(home: Path) -> None:
    import keyring.backend
    import keyring.core

    if any(keyring.core.recommended(b) for b in keyring.backend.get_all_keyring()):
        pytest.skip("this machine has a real keyring: it would be used, rightly")
    path = home / "profile.json"
    assert save_profile(path, PROFILE) == "the profile file (mode 0600)"
    assert not _keyring_file(home).exists()


def test_an_old_profile_with_the_password_inline_reads_and_moves(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = home / "profile.json"
    old = {
        "cluster": "c1",
        "username": "admin",
        "password": SECRET,
        "nodes": [{"name": "n1", "api_url": "https://127.0.0.1:8008"}],
        "ca_certificate": None,
    }
    path.write_text(json.dumps(old))
    path.chmod(0o600)
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", FILE_BACKEND)
    loaded = load_profile(path)
    assert loaded == PROFILE
    # the next save (any command that refreshes the node list) moves it to the keyring
    save_profile(path, PROFILE)
    assert SECRET not in path.read_text()
    assert _in_keyring(path) == SECRET
    assert load_profile(path) == PROFILE
    # and a save without a keyring moves it back, and forgets the keyring's copy
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", NULL_BACKEND)
    save_profile(path, PROFILE)
    assert json.loads(path.read_text())["password"] == SECRET
    assert _in_keyring(path) is None


def test_a_keyring_entry_that_is_gone_says_so(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", FILE_BACKEND)
    path = home / "profile.json"
    save_profile(path, PROFILE)
    _keyring_file(home).unlink()
    with pytest.raises(ConfigError, match="run hacore cluster profile create again"):
        load_profile(path)
