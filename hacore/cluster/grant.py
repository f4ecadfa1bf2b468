"""The active's side of ``cluster join``: check the newcomer, then grant (or cancel) a ticket.

Every check runs before anything changes, so a refused join leaves the cluster as it was. Only
then, in order: the pending-join key (create-only, so one name cannot be granted twice), the
store member (managed store), the database access for the newcomer's address. If a later step
fails the earlier ones are undone before the error is answered.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import threading
import time
from typing import Any

import attrs

from hacore.agent import keys, tls_paths
from hacore.agent import revocation_store as revoke
from hacore.agent.runtime import Agent
from hacore.api.errors import (
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotActiveError,
    UnavailableError,
)
from hacore.cluster import ca_key, join_tokens, rejoin
from hacore.cluster.ca_key import signing_ca
from hacore.cluster.operation_state import ClusterState
from hacore.cluster.pending import PendingJoin, pending_joins, pending_key
from hacore.cluster.record import reported_version
from hacore.cluster.ticket import JoinRequest, Ticket, ticket_parts
from hacore.cluster.tls import CA_PART, LOOPBACK_HOSTS, grant_certificate
from hacore.config.check import is_dns_name
from hacore.config.node import validate_node_name
from hacore.errors import ConfigError, HacoreError

log = logging.getLogger(__name__)
_granting = threading.Lock()
#: pg_hba address keywords: as a joiner's "host" they would open the database to anyone
_HBA_KEYWORDS = frozenset({"all", "samehost", "samenet"})
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def check_join_host(host: str) -> str:
    """``host`` when it is an IP address or a DNS name; :class:`BadRequestError` for anything
    else, above all a ``pg_hba`` keyword or a pattern (it becomes the newcomer's database
    access row)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if (
        host.lower() in _HBA_KEYWORDS
        or not name
        or len(name) > 253
        or not all(_DNS_LABEL.fullmatch(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise BadRequestError(
            f"join refused: the node address {host[:80]!r} is neither an IP address nor a DNS "
            "name (pg_hba keywords such as all, samehost or samenet, and anything with spaces, "
            "commas or slashes, are refused): give --host-ip the address other nodes reach "
            "it at"
        )
    return host


def require_active(agent: Agent | None, what: str) -> Agent:
    if agent is None:
        raise NotActiveError(f"this node belongs to no cluster yet: it cannot {what}")
    snap = agent.snapshot()
    if not snap.is_active:
        active = f"the active node is {snap.leader}" if snap.leader else "no node is active now"
        raise NotActiveError(
            f"{snap.node_name} is not the active node (it is {snap.state.value}); only the "
            f"active can {what}, and {active}"
        )
    return agent


def grant_ticket(agent: Agent | None, state: ClusterState, body: dict[str, Any]) -> Ticket:
    agent = require_active(agent, "grant a join")
    req = JoinRequest.parse(body)
    config = agent.config
    try:
        validate_node_name(req.name)
    except ConfigError as err:
        raise BadRequestError(f"join refused: {err}") from None
    check_join_host(req.host)
    token = body.get("join_token")
    client = str(body.get("join_client") or "")
    if isinstance(token, str):
        # before anything else: a caller without a valid token learns nothing more
        join_tokens.check(agent.consensus, token, req.name, req.host, client, time.time())
    cluster = state.record.name
    _check_compatible(agent, state, req)
    # a removal rotated it: the store has the current one, sealed to this node among the
    # others (hacore/agent/revocation_store.py); read before anything changes, as a check
    try:
        opener = revoke.opener_for(config.node.name, tls_paths.tls_files(config))
        rotated = revoke.replication_secret(agent.consensus, opener)
    except HacoreError as err:
        raise UnavailableError(f"cannot read the current replication password: {err}") from None
    with _granting:
        retry = _check_name(agent, state, req)
        if isinstance(token, str):
            if retry:
                raise AuthenticationError(
                    f"a join of {req.name} was already granted: a join token gives one ticket "
                    "(ask an admin for a new token once that join is cancelled)"
                )
            join_tokens.redeem(agent.consensus, token, req.name, req.host, client, time.time())
        extensions = {part.name: part.grant(config, req) for part in ticket_parts()}
        if extensions.get(CA_PART):
            # the joiner's certificate: signed now, or issued with its token
            extensions[CA_PART] = grant_certificate(
                config, agent.consensus, req, token if isinstance(token, str) else None
            )
        consensus = agent.consensus
        key = pending_key(req.name)
        current = consensus.get(key)
        entry = PendingJoin(req.name, req.host, granted_by=config.node.name)
        version = current.version if current is not None else 0
        if not consensus.put(key, entry.encode(), expect_version=version):
            raise ConflictError(f"another join of {req.name} was granted at the same moment")
        rejoin.release_name(consensus, req.name)
        try:
            spec = _add_to_store(agent, req)
            agent.replication.allow_member(req.name, req.host)
        except BaseException:
            if not retry:
                _undo(agent, req.name)
            raise
    log.info("join ticket granted to %s at %s for cluster %s", req.name, req.host, cluster)
    auth = config.api.auth
    if auth is None:  # pragma: no cover - an active always has credentials
        raise UnavailableError("this node has no API credentials to hand over")
    snap = agent.snapshot()
    return Ticket(
        record=state.record,
        active=config.node.name,
        consensus=spec,
        replication_user=state.replication_user,
        replication_password=rotated.password if rotated else state.replication_password,
        api_username=auth.username,
        api_password_hash=auth.password_hash,
        status_requires_auth=config.api.status_requires_auth,
        api_users=tuple(attrs.asdict(user) for user in config.api.users),
        members=tuple((m.name, m.api_url) for m in snap.members if m.api_url),
        extensions=extensions,
    )


def _check_compatible(agent: Agent, state: ClusterState, req: JoinRequest) -> None:
    config = agent.config
    mine = reported_version()
    if req.version != mine:
        raise ConflictError(
            f"{req.name} runs hacore {req.version} but cluster {state.record.name} runs hacore "
            f"{mine}: install hacore {mine} on {req.name} first, or move the cluster to hacore "
            f"{req.version} with the upgrade procedure (snapshot, restore, start, joins: "
            f'docs/snapshots.md, "Upgrading hacore")'
        )
    if (req.consensus_backend, req.managed) != (config.consensus.backend, config.consensus.managed):
        ours = (
            f"{config.consensus.backend} ({'managed' if config.consensus.managed else 'external'})"
        )
        theirs = f"{req.consensus_backend} ({'managed' if req.managed else 'external'})"
        raise ConflictError(
            f"{req.name} is configured for a {theirs} store but the cluster uses {ours}: "
            "use the same consensus section on every node"
        )
    ours_repl = config.replication.backend if config.replication else ""
    if req.replication_backend != ours_repl:
        raise ConflictError(
            f"{req.name} uses the {req.replication_backend} replication backend but the cluster "
            f"uses {ours_repl}"
        )
    if config.consensus.managed and req.store_identity is None:
        raise BadRequestError(f"{req.name} sent no store identity for the managed store")
    if not req.empty:
        raise ConflictError(
            f"{req.name} is not empty: {req.not_empty}; only an empty node can join (the join "
            "would replace its data): use a fresh node, or remove that data first"
        )


def _check_name(agent: Agent, state: ClusterState, req: JoinRequest) -> bool:
    """Refuse a name already in use; True when this is a retry of a pending join."""
    name, cluster = req.name, state.record.name
    consensus = agent.consensus
    removed = keys.removed_names(tuple(kv.key for kv in consensus.get_prefix(keys.REMOVED_PREFIX)))
    if name in removed and name in {m.name for m in consensus.members()}:
        raise ConflictError(
            f"the node removed as {name} still runs its agent (its member record is live): "
            f"stop it before a new node joins as {name}"
        )
    live = {m.name for m in consensus.members()} | {m.name for m in agent.snapshot().members}
    if name in live or name == agent.config.node.name:
        raise ConflictError(
            f"a node named {name} is already a member of cluster {cluster}: choose another "
            "--node-name"
        )
    pending = pending_joins(consensus).get(name)
    if pending is not None:
        if pending[0].host != req.host:
            raise ConflictError(
                f"a node named {name} is already joining cluster {cluster} from "
                f"{pending[0].host}: choose another --node-name, or cancel that join with "
                f"hacore cluster nodes remove {name}"
            )
        return True
    store = agent.backends.managed_store
    if store is not None and name in {m.name for m in store.members()}:
        raise ConflictError(
            f"the store already has a server named {name}: choose another --node-name"
        )
    return False


def _add_to_store(agent: Agent, req: JoinRequest) -> dict[str, Any]:
    config = agent.config
    store = agent.backends.managed_store
    if store is None:
        return {
            "backend": config.consensus.backend,
            "managed": False,
            "settings": dict(config.consensus.settings),
        }
    assert req.store_identity is not None
    try:
        spec = store.add_member(req.store_identity)
    except HacoreError as err:
        raise UnavailableError(f"cannot add {req.name} to the store now: {err}") from None
    return {"backend": config.consensus.backend, "managed": True, "spec": spec}


def _undo(agent: Agent, name: str) -> None:
    """Forget a granted join: store member, database access, pending key."""
    store = agent.backends.managed_store
    if store is not None:
        store.remove_member(name)
    with contextlib.suppress(HacoreError):
        agent.replication.drop_member(name)
    agent.consensus.delete(pending_key(name))


def cancel_join(agent: Agent | None, body: dict[str, Any]) -> dict[str, Any]:
    """The joiner gave up (its store join failed): undo what the grant did."""
    agent = require_active(agent, "cancel a join")
    name, host = body.get("name"), body.get("host")
    if not isinstance(name, str) or not isinstance(host, str):
        raise BadRequestError('cancel: "name" and "host" must be strings')
    token = body.get("join_token")
    if isinstance(token, str):
        client = str(body.get("join_client") or "")
        join_tokens.check_cancel(agent.consensus, token, name, host, client, time.time())
    pending = pending_joins(agent.consensus).get(name)
    if pending is None:
        return {"cancelled": False, "name": name}
    if pending[0].host != host:
        raise ConflictError(f"the pending join of {name} comes from {pending[0].host}, not {host}")
    if name in {m.name for m in agent.consensus.members()}:
        raise ConflictError(f"{name} already runs as a member: use hacore cluster nodes remove")
    _undo(agent, name)
    log.info("join of %s cancelled", name)
    return {"cancelled": True, "name": name}


def create_join_token(agent: Agent | None, body: dict[str, Any]) -> dict[str, Any]:
    """A single-use token for one node name at one address (``nodes add``)."""
    agent = require_active(agent, "hand out join tokens")
    name, host, ttl = body.get("name"), body.get("host"), body.get("ttl")
    if not isinstance(name, str) or not isinstance(host, str):
        raise BadRequestError('join token: "name" and "host" must be strings')
    try:
        validate_node_name(name)
    except ConfigError as err:
        raise BadRequestError(f"join token refused: {err}") from None
    check_join_host(host)
    dns_names = body.get("dns_names") or []
    if not isinstance(dns_names, list) or not all(
        isinstance(n, str) and is_dns_name(n) for n in dns_names
    ):
        raise BadRequestError('join token: "dns_names" must be a list of DNS names')
    if ttl is None:
        ttl = join_tokens.DEFAULT_TTL
    if not isinstance(ttl, (int, float)) or isinstance(ttl, bool):
        raise BadRequestError('join token: "ttl" must be a number of seconds')
    now = time.time()
    with contextlib.suppress(HacoreError):
        join_tokens.forget_expired(agent.consensus, now)
    # the CA key is unsealed now, with the admin's password: the ticket will have none
    ca = signing_ca(agent.config, agent.consensus) if agent.config.tls.enabled else None
    token, entry = join_tokens.create_token(
        agent.consensus, name, host, agent.config.node.name, float(ttl), now
    )
    if ca is not None:
        with contextlib.suppress(HacoreError):
            ca_key.forget_unclaimed(agent.consensus, join_tokens.PREFIX)
        try:
            hosts = (host, *dns_names, *LOOPBACK_HOSTS)
            ca_key.issue_for_token(ca, agent.consensus, token, name, hosts)
        except BaseException:
            agent.consensus.delete(join_tokens.token_key(token))
            raise
    log.info("join token issued for %s at %s, valid %.0f s", name, host, float(ttl))
    data = join_tokens.token_json(token, entry, now)
    data["active"] = agent.config.node.name
    return data


def collect_stale_joins(agent: Agent, stale_after: float, now: float) -> list[str]:
    """Cancel joins granted over ``stale_after`` seconds ago whose node never showed up."""
    live = {m.name for m in agent.consensus.members()}
    cancelled = []
    for name, (join, _) in pending_joins(agent.consensus).items():
        if name not in live and now - join.granted_at > stale_after:
            log.warning("cancelling the join of %s: granted but never finished", name)
            _undo(agent, name)
            cancelled.append(name)
    return cancelled
