"""Failsafe mode as the agent runs it: the active's rounds of questions, a member's answers.

The records, the signatures and the two sides' bookkeeping are in :mod:`hacore.agent.failsafe`;
this is where the loop meets them (docs/fencing.md, "Failsafe mode"): the active asks every
member to confirm it once per loop while the store is silent, and a member answers
``POST /failsafe`` from what its loop last read.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable, Iterable
from typing import Any

from hacore import pki
from hacore.agent import tls_paths
from hacore.agent.errors import InvalidRequestError, NotAuthenticatedError, NotNowError
from hacore.agent.failsafe import (
    PROMISE_FILE,
    Answer,
    Ask,
    BadQuestion,
    Confirmations,
    Peer,
    Promises,
    sign,
    signed,
    signing_key,
    stored_key,
)
from hacore.agent.hooks import NodeLog
from hacore.agent.lease import LeaseState
from hacore.agent.observe import StoreReading
from hacore.agent.vocabulary import DecisionConfig, LeaseStatus
from hacore.backends.records import ClusterView, Member
from hacore.config.node import NodeConfig
from hacore.errors import HacoreError

log = logging.getLogger(__name__)


def failsafe_key(config: NodeConfig) -> bytes | None:
    """The key questions and answers are signed with: the one the last removal rotated to,
    else the one derived from the cluster's API credentials."""
    try:
        rotated = stored_key(config.node.data_dir)
    except (HacoreError, OSError) as err:
        # never the derived key instead: the removed nodes know that one
        log.warning("failsafe: no key to sign with: %s", err)
        return None
    if rotated is not None:
        return rotated
    auth = config.api.auth
    return signing_key(auth.password_hash) if auth is not None else None


def failsafe_verify(config: NodeConfig) -> ssl.SSLContext | bool:
    """How the active checks a member's API certificate (the cluster CA), or not at all."""
    files = tls_paths.tls_files(config)
    if files is None or not files.ca_file.exists():
        return False
    return pki.ssl_client_context(pki.load_ca_certificate(files.ca_file))


class FailsafeEdge:
    """The promises this node gives as a member, the confirmations it collects as the active,
    and whether they hold its self-fencing deadline later (rule F1)."""

    def __init__(
        self, config: NodeConfig, dcfg: DecisionConfig, lease: LeaseState, log: NodeLog
    ) -> None:
        self.config = config
        self.dcfg = dcfg
        self.name = config.node.name
        self.lease = lease
        self.log = log
        self.promises = Promises(
            self.name,
            dcfg.ttl,
            enabled=dcfg.failsafe_mode,
            path=config.node.data_dir / PROMISE_FILE,
        )
        self.confirmations = Confirmations(
            self.name,
            dcfg.ttl,
            key=lambda: failsafe_key(config),
            verify=lambda: failsafe_verify(config),
        )
        #: the last complete round covers the deadline (the store is silent)
        self.holding = False
        self._said = ""

    def round(
        self,
        reading: StoreReading,
        peers: Callable[[], list[Peer]],
        deadline: Callable[[], float | None],
    ) -> None:
        """As the active with the store silent: ask every member to confirm, once per loop."""
        if not self.dcfg.failsafe_mode:
            return
        lease = self.lease.lease
        if reading.lease_status is LeaseStatus.HELD or (lease is None and not self.holding):
            self.confirmations.reset()
            self.holding = False
            self._say("")
            return
        if lease is None or reading.view is not None or not self.lease.may_write:
            self.holding = False
            return
        timeout = min(self.dcfg.retry_timeout, (deadline() or 0.0) - time.monotonic())
        if timeout <= 0:
            self._say("failsafe: no time left to ask the members before the deadline")
            return
        result = self.confirmations.ask(peers(), lease.token, timeout)
        self.holding = self.confirmations.expiry is not None
        if result.complete:
            self._say(
                f"failsafe: the store does not answer; {', '.join(result.asked)} confirmed "
                "this active"
            )
        else:
            missing = "; ".join(f"{n or 'round'}: {why}" for n, why in result.missing.items())
            self._say(f"failsafe: not every member confirmed this active ({missing})")

    def _say(self, message: str) -> None:
        if message and message != self._said:
            self.log.warning("%s", message)
        self._said = message

    def peers(self, view: ClusterView | None, known: Iterable[Member]) -> list[Peer]:
        """Every member of the last view, and every member known before whose record
        vanished: a node that is not asked could campaign once it reaches the store."""
        members = {m.name: m for m in known}
        if view is not None:
            members.update({m.name: m for m in view.members})
        return [
            Peer(m.name, m.api_url or f"http://{m.host}:{self.config.node.api_port}")
            for name, m in sorted(members.items())
            if name != self.name
        ]

    def json(self, deadline: Callable[[], float | None]) -> dict[str, Any] | None:
        if not self.dcfg.failsafe_mode:
            return None
        now = time.monotonic()
        until = deadline() if self.holding else None
        last = self.confirmations.last
        return {
            "mode": "on",
            "holding": until is not None and now < until,
            "deadline_in": None if until is None else round(until - now, 3),
            "last_round": None
            if last is None
            else {
                "age": round(now - last.sent_at, 3),
                "asked": list(last.asked),
                "missing": dict(last.missing),
            },
            "promise": self.promises.json(now),
        }

    def answer(self, body: bytes, signature: str, view: ClusterView | None) -> tuple[bytes, str]:
        """``POST /failsafe`` on this member: the signed answer to an active's question,
        from ``view``, the cluster as the loop last read it (None: the store is silent)."""
        key = failsafe_key(self.config)
        if key is None:
            raise NotNowError("this agent has no API credentials to check the question with")
        if not signed(key, body, signature):
            raise NotAuthenticatedError(
                "the failsafe question is not signed with the cluster's key"
            )
        try:
            ask = Ask.decode(body)
        except BadQuestion as err:
            raise InvalidRequestError(str(err)) from None
        answer: Answer = self.promises.answer(
            ask,
            holds_lease=lambda: self.lease.lease is not None,
            leader=view.leader if view is not None else None,
            read=view is not None,
        )
        if answer.confirmed:
            self.log.info(
                "failsafe: confirmed %s (token %d); not campaigning for %gs",
                ask.asker,
                ask.token,
                answer.ttl,
            )
        else:
            self.log.info("failsafe: not confirming %s: %s", ask.asker, answer.why)
        out = answer.encode()
        return out, sign(key, out)

    def close(self) -> None:
        self.confirmations.close()
