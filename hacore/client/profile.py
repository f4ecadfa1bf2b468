"""The CLI profile: which nodes make up the cluster, and the API credentials (0600).

``cluster start`` and ``cluster join`` write it; every other command reads it to find the
active node by itself (it tries each known node, skipping standbys and unreachable ones), so
commands keep working after a failover. Each command that reaches the cluster refreshes the
node list from the active's view. The file is ``$HACORE_PROFILE``, else
``~/.hacore/profile.json``. It also keeps the cluster CA's certificate, so the CLI verifies
every node (whichever is active) without any per-node certificate.

The password itself goes to the user's keyring when one is usable, and the file then keeps
only a reference (:mod:`hacore.client.profile_keyring`); else it stays in the file, which is
0600 either way. A profile written before that, with the password in the file, still reads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from hacore import pki
from hacore.api.client import ApiClient, Verify, find_active
from hacore.atomic_files import read_private, write_private
from hacore.client import profile_keyring
from hacore.client.profile_keyring import KeyringEntry
from hacore.errors import ConfigError, HacoreError

PROFILE_ENV = "HACORE_PROFILE"
#: seconds each node gets to answer ``/status`` while the active is looked for
PROBE_TIMEOUT = 5.0


def profile_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    if explicit:
        return Path(explicit)
    env = os.environ.get(PROFILE_ENV)
    if env:
        return Path(env)
    return Path.home() / ".hacore" / "profile.json"


@attrs.frozen
class Profile:
    cluster: str
    username: str
    password: str = attrs.field(repr=False)
    #: node name -> API URL; the last known active first
    nodes: tuple[tuple[str, str], ...] = ()
    #: the cluster CA's certificate (PEM): HTTPS URLs are verified against it alone
    ca_certificate: str | None = None

    @property
    def auth(self) -> tuple[str, str]:
        return (self.username, self.password)

    def verify(self) -> Verify:
        """How clients check the nodes: the cluster CA with hostname checks; without one (a
        profile written before TLS, or a cluster without it) the system's trust store."""
        if self.ca_certificate is None:
            return True
        cert = pki.pem.parse_certificate(
            self.ca_certificate.encode("ascii", errors="replace"), "the CLI profile's CA"
        )
        return pki.ssl_client_context(cert)

    def client(self, url: str, timeout: float) -> ApiClient:
        return ApiClient(url, self.auth, timeout=timeout, verify=self.verify())

    def urls(self) -> list[str]:
        return list(dict.fromkeys(url for _, url in self.nodes))

    def with_nodes(self, nodes: Iterable[tuple[str, str]], active: str | None = None) -> Profile:
        """The node list replaced by ``nodes``, ``active`` first."""
        listed = dict(nodes)
        order = sorted(listed, key=lambda name: (name != active, name))
        return attrs.evolve(self, nodes=tuple((name, listed[name]) for name in order))

    def to_json(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "username": self.username,
            "password": self.password,
            "nodes": [{"name": n, "api_url": u} for n, u in self.nodes],
            "ca_certificate": self.ca_certificate,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], password: str | None = None) -> Profile:
        """``password`` when the file keeps a keyring reference instead of it."""
        return cls(
            cluster=str(data["cluster"]),
            username=str(data["username"]),
            password=str(data["password"]) if password is None else password,
            nodes=tuple((str(n["name"]), str(n["api_url"])) for n in data.get("nodes", [])),
            ca_certificate=_optional_text(data.get("ca_certificate")),
        )


def _optional_text(value: object) -> str | None:
    return str(value) if value else None


#: the key a profile file keeps the keyring reference under, instead of ``password``
KEYRING_KEY = "password_keyring"


def load_profile(path: Path) -> Profile | None:
    text = read_private(path)
    if text is None:
        return None
    _close_to_others(path)
    try:
        data = json.loads(text)
        entry = _keyring_entry(data)
    except (ValueError, KeyError, TypeError, ConfigError) as err:
        raise ConfigError(f"the CLI profile {path} is damaged ({err}); fix or remove it") from None
    password = profile_keyring.fetch(entry, path) if entry is not None else None
    try:
        return Profile.from_json(data, password)
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"the CLI profile {path} is damaged ({err}); fix or remove it") from None


def _keyring_entry(data: Any) -> KeyringEntry | None:
    """The keyring reference of a profile file's content; None when the password is in it
    (as every profile before the keyring had it)."""
    if not isinstance(data, dict) or "password" in data or data.get(KEYRING_KEY) is None:
        return None
    return KeyringEntry.from_json(data[KEYRING_KEY])


def _stored_entry(path: Path) -> KeyringEntry | None:
    """The keyring reference in the file at ``path`` now, if any (never raises)."""
    try:
        text = read_private(path)
        return _keyring_entry(json.loads(text)) if text is not None else None
    except (OSError, ValueError, ConfigError):
        return None


def password_location(path: Path) -> str:
    """Where the profile at ``path`` keeps its password, for people."""
    entry = _stored_entry(path)
    return entry.describe() if entry is not None else profile_keyring.IN_FILE


def _close_to_others(path: Path) -> None:
    """A profile others may read (copied by hand, an old umask) is closed again: it holds
    the admin password."""
    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            path.chmod(0o600)
    except OSError:
        pass


def require_profile(path: Path) -> Profile:
    profile = load_profile(path)
    if profile is None:
        raise ConfigError(
            f"no CLI profile at {path}: run hacore cluster start or join first (they write it), "
            f"hacore cluster profile create on a machine that is not a member, or point "
            f"{PROFILE_ENV} at one"
        )
    return profile


def save_profile(path: Path, profile: Profile) -> str:
    """Write the profile (0600), its password in the keyring when one is usable; returns
    where the password went, for people."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    previous = _stored_entry(path)
    data = profile.to_json()
    entry = profile_keyring.store(path, profile.password)
    if entry is not None:
        del data["password"]
        data[KEYRING_KEY] = entry.to_json()
    write_private(path, json.dumps(data, indent=2) + "\n")
    if previous is not None and previous != entry:
        profile_keyring.forget(previous)
    return entry.describe() if entry is not None else profile_keyring.IN_FILE


def remove_profile(path: Path) -> None:
    """Delete the profile file and its keyring entry."""
    entry = _stored_entry(path)
    path.unlink()
    if entry is not None:
        profile_keyring.forget(entry)


def active_client(profile: Profile, timeout: float = PROBE_TIMEOUT) -> ApiClient:
    """A client for the active node among the profile's nodes."""
    if not profile.nodes:
        raise HacoreError("the CLI profile lists no node")
    return find_active(profile.urls(), profile.auth, timeout=timeout, verify=profile.verify())


def members_of(cluster: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(name, API URL) of every member in a ``GET /cluster`` answer."""
    found = []
    for member in cluster.get("members", []):
        if isinstance(member, Mapping) and member.get("name") and member.get("api_url"):
            found.append((str(member["name"]), str(member["api_url"])))
    return found
