"""Where the CLI profile keeps the API password: the user's keyring when there is a real one,
else the profile file itself (0600).

The profile file is a copy of the admin password on disk, readable by whoever gets the file
(a backup, a copied home directory). A system keyring (Secret Service, macOS Keychain,
Windows Credential Locker, KWallet) keeps it encrypted and unlocked by the user's session, so
the file then holds only a reference (issue 10, point 5).

The ``keyring`` package is optional (the ``keyring`` extra). Which backend counts as usable:

- one named by ``PYTHON_KEYRING_BACKEND`` or keyring's ``keyringrc.cfg``, unless it is
  ``keyring.backends.fail`` or ``keyring.backends.null`` (which is how to turn this off);
- else the best backend keyring finds, only if keyring recommends it (priority 1 or more). On
  a headless machine with ``keyrings.alt`` installed keyring would pick its plain-text file
  (priority 0.5), which is no safer than the profile file; it is used only when named.

A keyring that fails to store leaves the password in the file: the command that saves the
profile must not fail for it. A keyring that fails to give a stored password back is an error
that says so, as the profile cannot be used without it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import attrs

from hacore.errors import ConfigError

log = logging.getLogger(__name__)

#: the keyring's "service" every profile's entry is filed under
SERVICE = "hacore-cli-profile"
#: what a profile says when its password is in the file
IN_FILE = "the profile file (mode 0600)"


@attrs.frozen
class KeyringEntry:
    """The reference a profile file keeps instead of the password."""

    #: the backend's class, ``module.Class``: the entry is read back from the same one
    backend: str
    service: str
    name: str

    def to_json(self) -> dict[str, str]:
        return {"backend": self.backend, "service": self.service, "name": self.name}

    @classmethod
    def from_json(cls, data: Any) -> KeyringEntry:
        if not isinstance(data, dict):
            raise ConfigError("the profile's password_keyring must be an object")
        try:
            return cls(str(data["backend"]), str(data["service"]), str(data["name"]))
        except KeyError as err:
            raise ConfigError(f"the profile's password_keyring lacks {err}") from None

    def describe(self) -> str:
        return f"the keyring ({self.backend})"


def _class_name(backend: object) -> str:
    kind = type(backend)
    return f"{kind.__module__}.{kind.__qualname__}"


def usable_backend() -> tuple[Any | None, str]:
    """The keyring backend to store the password in, or None and why not."""
    try:
        import keyring.backend
        import keyring.core
        from keyring.backends import fail, null
    except ImportError:
        return None, "the keyring package is not installed"
    try:
        chosen = keyring.core.load_env() or keyring.core.load_config()
    except Exception as err:  # a backend named but not importable or not viable here
        return None, f"the configured keyring backend cannot be loaded ({err})"
    if chosen is None:
        found = [b for b in keyring.backend.get_all_keyring() if keyring.core.recommended(b)]
        if not found:
            return None, "no recommended keyring backend is available"
        chosen = max(found, key=lambda b: b.priority)
    if isinstance(chosen, fail.Keyring | null.Keyring):
        return None, f"the keyring backend is {_class_name(chosen)}"
    return chosen, _class_name(chosen)


def store(path: Path, password: str) -> KeyringEntry | None:
    """Put ``password`` in the keyring under the profile's absolute path; None (logged) when
    no keyring is usable or it refused."""
    backend, why = usable_backend()
    if backend is None:
        log.debug("the CLI profile keeps its password in the file: %s", why)
        return None
    entry = KeyringEntry(why, SERVICE, str(path.resolve()))
    try:
        backend.set_password(entry.service, entry.name, password)
    except Exception as err:
        log.warning(
            "the keyring (%s) did not take the CLI profile's password, which stays in the "
            "0600 profile file: %s",
            entry.backend,
            err,
        )
        return None
    return entry


def _backend_for(entry: KeyringEntry) -> Any:
    import keyring.core

    return keyring.core.load_keyring(entry.backend)


def fetch(entry: KeyringEntry, path: Path) -> str:
    """The password the profile at ``path`` keeps in the keyring."""
    try:
        password = _backend_for(entry).get_password(entry.service, entry.name)
    except ImportError:
        raise ConfigError(
            f"the CLI profile {path} keeps its password in {entry.describe()}, but the keyring "
            "package is not installed here (pip install 'hacore[keyring]'), or run hacore "
            "cluster profile create again"
        ) from None
    except Exception as err:
        raise ConfigError(
            f"the CLI profile {path} keeps its password in {entry.describe()}, which cannot "
            f"be read: {err}"
        ) from None
    if password is None:
        raise ConfigError(
            f"the CLI profile {path} keeps its password in {entry.describe()}, which has no "
            f'entry "{entry.name}" for {entry.service}: run hacore cluster profile create again'
        )
    return str(password)


def forget(entry: KeyringEntry) -> None:
    """Delete the entry (a profile removed, or its password moved back to the file)."""
    try:
        _backend_for(entry).delete_password(entry.service, entry.name)
    except Exception as err:
        log.debug("keyring entry %s not deleted: %s", entry.name, err)
