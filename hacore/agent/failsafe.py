"""Failsafe mode (``failover.failsafe_mode: on``): riding out a whole-store outage.

Without it an active that cannot renew its lease fences itself at ``ttl - safety_margin``,
even when the store is down everywhere and no other node could ever take over: a store outage
becomes a database outage. With it, the active asks every member's agent over the API (``POST
/failsafe``) to *confirm* it; a member that confirms promises, on its own monotonic clock, not
to campaign until ``now + ttl`` (even if it regains the store meanwhile). Only when every
member confirmed does the active move its self-fencing deadline, to the earliest confirmation
expiry (on its own clock: when it *sent* the question, plus ``ttl``) minus ``safety_margin``;
that is also the deadline the fence keeper enforces. docs/fencing.md ("Failsafe mode") has
the argument for why two nodes can then never write at once.

Agents hold only the hash of the cluster's API credentials (they never see the password), so
questions and answers are signed with an HMAC keyed by that hash, shared by every member since
the join ticket carried it: a forged question could only make a member hold back (never
promote anyone), and a forged answer, which could keep a cut-off active writable, fails the
signature and the question's random nonce. With TLS on, the call also goes over HTTPS
verified against the cluster CA.

The member side (:class:`Promises`) and the active side (:class:`Confirmations`) are the
I/O edges; :func:`refusal` is the pure rule for when a member must say no.
"""

from __future__ import annotations

import concurrent.futures as cf
import enum
import hashlib
import hmac
import json
import logging
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import httpx

from hacore.agent.keeper import boot_id
from hacore.atomic_files import write_atomic
from hacore.backends.records import Leader
from hacore.errors import HacoreError

log = logging.getLogger(__name__)

Clock = Callable[[], float]

PATH = "/failsafe"
#: the member's promise, in its data directory
PROMISE_FILE = "failsafe-promise.json"
#: the HMAC-SHA256 of the body, hex, on both the question and the answer
SIGNATURE_HEADER = "x-hacore-failsafe"
_KEY_LABEL = b"hacore failsafe v1\0"


class Refusal(enum.Enum):
    """Why a member does not confirm an active (the rule in :func:`refusal`)."""

    #: failsafe mode is off on this member: it promises nothing
    OFF = "failsafe mode is off here"
    #: the question names another node as the one asked
    WRONG_NODE = "the question is for another node"
    #: the asker is this node
    SELF = "a node does not confirm itself"
    #: this node holds (or is winning) the lease: it is the active as far as it knows
    HOLDS_LEASE = "this node holds the lease"
    #: this node never read the store, so it cannot tell who the active is
    NO_VIEW = "this node has not read the store yet"
    #: the last view this node read names another leader, none, or another token
    NOT_HOLDER = "the store, as this node last read it, does not name the asker's lease"


class BadQuestion(HacoreError):
    """A question that is not signed with the cluster's key, or not well formed."""


def signing_key(password_hash: str) -> bytes:
    """The key every member derives from the cluster's API credential hash, until a removal
    rotates it (:func:`stored_key`)."""
    return hashlib.sha256(_KEY_LABEL + password_hash.encode()).digest()


#: the rotated key, in the node's data directory (hex, 0600)
KEY_FILE = "failsafe.key"


def stored_key(data_dir: Path) -> bytes | None:
    """The key a removal rotated to (``secrets/failsafe`` in the store, copied here by each
    agent: a store outage is when it is needed), None before any removal. A removed node
    kept the one before, which no member accepts any more."""
    try:
        text = (Path(data_dir) / KEY_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise HacoreError(f"{Path(data_dir) / KEY_FILE} does not hold a hex key") from None
    if len(key) < 16:
        raise HacoreError(f"{Path(data_dir) / KEY_FILE} holds too short a key")
    return key


def forget_key(data_dir: Path, *, older_than: float) -> bool:
    """Delete the kept key if it was written before ``older_than`` (wall clock: a key
    written since came from a rotation the reading missed); False when nothing was
    deleted."""
    path = Path(data_dir) / KEY_FILE
    try:
        if path.stat().st_mtime >= older_than:
            return False
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def store_key(data_dir: Path, key_hex: str) -> bool:
    """Keep the rotated key; False when it was already the one kept."""
    path = Path(data_dir) / KEY_FILE
    try:
        if path.read_text().strip() == key_hex:
            return False
    except FileNotFoundError:
        pass
    write_atomic(path, key_hex + "\n", 0o600)
    return True


def sign(key: bytes, body: bytes) -> str:
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def signed(key: bytes, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(key, body), signature or "")


@attrs.frozen
class Ask:
    """The active's question: "do you confirm me, holding the lease with this token?"."""

    asker: str
    member: str
    token: int
    nonce: str

    def encode(self) -> bytes:
        return json.dumps(attrs.asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Ask:
        data = _object(raw)
        try:
            ask = cls(
                str(data["asker"]), str(data["member"]), int(data["token"]), str(data["nonce"])
            )
        except (KeyError, TypeError, ValueError) as err:
            raise BadQuestion(f"malformed failsafe question ({err})") from None
        return ask


@attrs.frozen
class Answer:
    member: str
    nonce: str
    confirmed: bool
    #: seconds the member promised not to campaign for (0 when it refused)
    ttl: float = 0.0
    why: str = ""

    def encode(self) -> bytes:
        return json.dumps(attrs.asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Answer:
        data = _object(raw)
        try:
            return cls(
                str(data["member"]),
                str(data["nonce"]),
                data["confirmed"] is True,
                float(data.get("ttl", 0.0)),
                str(data.get("why", "")),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise BadQuestion(f"malformed failsafe answer ({err})") from None


def _object(raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError:
        raise BadQuestion("the failsafe message is not JSON") from None
    if not isinstance(data, dict):
        raise BadQuestion("the failsafe message is not a JSON object")
    return data


def refusal(
    ask: Ask, *, me: str, enabled: bool, holds_lease: bool, leader: Leader | None, read: bool
) -> Refusal | None:
    """Why this member must not confirm ``ask``, or None when it may.

    ``leader`` is the leader key in the last view this member read (``read``: it read one at
    all). A member that reached the store and saw the lease gone, or held by someone else,
    refuses: the store outage is then the asker's alone, and the store's word stands.
    """
    if not enabled:
        return Refusal.OFF
    if ask.member != me:
        return Refusal.WRONG_NODE
    if ask.asker == me:
        return Refusal.SELF
    if holds_lease:
        return Refusal.HOLDS_LEASE
    if not read:
        return Refusal.NO_VIEW
    if leader is None or leader.name != ask.asker or leader.token != ask.token:
        return Refusal.NOT_HOLDER
    return None


class Promises:
    """The member side: the promise this node gave, and the lock that orders it with a campaign.

    A campaign runs inside :meth:`campaigning` and a confirmation takes the same lock, so a
    promise is never given while this node's own campaign is in flight (it then holds the
    lease and refuses), and no campaign starts under a live promise.

    A promise is written to ``path`` before it is given (monotonic time and boot id), so an
    agent restarted by its supervisor keeps its predecessor's promise; with no file to write,
    it is not given. A new boot starts with none: it takes longer than any ``ttl``.
    """

    def __init__(
        self,
        name: str,
        ttl: float,
        *,
        enabled: bool,
        path: Path | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.name = name
        self.ttl = ttl
        self.enabled = enabled
        self.path = path
        self.clock = clock
        self._lock = threading.Lock()
        self.until: float | None = None
        #: the active the live promise was given to
        self.to = ""
        self._load()

    def _load(self) -> None:
        if self.path is None:
            return
        try:
            data = _object(self.path.read_bytes())
            if data.get("boot") == boot_id():
                self.until, self.to = float(data["until"]), str(data.get("to", ""))
        except FileNotFoundError:
            return
        except (OSError, HacoreError, KeyError, TypeError, ValueError) as err:
            # unreadable: hold back for one ttl, as if a promise had just been given
            log.warning(
                "the failsafe promise file %s is unreadable (%s): holding back", self.path, err
            )
            self.until = self.clock() + self.ttl

    def _save(self, until: float, to: str) -> None:
        if self.path is None:
            return
        body = json.dumps({"boot": boot_id(), "until": until, "to": to}).encode()
        write_atomic(self.path, body, 0o644, durable=False)

    def live_until(self, now: float | None = None) -> float | None:
        until = self.until
        if until is None or (self.clock() if now is None else now) >= until:
            return None
        return until

    def answer(
        self, ask: Ask, *, holds_lease: Callable[[], bool], leader: Leader | None, read: bool
    ) -> Answer:
        with self._lock:
            why = refusal(
                ask,
                me=self.name,
                enabled=self.enabled,
                holds_lease=holds_lease(),
                leader=leader,
                read=read,
            )
            if why is not None:
                return Answer(ask.member, ask.nonce, False, 0.0, why.value)
            until = max(self.until or 0.0, self.clock() + self.ttl)
            try:
                self._save(until, ask.asker)
            except OSError as err:
                unrecorded = f"cannot record it: cannot write {self.path}: {err.strerror}"
                return Answer(ask.member, ask.nonce, False, 0.0, unrecorded)
            self.until, self.to = until, ask.asker
            return Answer(ask.member, ask.nonce, True, self.ttl)

    @contextmanager
    def campaigning(self) -> Iterator[bool]:
        """Hold confirmations back while a campaign runs; yields whether it may run."""
        with self._lock:
            yield self.live_until() is None

    def json(self, now: float | None = None) -> dict[str, Any] | None:
        until = self.live_until(now)
        if until is None:
            return None
        now = self.clock() if now is None else now
        return {"promised_to": self.to or None, "expires_in": round(until - now, 3)}


@attrs.frozen
class Peer:
    name: str
    api_url: str


@attrs.frozen
class Round:
    """One round of questions: when it was sent, and who did not confirm (with why)."""

    sent_at: float
    asked: tuple[str, ...]
    missing: Mapping[str, str] = attrs.field(factory=dict)
    #: the shortest promise among the answers (seconds)
    shortest: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.missing


class Confirmations:
    """The active side: asks every member, keeps the earliest expiry of a complete round.

    :attr:`expiry` is on this node's clock and never later than any member's promise: each
    member starts its ``ttl`` when the question *arrives*, after it was sent.
    """

    def __init__(
        self,
        name: str,
        ttl: float,
        *,
        key: Callable[[], bytes | None],
        verify: Callable[[], ssl.SSLContext | bool],
        clock: Clock = time.monotonic,
    ) -> None:
        self.name = name
        self.ttl = ttl
        self.key = key
        self.verify = verify
        self.clock = clock
        self.expiry: float | None = None
        self.last: Round | None = None
        self._pool = cf.ThreadPoolExecutor(max_workers=8, thread_name_prefix="hacore-failsafe")

    def reset(self) -> None:
        self.expiry = None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def ask(self, peers: Sequence[Peer], token: int, timeout: float) -> Round:
        """Ask every peer at once, waiting at most ``timeout``; a complete round moves
        :attr:`expiry`. With no peer at all there is nobody to confirm: never complete."""
        sent = self.clock()
        key = self.key()
        if not peers:
            result = Round(sent, (), {"": "no other member to confirm this node"})
        elif key is None:
            result = Round(
                sent, tuple(p.name for p in peers), {"": "no API credentials to sign with"}
            )
        else:
            verify = self.verify()
            futures = {
                p.name: self._pool.submit(self._one, p, token, key, verify, timeout) for p in peers
            }
            missing: dict[str, str] = {}
            ttls = []
            for name, future in futures.items():
                try:
                    ttls.append(future.result(timeout=max(0.0, sent + timeout - self.clock())))
                except cf.TimeoutError:
                    missing[name] = f"no answer within {timeout:g}s"
                except Exception as err:
                    missing[name] = str(err) or type(err).__name__
            result = Round(sent, tuple(futures), missing, min(ttls) if ttls else 0.0)
        if result.complete:
            expiry = sent + min(self.ttl, result.shortest)
            self.expiry = max(self.expiry or expiry, expiry)
        self.last = result
        return result

    def _one(
        self, peer: Peer, token: int, key: bytes, verify: ssl.SSLContext | bool, timeout: float
    ) -> float:
        ask = Ask(self.name, peer.name, token, secrets.token_hex(16))
        body = ask.encode()
        url = peer.api_url.rstrip("/") + PATH
        try:
            with httpx.Client(
                timeout=httpx.Timeout(timeout),
                verify=verify if url.startswith("https:") else False,
                trust_env=False,
            ) as client:
                resp = client.post(
                    url,
                    content=body,
                    headers={SIGNATURE_HEADER: sign(key, body), "content-type": "application/json"},
                )
        except httpx.HTTPError as err:
            raise HacoreError(f"unreachable ({type(err).__name__})") from None
        if resp.status_code != 200:
            raise HacoreError(f"answered HTTP {resp.status_code}")
        if not signed(key, resp.content, resp.headers.get(SIGNATURE_HEADER, "")):
            raise HacoreError("the answer is not signed with the cluster's key")
        answer = Answer.decode(resp.content)
        if answer.nonce != ask.nonce or answer.member != peer.name:
            raise HacoreError("the answer is not to this question")
        if not answer.confirmed:
            raise HacoreError(f"refused: {answer.why}")
        if answer.ttl <= 0:
            raise HacoreError("confirmed for no time")
        return answer.ttl
