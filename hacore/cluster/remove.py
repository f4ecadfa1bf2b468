"""``nodes remove``: unregister a standby, on the active.

In order: ``removed/<name>`` (the node's agent steps down to REMOVED and never campaigns), a
short wait for the node to acknowledge it while it can still read the store, then its store
server (managed store), then its registered certificates are revoked in the store's CRL
(hacore/agent/revocation_store.py), then its replication slot and database access, and any
pending join under the name; then the replication password, the failsafe key and the
file-sync secret are rotated (hacore/cluster/secret_rotation.py), each sealed to every
remaining member's certificate, never to the removed node's. Every step is idempotent, so a
removal interrupted half-way is finished by running it again.

The CRL comes only once the store has shrunk. Published before, it reaches the leaving
node's agent and store server while the store still counts that server: in a verification run
the one member left after a 2 → 1 shrink stopped answering 10 s later (the active fenced),
and a removed node of a teardown could not end its service. The likely cause: the leaving
server, refused by its own agent and its peers on new connections, keeps running and starts
elections. What the removed node may read in between is sealed to the other members (the
rotated secrets) or already known to it (everything else it held).

The store shrinks while the leaving server still runs: the removed node keeps its store server
up until the store no longer lists it (:func:`wait_store_forgets`), and only then stops it. A
two-member store has no quorum with one member down, so a server stopped first would leave
the store unable to remove it, and the active unable to renew its lease: it would fence.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from hacore.agent import keys, tls_paths
from hacore.agent import revocation_store as revoke
from hacore.agent.credentials import ReplicationCredentials
from hacore.agent.runtime import Agent
from hacore.api.errors import ConflictError, NotFoundError
from hacore.backends.consensus import ManagedStore
from hacore.backends.records import NodeRole
from hacore.cluster import secret_rotation as rotation
from hacore.cluster.ca_key import signing_ca
from hacore.cluster.grant import require_active
from hacore.cluster.pending import pending_joins, pending_key
from hacore.errors import HacoreError
from hacore.pki import revocation
from hacore.pki.ca import CaMaterial
from hacore.pki.pem import read_certificate

log = logging.getLogger(__name__)


def remove_node(agent: Agent | None, name: str, cluster: str) -> dict[str, Any]:
    agent = require_active(agent, "remove nodes")
    me = agent.config.node.name
    if name == me:
        raise ConflictError(
            f"{name} is the active node: switch over first (hacore cluster switchover), then "
            "remove it from the new active"
        )
    consensus = agent.consensus
    store = agent.backends.managed_store
    removed = keys.removed_names(tuple(kv.key for kv in consensus.get_prefix(keys.REMOVED_PREFIX)))
    live = {m.name for m in consensus.members()}
    known = live | {m.name for m in agent.snapshot().members} | set(pending_joins(consensus))
    store_names = {m.name for m in store.members()} if store is not None else set()
    if name not in known | removed | store_names:
        raise NotFoundError(f'no node named "{name}" in cluster {cluster}')
    agent.mark_removed(name)
    acknowledged = name not in live or _wait_acknowledged(agent, name)
    store_removed = False
    if store is not None and name in store_names | known:
        store.remove_member(name)
        store_removed = True
    ca, serials = _publish_revocation(agent, name)
    try:
        agent.replication.drop_member(name)
        database = "slot and access removed"
    except HacoreError as err:
        database = str(err)
    consensus.delete(pending_key(name))
    revoked = _apply_revocation(agent, ca, serials)
    to = _recipients(agent, name)
    rotated = _rotate(agent, to)
    failsafe_key = rotation.rotate_failsafe_key(agent, to)
    filesync_secret = rotation.rotate_filesync_secret(agent, to)
    log.info("node %s removed from cluster %s", name, cluster)
    return {
        "removed": name,
        "already_removed": name in removed,
        "acknowledged": acknowledged,
        "store_member_removed": store_removed,
        "database": database,
        "revoked_certificates": revoked,
        "replication_password": rotated,
        "failsafe_key": failsafe_key,
        "filesync_secret": filesync_secret,
    }


def _publish_revocation(agent: Agent, name: str) -> tuple[CaMaterial | None, tuple[int, ...]]:
    """Revoke the certificates registered for ``name`` in the store's CRL (once the store
    has shrunk); the CA used and the serials revoked."""
    if tls_paths.tls_files(agent.config) is None:
        return None, ()
    # the CA key, unsealed for this request with the admin's password (ca_key.py)
    ca = signing_ca(agent.config, agent.consensus)
    serials = revoke.revoke_node(agent.consensus, ca, name)
    if not serials:
        log.warning(
            "no certificate of %s is registered in the store: nothing revoked (it never ran "
            "an agent of this version?)",
            name,
        )
    return ca, serials


def _apply_revocation(agent: Agent, ca: CaMaterial | None, serials: tuple[int, ...]) -> list[str]:
    """The store's CRL applied here at once (the store has shrunk); the other members copy
    it from the store within seconds."""
    files = tls_paths.tls_files(agent.config)
    if files is None or ca is None:
        return []
    data = revoke.current_crl(agent.consensus)
    if data is not None and revocation.install_crl(
        revocation.crl_path(files.ca_file), data, ca.certificate
    ):
        agent.replication.reload_tls()
    return [f"{serial:x}" for serial in serials]


def _recipients(agent: Agent, name: str) -> rotation.Recipients:
    """The certificates the rotated secrets are sealed to: every remaining member's (None
    without TLS: there is no node key to seal to, and the store is open anyway)."""
    files = tls_paths.tls_files(agent.config)
    if files is None:
        log.warning("TLS is off: the rotated secrets are stored in clear")
        return None
    try:
        return revoke.recipients(agent.consensus, read_certificate(files.ca_file), leaving=(name,))
    except HacoreError as err:
        log.warning("no member certificate to seal the rotated secrets to: %s", err)
        return ()


def _rotate(agent: Agent, to: rotation.Recipients) -> str:
    """A new replication password; the removed node knew the old one."""
    credentials = agent.executor.credentials()
    if credentials is None:
        return "not rotated: this node has no replication credentials"
    try:
        secret = revoke.rotate_replication_password(
            agent.consensus, agent.replication, credentials.user, to
        )
    except HacoreError as err:
        log.warning("the replication password was not rotated: %s", err)
        return f"not rotated: {err}"
    agent.set_credentials(ReplicationCredentials(secret.user, secret.password))
    return f"rotated (generation {secret.generation})"


def _wait_acknowledged(agent: Agent, name: str) -> bool:
    """Until the node publishes role REMOVED or its record vanishes (it is down)."""
    cfg = agent.config.timing
    deadline = time.monotonic() + cfg.ttl + 3 * cfg.loop_wait
    while time.monotonic() < deadline:
        member = next((m for m in agent.consensus.members() if m.name == name), None)
        if member is None or member.role is NodeRole.REMOVED:
            return True
        time.sleep(0.2)
    log.warning("%s did not acknowledge its removal in time; removing it anyway", name)
    return False


def wait_store_forgets(store: ManagedStore, name: str, timeout: float) -> bool:
    """On the removed node, before it stops its own store server: until the store no longer
    lists ``name`` (the active's ``nodes remove`` shrank it) or the server exited by itself
    (a removed etcd member does). After ``timeout`` (the active died half-way) it gives up,
    and the caller stops the server anyway: running ``nodes remove`` again finishes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not store.is_running():
            return True
        try:
            if name not in {m.name for m in store.members()}:
                return True
        except HacoreError as err:
            log.debug("store members not read: %s", err)
        time.sleep(0.5)
    log.warning(
        "the store still lists %s after %.0fs: stopping its store server anyway", name, timeout
    )
    return False
