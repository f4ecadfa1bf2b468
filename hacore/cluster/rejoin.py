"""A removed node's name, joined again by a fresh node.

``nodes remove`` writes ``removed/<name>``; every agent reading it under its own name steps
down for good, so a new node joining under that name would be removed at once. When the
active grants the new node its ticket (the old one's agent no longer publishes a member
record, its store server and database access are gone), the removal is moved to
``retired/<name>/<time>``: the name is free again, the new node starts with nothing of the
old one's, and what happened to the old one stays readable (so does its ``history/`` of
leaderships, which is never rewritten).
"""

from __future__ import annotations

import json
import logging
import time

from hacore.agent import keys
from hacore.backends.consensus import ConsensusBackend

log = logging.getLogger(__name__)

RETIRED_PREFIX = "retired/"


def retired_key(name: str, at: float) -> str:
    return f"{RETIRED_PREFIX}{name}/{at:.6f}"


def release_name(consensus: ConsensusBackend, name: str) -> bool:
    """Move ``removed/<name>`` aside, if there is one; True when there was."""
    current = consensus.get(keys.removed_key(name))
    if current is None:
        return False
    try:
        removal = json.loads(current.value)
    except ValueError:
        removal = {"unreadable": current.value.decode(errors="replace")}
    now = time.time()
    record = {"removal": removal, "name_reused_at": now}
    consensus.put(retired_key(name, now), json.dumps(record, sort_keys=True).encode())
    consensus.delete(keys.removed_key(name))
    log.info("the name %s of a removed node is joined again by a new node", name)
    return True
