"""The shared secrets a removal rotates beside the replication password: the key the failsafe
questions between agents are signed with, and the file sync's secret (rsync).

The removed node knew both. Each new value goes to the store first (``secrets/failsafe``,
``secrets/filesync``: :mod:`hacore.agent.revocation_store`), sealed to each remaining member's
certificate, where every member's agent opens its own copy within a few seconds
(:mod:`hacore.agent.revocation_sync`), and is applied on the active at once. The removed node
has no copy it can open, even over a store connection its revocation did not cut, so it keeps
the old values, which no member accepts any more.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence

from hacore.agent import revocation_store as revoke
from hacore.agent.failsafe import store_key
from hacore.agent.runtime import Agent
from hacore.errors import HacoreError

Recipients = Sequence[revoke.Recipient] | None

log = logging.getLogger(__name__)


def rotate_failsafe_key(agent: Agent, to: Recipients) -> str:
    """A new failsafe signing key sealed to ``to`` (None: in clear, no TLS); what happened,
    for the removal's answer."""
    value = secrets.token_hex(32)
    try:
        rotated = revoke.rotate_shared_secret(agent.consensus, revoke.FAILSAFE_KEY, value, to)
        store_key(agent.config.node.data_dir, value)
    except (HacoreError, OSError) as err:
        log.warning("the failsafe key was not rotated: %s", err)
        return f"not rotated: {err}"
    log.info("rotated the failsafe key (generation %d)", rotated.generation)
    return f"rotated (generation {rotated.generation})"


def rotate_filesync_secret(agent: Agent, to: Recipients) -> str:
    """A new file-sync secret sealed to ``to``, when the engine shares one; what happened."""
    engine = agent.backends.filesync
    if engine is None:
        return "no file sync"
    if not engine.rotates_secret:
        return f"nothing shared to rotate ({type(engine).__name__} authenticates peers itself)"
    value = secrets.token_urlsafe(32)
    try:
        rotated = revoke.rotate_shared_secret(
            agent.consensus, revoke.FILESYNC_SECRET_KEY, value, to
        )
    except HacoreError as err:
        log.warning("the file-sync secret was not rotated: %s", err)
        return f"not rotated: {err}"
    try:
        note = engine.use_secret(value)
    except HacoreError as err:
        log.warning("the rotated file-sync secret is not used here: %s", err)
        return f"not rotated: {err}"
    log.info("rotated the file-sync secret (generation %d)", rotated.generation)
    done = f"rotated (generation {rotated.generation})"
    return f"{done}; {note}" if note else done
