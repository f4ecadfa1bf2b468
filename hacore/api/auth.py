"""Password hashes and HTTP Basic authentication for the agent's REST API.

Hashes use the format the configuration accepts, ``pbkdf2_sha256$<iterations>$<salt>$<hash>``
with salt and hash in unpadded base64. A PBKDF2 check costs about a second of CPU by design, so
:class:`Authenticator` remembers recent verdicts under a keyed digest of the header (never the
header itself), lets only one verification run at a time with a short bounded queue, and
refuses a client that keeps failing before hashing: a load balancer probing ``/status`` with
credentials pays once, and a stream of wrong passwords can neither take every core nor hold
requests in a queue.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import logging
import secrets
import threading
from collections import OrderedDict
from typing import Any

from hacore.api.errors import TooManyRequestsError, UnavailableError
from hacore.api.limits import AttemptLimiter, Throttle
from hacore.config.node import ApiAuth, ApiUser
from hacore.errors import ConfigError

log = logging.getLogger(__name__)

SCHEME = "pbkdf2_sha256"
DEFAULT_ITERATIONS = 600_000
SALT_BYTES = 16
_MAX_ITERATIONS = 100_000_000
_FORMAT = f"{SCHEME}$<iterations>$<salt>$<hash>"
#: the HTTP Basic user name under which a joining node presents its single-use join token
JOIN_TOKEN_USER = "hacore-join"


class Role(enum.IntEnum):
    """What a credential may do, each role including the ones below it (docs/security.md):
    the load balancer's ``probe`` reads the probes and metrics, ``read`` also the cluster
    views, ``admin`` changes things and fetches join tickets."""

    PROBE = 1
    READ = 2
    ADMIN = 3

    @classmethod
    def named(cls, name: str) -> Role:
        return cls[name.upper()]


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
    """Checks ``Authorization`` headers against the configured users; thread-safe.

    ``auth`` is the admin; ``users`` the probe and read-only ones. ``auth`` None (no
    credentials configured yet) refuses every header.

    A PBKDF2 check is made to be slow, so nothing here lets a client make the agent run many:
    verdicts are remembered under a keyed digest of the header (accepted ones apart, so a
    stream of wrong passwords cannot push out the load balancer's) and one check runs at a
    time. The server adds the rest: ``attempts`` refuses a client whose checks keep failing
    before hashing (429), and at most ``max_waiting`` checks wait, each for at most
    ``wait_timeout`` (then 503), so no request queues past a timeout. Without them (None) a
    check waits its turn, as a caller that is not serving network clients wants.
    """

    def __init__(
        self,
        auth: ApiAuth | None,
        *,
        users: tuple[ApiUser, ...] = (),
        cache_size: int = 64,
        max_waiting: int | None = None,
        wait_timeout: float | None = None,
        attempts: AttemptLimiter | None = None,
    ) -> None:
        if auth is not None:
            check_password_hash(auth.password_hash)
        for user in users:
            check_password_hash(user.password_hash)
        self._auth = auth
        #: (user name, hash, role) of every user, the admin first
        self._users: tuple[tuple[str, str, Role], ...] = (
            ((auth.username, auth.password_hash, Role.ADMIN),) if auth is not None else ()
        ) + tuple((u.username, u.password_hash, Role.named(u.role)) for u in users)
        self._key = secrets.token_bytes(32)
        #: accepted headers, with the role they carry
        self._cache: OrderedDict[bytes, Role] = OrderedDict()
        self._refused: OrderedDict[bytes, None] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._hashing = threading.Lock()
        self._waiting = 0
        self.max_waiting = max_waiting
        self.wait_timeout = wait_timeout
        self.attempts = attempts
        self._logged = Throttle()

    @property
    def configured(self) -> bool:
        return self._auth is not None

    def _digest(self, header: str) -> bytes:
        return hmac.new(self._key, header.encode("utf-8", "surrogateescape"), "sha256").digest()

    def _cached(self, key: bytes) -> Role | bool | None:
        """The remembered role, False when refused, None when unknown."""
        with self._lock:
            role = self._cache.get(key)
            if role is not None:
                self._cache.move_to_end(key)
                return role
            if key in self._refused:
                self._refused.move_to_end(key)
                return False
        return None

    def known(self, header: str | None) -> bool:
        """True when checking ``header`` costs no hashing (its verdict is remembered)."""
        if self._auth is None or not header:
            return True
        return self._cached(self._digest(header)) is not None

    def check(self, header: str | None, client: str = "") -> bool:
        """Whether ``header`` holds the credentials of any configured user (see
        :meth:`role`)."""
        return self.role(header, client) is not None

    def role(self, header: str | None, client: str = "") -> Role | None:
        """The role of the user whose credentials ``header`` holds, None when it holds none.
        Raises :class:`~hacore.api.errors.TooManyRequestsError` for a client that failed too
        often and :class:`~hacore.api.errors.UnavailableError` when too many checks already
        wait."""
        if self._auth is None or not header:
            return None
        key = self._digest(header)
        verdict = self._cached(key)
        if verdict is None:
            verdict = self._check_once(header, key, client)
        if verdict is False:
            self._log_failure(header, client)
            return None
        return Role(verdict)

    def _check_once(self, header: str, key: bytes, client: str) -> Role | bool:
        attempts = self.attempts
        wait = attempts.take(client) if attempts is not None else 0.0
        if wait:
            self._log_refusal(client, f"too many failed logins; refused for {wait:.0f} s")
            raise TooManyRequestsError(
                "too many failed logins from this address: try again later", retry_after=wait
            )
        try:
            self._acquire(client)
        except UnavailableError:
            if attempts is not None:
                attempts.give_back(client)
            raise
        try:
            verdict = self._cached(key)
            if verdict is None:
                verdict = self._verify(self._users, header)
                self._remember(key, verdict)
        finally:
            self._hashing.release()
        if verdict and attempts is not None:
            attempts.give_back(client)
        return verdict

    def _acquire(self, client: str) -> None:
        """The one hashing slot, or :class:`UnavailableError` when the queue is full or the
        wait too long."""
        with self._lock:
            full = self.max_waiting is not None and self._waiting >= self.max_waiting
            if not full:
                self._waiting += 1
        retry = self.wait_timeout or 1.0
        if full:
            self._log_refusal(client, "too many password checks waiting")
            raise UnavailableError(
                "too many password checks are waiting: try again shortly", retry_after=retry
            )
        try:
            timeout = -1 if self.wait_timeout is None else self.wait_timeout
            if not self._hashing.acquire(timeout=timeout):
                self._log_refusal(client, "the password check waited too long")
                raise UnavailableError(
                    "the password check waited too long: try again shortly", retry_after=retry
                )
        finally:
            with self._lock:
                self._waiting -= 1

    def _remember(self, key: bytes, verdict: Role | bool) -> None:
        with self._lock:
            if verdict is False:
                self._refused[key] = None
                cache: OrderedDict[bytes, Any] = self._refused
            else:
                self._cache[key] = Role(verdict)
                cache = self._cache
            while len(cache) > self._cache_size:
                cache.popitem(last=False)

    def _log_failure(self, header: str, client: str) -> None:
        held = self._logged.allow(f"failed {client}")
        if held is None:
            return
        credentials = parse_basic(header)
        who = f"as user {credentials[0][:64]!r}" if credentials else "with malformed credentials"
        more = f" ({held} more since the last report)" if held else ""
        log.warning("failed API login from %s %s%s", client or "an unknown address", who, more)

    def _log_refusal(self, client: str, why: str) -> None:
        held = self._logged.allow(f"refused {client}")
        if held is not None:
            more = f" ({held} more since the last report)" if held else ""
            log.warning(
                "API login from %s refused before checking: %s%s",
                client or "an unknown address",
                why,
                more,
            )

    @staticmethod
    def _verify(users: tuple[tuple[str, str, Role], ...], header: str) -> Role | bool:
        credentials = parse_basic(header)
        if credentials is None or not users:
            return False
        user, password = credentials
        # every name compared and one hash always computed (the admin's when the name is
        # unknown), so the time taken does not tell which part was wrong
        found: tuple[str, Role] | None = None
        for name, stored, role in users:
            if hmac.compare_digest(user.encode(), name.encode()) and found is None:
                found = (stored, role)
        password_ok = verify_password(password, found[0] if found else users[0][1])
        return found[1] if password_ok and found is not None else False
