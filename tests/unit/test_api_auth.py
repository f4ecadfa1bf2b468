"""Password hashes and HTTP Basic parsing for the REST API."""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import threading
import time

import pytest

from hacore.api.auth import (
    DEFAULT_ITERATIONS,
    Authenticator,
    basic_header,
    check_password_hash,
    hash_password,
    parse_basic,
    verify_password,
)
from hacore.api.errors import TooManyRequestsError, UnavailableError
from hacore.api.limits import AttemptLimiter
from hacore.config.node import ApiAuth, load_config
from hacore.errors import ConfigError

FAST = 1000  # iterations for tests; the format does not depend on it


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_hash_has_the_configuration_format_and_verifies() -> None:
    stored = hash_password("s3cret: with colon", iterations=FAST)
    scheme, iterations, salt, digest = stored.split("$")
    assert (scheme, iterations) == ("pbkdf2_sha256", str(FAST))
    assert not salt.endswith("=") and not digest.endswith("=")
    assert verify_password("s3cret: with colon", stored)
    assert not verify_password("s3cret: with colon ", stored)
    assert not verify_password("", stored)


def test_hash_is_plain_pbkdf2_sha256_so_other_tools_can_check_it() -> None:
    stored = hash_password("pw", iterations=FAST)
    _, _, salt, digest = stored.split("$")
    pad = lambda text: text + "=" * (-len(text) % 4)  # noqa: E731
    expected = hashlib.pbkdf2_hmac("sha256", b"pw", base64.b64decode(pad(salt)), FAST)
    assert base64.b64decode(pad(digest)) == expected


def test_salt_is_random() -> None:
    assert hash_password("pw", iterations=FAST) != hash_password("pw", iterations=FAST)


def test_default_iterations_hash_is_accepted_by_the_configuration() -> None:
    stored = hash_password("admin-password")
    assert stored.startswith(f"pbkdf2_sha256${DEFAULT_ITERATIONS}$")
    config = load_config(
        {
            "node": {"name": "n1", "host": "127.0.0.1"},
            "consensus": {"backend": "memory"},
            "api": {"auth": {"username": "admin", "password_hash": stored}},
        }
    )
    assert config.api.auth is not None
    assert verify_password("admin-password", config.api.auth.password_hash)


def test_unicode_password() -> None:
    stored = hash_password("pässwörd-密码", iterations=FAST)
    assert verify_password("pässwörd-密码", stored)
    assert not verify_password("passwort", stored)


def test_the_configuration_example_is_well_formed() -> None:
    # the hash used in the configuration tests and docs: unpadded base64 salt and hash
    check_password_hash("pbkdf2_sha256$600000$c2FsdA$aGFzaA")


@pytest.mark.parametrize(
    ("stored", "fragment"),
    [
        ("plain-password", "is not a pbkdf2_sha256$<iterations>$<salt>$<hash> hash"),
        ("bcrypt$12$abc$def", "uses scheme bcrypt"),
        ("pbkdf2_sha256$many$c2FsdA$aGFzaA", "iterations must be a number"),
        ("pbkdf2_sha256$0$c2FsdA$aGFzaA", "iterations must be 1-"),
        ("pbkdf2_sha256$1000$$aGFzaA", "salt and hash non-empty"),
        ("pbkdf2_sha256$1000$c2F*dA$aGFzaA", "base64"),
        ("pbkdf2_sha256$1000$c2FsdA", "is not a pbkdf2_sha256"),
        ("pbkdf2_sha256$1000$c2FsdA$aGFzaA$extra", "is not a pbkdf2_sha256"),
    ],
)
def test_malformed_stored_hash_is_a_config_error_that_hides_the_value(
    stored: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        verify_password("whatever", stored)
    message = str(info.value)
    assert fragment in message
    assert "not shown" in message
    parts = stored.split("$")
    for secret in parts[2:] if len(parts) > 2 else parts:
        if len(secret) > 3:
            assert secret not in message
    with pytest.raises(ConfigError):
        Authenticator(ApiAuth("admin", stored))


def test_hash_password_rejects_silly_iterations() -> None:
    with pytest.raises(ConfigError):
        hash_password("pw", iterations=0)


# ---- Basic header parsing ----


def test_parse_basic_round_trip() -> None:
    assert parse_basic(basic_header("admin", "pa:ss:word")) == ("admin", "pa:ss:word")
    assert parse_basic(basic_header("admin", "")) == ("admin", "")
    assert parse_basic(basic_header("ädmin", "pässword")) == ("ädmin", "pässword")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Basic",
        "Basic ",
        "Bearer abc.def",
        "Basic !!!notbase64",
        "Basic " + _b64(b"no-colon"),
        "Basic " + _b64(b":password-without-user"),
        "Basic " + _b64(b"admin:pw") + " trailing",
        "Digest " + _b64(b"admin:pw"),
    ],
)
def test_parse_basic_refuses_malformed_headers(header: str | None) -> None:
    assert parse_basic(header) is None


def test_parse_basic_scheme_is_case_insensitive_and_tolerates_spaces() -> None:
    token = _b64(b"admin:pw")
    assert parse_basic(f"basic {token}") == ("admin", "pw")
    assert parse_basic(f"  BASIC   {token}  ") == ("admin", "pw")


def test_parse_basic_falls_back_to_latin1() -> None:
    header = "Basic " + _b64("admin:pässword".encode("latin-1"))
    assert parse_basic(header) == ("admin", "pässword")


def test_basic_header_refuses_a_user_with_a_colon() -> None:
    with pytest.raises(ConfigError):
        basic_header("ad:min", "pw")


# ---- Authenticator ----


@pytest.fixture(scope="module")
def authenticator() -> Authenticator:
    return Authenticator(ApiAuth("admin", hash_password("right", iterations=FAST)))


def test_authenticator_accepts_only_the_right_user_and_password(
    authenticator: Authenticator,
) -> None:
    assert authenticator.check(basic_header("admin", "right"))
    assert authenticator.check(basic_header("admin", "right"))  # cached verdict
    assert not authenticator.check(basic_header("admin", "wrong"))
    assert not authenticator.check(basic_header("Admin", "right"))
    assert not authenticator.check(basic_header("root", "right"))
    assert not authenticator.check(None)
    assert not authenticator.check("Basic garbage")
    # a cached success never lets another header through
    assert authenticator.check(basic_header("admin", "right"))
    assert not authenticator.check(basic_header("admin", "right "))


def test_authenticator_without_credentials_refuses_everything() -> None:
    auth = Authenticator(None)
    assert not auth.configured
    assert not auth.check(basic_header("admin", "right"))


def test_authenticator_cache_saves_the_hashing_cost() -> None:
    # high enough that a second verification would be measurable
    auth = Authenticator(ApiAuth("admin", hash_password("pw", iterations=200_000)))
    header = basic_header("admin", "pw")
    start = time.perf_counter()
    assert auth.check(header)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(20):
        assert auth.check(header)
    repeated = time.perf_counter() - start
    assert repeated < first, (first, repeated)


def test_authenticator_cache_is_bounded_and_thread_safe() -> None:
    auth = Authenticator(ApiAuth("admin", hash_password("pw", iterations=FAST)), cache_size=4)
    results: list[bool] = []

    def worker(index: int) -> None:
        for round_ in range(10):
            results.append(auth.check(basic_header("admin", f"wrong-{index}-{round_}")))
            results.append(auth.check(basic_header("admin", "pw")))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(True) == 60 and results.count(False) == 60
    assert len(auth._cache) <= 4


def test_no_secret_in_reprs() -> None:
    stored = hash_password("pw", iterations=FAST)
    assert stored not in repr(ApiAuth("admin", stored))
    assert re.search(r"password_hash", repr(ApiAuth("admin", stored))) is None


# ---- limits: rate per client, a bounded queue, and a log of failures ----


def test_a_client_that_keeps_failing_is_refused_before_hashing() -> None:
    attempts = AttemptLimiter(burst=3, rate=0.5)
    auth = Authenticator(ApiAuth("admin", hash_password("pw", iterations=FAST)), attempts=attempts)
    for index in range(3):
        assert not auth.check(basic_header("admin", f"wrong-{index}"), "10.0.0.7")
    with pytest.raises(TooManyRequestsError) as info:
        auth.check(basic_header("admin", "pw"), "10.0.0.7")
    assert info.value.status == 429
    assert info.value.retry_after is not None and 0 < info.value.retry_after <= 2
    # other clients are not held back, and a success gives its try back
    for _ in range(5):
        assert auth.check(basic_header("admin", "pw"), "10.0.0.8")
    # a remembered verdict costs no hashing, so it is answered whatever the count
    assert not auth.check(basic_header("admin", "wrong-0"), "10.0.0.7")
    # one try every 1 / rate seconds
    time.sleep(2.1)
    assert auth.check(basic_header("admin", "pw"), "10.0.0.7")


def test_the_queue_of_password_checks_is_bounded_in_length_and_time() -> None:
    # a hash that takes about 0.6 s on this machine, three times the waiting limit: the
    # checks overlap, and a waiter's limit ends before the one hash does (at a fixed count of
    # iterations a fast CPU hashed in 0.16 s, and a waiter got the slot)
    began = time.monotonic()
    hash_password("pw", iterations=100_000)
    per_iteration = (time.monotonic() - began) / 100_000
    iterations = min(max(int(0.6 / per_iteration), 100_000), 10_000_000)
    stored = hash_password("pw", iterations=iterations)
    auth = Authenticator(ApiAuth("admin", stored), max_waiting=1, wait_timeout=0.2)
    outcomes: list[tuple[str, float]] = []

    def check(password: str) -> None:
        began = time.monotonic()
        try:
            outcome = str(auth.check(basic_header("admin", password)))
        except UnavailableError as err:
            assert err.status == 503 and err.retry_after
            outcome = "503"
        outcomes.append((outcome, time.monotonic() - began))

    threads = [threading.Thread(target=check, args=(f"p{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # one hashed; the others waited at most 0.2 s, or were turned away at once: a wait without
    # its time limit would have ended in a hash of its own ("False"), not in a 503, and
    # every 503 came back before the one hash was done
    assert sorted(o for o, _ in outcomes) == ["503", "503", "503", "False"], outcomes
    hashed = next(elapsed for o, elapsed in outcomes if o == "False")
    assert all(elapsed < hashed for o, elapsed in outcomes if o == "503"), outcomes


def test_failed_logins_are_logged_with_address_and_user_never_the_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    auth = Authenticator(ApiAuth("admin", hash_password("pw", iterations=FAST)))
    header = basic_header("mallory", "s3cret-guess")
    with caplog.at_level(logging.WARNING, logger="hacore.api.auth"):
        assert not auth.check(header, "10.0.0.9")
        assert not auth.check(header, "10.0.0.9")  # repeated at once: counted, not written
        assert auth.check(basic_header("admin", "pw"), "10.0.0.9")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["failed API login from 10.0.0.9 as user 'mallory'"]
    text = caplog.text
    assert "s3cret-guess" not in text and header.split()[1] not in text
