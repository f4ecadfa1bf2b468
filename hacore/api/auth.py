"""Password hashes and HTTP Basic authentication for the agent's REST API.

Hashes use the format the configuration accepts, ``pbkdf2_sha256$<iterations>$<salt>$<hash>``
with salt and hash in unpadded base64. A PBKDF2 check costs about a second of CPU by design, so
:class:`Authenticator` remembers recent verdicts under a keyed digest of the header (never the
header itself) and lets only one verification run at a time: a load balancer probing
``/status`` with credentials pays once, and a stream of wrong passwords cannot take every core.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
from collections import OrderedDict

from hacore.config import ApiAuth
from hacore.errors import ConfigError

SCHEME = "pbkdf2_sha256"
DEFAULT_ITERATIONS = 600_000
SALT_BYTES = 16
_MAX_ITERATIONS = 100_000_000
_FORMAT = f"{SCHEME}$<iterations>$<salt>$<hash>"


def _b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def hash_password(password: str, iterations: int = DEFAULT_ITERATIONS) -> str:
    """A new hash of ``password`` with a random salt, for ``api.auth.password_hash``."""
    if not 1 <= iterations <= _MAX_ITERATIONS:
        raise ConfigError(f"password hash iterations must be 1-{_MAX_ITERATIONS}")
    salt = secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{SCHEME}${iterations}${_b64encode(salt)}${_b64encode(digest)}"


def _parse_hash(stored: str) -> tuple[int, bytes, bytes]:
    # the message never includes the value: it is a secret, and may be a pasted password
    parts = stored.split("$")
    if len(parts) != 4 or parts[0] != SCHEME:
        scheme = parts[0] if len(parts) > 1 and parts[0].isidentifier() else None
        why = (
            f"uses scheme {scheme}; hacore only reads" if scheme and scheme != SCHEME else "is not"
        )
        raise ConfigError(f"api.auth.password_hash {why} a {_FORMAT} hash (the value is not shown)")
    try:
        iterations = int(parts[1])
        salt, digest = _b64decode(parts[2]), _b64decode(parts[3])
    except (ValueError, binascii.Error):
        raise ConfigError(
            f"api.auth.password_hash is not a valid {_FORMAT} hash: iterations must be a number "
            "and salt and hash base64 (the value is not shown)"
        ) from None
    if not 1 <= iterations <= _MAX_ITERATIONS or not salt or not digest:
        raise ConfigError(
            f"api.auth.password_hash is not a valid {_FORMAT} hash: iterations must be "
            f"1-{_MAX_ITERATIONS} and salt and hash non-empty (the value is not shown)"
        )
    return iterations, salt, digest


def check_password_hash(stored: str) -> None:
    """Raise :class:`ConfigError` unless ``stored`` is a hash this module can verify."""
    _parse_hash(stored)


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored``; the comparison takes constant time.

    A malformed ``stored`` hash raises :class:`ConfigError`: it is the configuration's fault,
    not the caller's, and must not look like a wrong password.
    """
    iterations, salt, digest = _parse_hash(stored)
    candidate = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations, len(digest))
    return hmac.compare_digest(candidate, digest)


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """``(user, password)`` from an ``Authorization: Basic ...`` header, None when absent or
    malformed. The password may contain ':'; the user may not (RFC 7617)."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token.strip():
        return None
    try:
        raw = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    user, colon, password = text.partition(":")
    if not colon or not user:
        return None
    return user, password


def basic_header(user: str, password: str) -> str:
    """The ``Authorization`` header value for ``user`` and ``password`` (HAProxy checks)."""
    if ":" in user:
        raise ConfigError("an API user name cannot contain ':' (HTTP Basic authentication)")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


class Authenticator:
    """Checks ``Authorization`` headers against one configured user; thread-safe.

    ``auth`` None (no credentials configured yet) refuses every header.
    """

    def __init__(self, auth: ApiAuth | None, *, cache_size: int = 64) -> None:
        if auth is not None:
            check_password_hash(auth.password_hash)
        self._auth = auth
        self._key = secrets.token_bytes(32)
        self._cache: OrderedDict[bytes, bool] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._hashing = threading.Lock()

    @property
    def configured(self) -> bool:
        return self._auth is not None

    def check(self, header: str | None) -> bool:
        auth = self._auth
        if auth is None or not header:
            return False
        key = hmac.new(self._key, header.encode("utf-8", "surrogateescape"), "sha256").digest()
        with self._lock:
            verdict = self._cache.get(key)
            if verdict is not None:
                self._cache.move_to_end(key)
                return verdict
        with self._hashing:
            with self._lock:
                verdict = self._cache.get(key)
            if verdict is None:
                verdict = self._verify(auth, header)
        with self._lock:
            self._cache[key] = verdict
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return verdict

    @staticmethod
    def _verify(auth: ApiAuth, header: str) -> bool:
        credentials = parse_basic(header)
        if credentials is None:
            return False
        user, password = credentials
        # both parts always checked, so the time taken does not tell which one was wrong
        user_ok = hmac.compare_digest(user.encode(), auth.username.encode())
        password_ok = verify_password(password, auth.password_hash)
        return user_ok and password_ok
