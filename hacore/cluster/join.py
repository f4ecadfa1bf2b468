"""``cluster join`` on the joining node: ask the active for a ticket, then become a member.

Nothing is written on this node before the active grants the ticket, so every refusal (a node
that is not empty, a name in use, another hacore version, wrong credentials, an active that
cannot be reached) leaves both nodes as they were. After the grant, each step is recorded in
``cluster.json``:

1. ticket: granted (the active added this node to its store and let it reach its database);
2. store: this node's store server joins the managed store (or the external store is reached
   and holds the cluster's record); on failure the active is asked to forget the join and
   this node is made empty again;
3. agent: the loop starts; it finds itself empty with a leader, clones the database (the
   progress shows in ``GET /cluster``) and follows the active. The join is done once it
   streams.

An agent restarted before step 2 completed rolls the join back; from step 2 on it resumes.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509

from hacore import pki
from hacore.agent.tls_paths import tls_files
from hacore.api.auth import JOIN_TOKEN_USER
from hacore.api.client import ApiClient, Verify
from hacore.api.errors import (
    ApiError,
    ApiUnreachableError,
    AuthenticationError,
    HttpsRequiredError,
    UnavailableError,
)
from hacore.backends.consensus import CONFIG_KEY
from hacore.cluster.bootstrap_token import api_url
from hacore.cluster.errors import JoinRefusedError
from hacore.cluster.operated_node import FormingNode
from hacore.cluster.operation_state import ClusterState, Phase, Step
from hacore.cluster.parts import LocalParts, local_parts
from hacore.cluster.progress import Progress
from hacore.cluster.record import ClusterRecord, reported_version
from hacore.cluster.requests import JoinCommand
from hacore.cluster.ticket import JoinRequest, Ticket, ticket_parts
from hacore.cluster.tls import CA_PART, remove_material
from hacore.config.node import NodeConfig
from hacore.config.options import deep_merge
from hacore.errors import HacoreError
from hacore.pki import node_grant
from hacore.pki.pem import parse_certificate

log = logging.getLogger(__name__)

STEPS = (
    ("ticket", "join ticket"),
    ("ca", "cluster CA"),
    ("store", "store membership"),
    ("agent", "agent started"),
    ("clone", "database copied"),
    ("streaming", "streaming standby"),
    ("files", "files copied"),
)
#: seconds for the active to answer a ticket request (a managed store may take a while to
#: accept a new member)
TICKET_TIMEOUT = 120.0
_NOTHING_CHANGED = "nothing was changed"
#: seconds for the unauthenticated look at whether a node speaks TLS, and at its CA
PROBE_TIMEOUT = 10.0
_WHERE_FINGERPRINT = "cluster start printed it, and hacore cluster ca prints it on any member"


def with_scheme(address: str, tls: bool) -> str:
    """``address`` (host, host:port or a URL) as the API URL this node must use."""
    parts = urlsplit(api_url(address))
    return f"{'https' if tls else 'http'}://{parts.netloc}"


def _unverified() -> ssl.SSLContext:
    # only ever used to fetch the public CA certificate, checked against its fingerprint
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def presented_ca(url: str) -> dict[str, Any] | None:
    """What the node at ``url`` presents as its cluster CA, over TLS without verification
    and without credentials; None when it does not speak TLS (or does not answer)."""
    with ApiClient(with_scheme(url, True), None, PROBE_TIMEOUT, _unverified()) as client:
        try:
            return client.cluster_ca()
        except (ApiUnreachableError, ApiError):
            return None


def trusted_ca(command: JoinCommand, tls: bool) -> x509.Certificate | None:
    """The CA this joiner pins its connections to (None: the cluster runs without TLS).

    Checked before any credential is sent: the node must speak TLS exactly when this one
    does, and present the CA whose fingerprint (or certificate) the operator gave.
    """
    https = with_scheme(command.active, True)
    presented = presented_ca(https)
    if not tls:
        if presented is not None:
            raise JoinRefusedError(
                f"{https} serves its API over TLS (its cluster runs with tls.enabled: true) but "
                f"this node has tls.enabled: false: every node of a cluster must agree; "
                f"{_NOTHING_CHANGED}"
            )
        return None
    if presented is None:
        _require_answer(with_scheme(command.active, False))
        raise JoinRefusedError(
            f"{with_scheme(command.active, False)} does not serve its API over TLS: either it "
            "is not a cluster member yet, or its cluster runs with tls.enabled: false while "
            f"this node has tls.enabled: true (every node must agree); {_NOTHING_CHANGED}"
        )
    expected = command.ca_fingerprint
    if command.ca_certificate is not None:
        try:
            given = parse_certificate(
                command.ca_certificate.encode("ascii", errors="replace"), "the given CA file"
            )
        except pki.TlsMaterialError as err:
            raise JoinRefusedError(f"{err}; {_NOTHING_CHANGED}") from None
        expected = pki.fingerprint(given)
    if expected is None:
        raise JoinRefusedError(
            f"{https} serves its API over TLS: give its cluster CA with --ca-fingerprint FP "
            f"({_WHERE_FINGERPRINT}) or --ca-file ca.crt; {_NOTHING_CHANGED}"
        )
    try:
        return pki.trust_ca_certificate(str(presented.get("ca_certificate") or ""), expected)
    except pki.TlsMaterialError as err:
        raise JoinRefusedError(
            f"{https} is not trusted: {err} ({_WHERE_FINGERPRINT}); {_NOTHING_CHANGED}"
        ) from None


def _require_answer(url: str) -> None:
    """Raise the "unreachable" refusal when nothing answers at ``url`` at all."""
    with ApiClient(url, None, PROBE_TIMEOUT) as client:
        try:
            client.status()
        except ApiUnreachableError as err:
            raise UnavailableError(f"{err}; is its agent running? {_NOTHING_CHANGED}") from None
        except ApiError:
            pass


def pinned(ca: x509.Certificate | None) -> Verify:
    """How the joiner's client checks the active: against ``ca`` alone, hostname included."""
    return pki.ssl_client_context(ca) if ca is not None else False


def find_active(address: str, auth: tuple[str, str], verify: Verify = False) -> ApiClient:
    """A client for the active node at ``address`` (or the active that node names).

    With a join token (no credentials that may read probes or views) the node at
    ``address`` is asked for the ticket directly; one that is not active says which is."""
    url = address.rstrip("/")
    client = ApiClient(url, auth, timeout=TICKET_TIMEOUT, verify=verify)
    if auth[0] == JOIN_TOKEN_USER:
        return client
    try:
        status = client.status()
    except ApiUnreachableError as err:
        client.close()
        raise UnavailableError(f"{err}; is its agent running? {_NOTHING_CHANGED}") from None
    except AuthenticationError:
        client.close()
        raise _wrong_credentials(url) from None
    if status.get("active") is True:
        return client
    try:
        other = _leader_url(client, status.get("leader"))
    finally:
        client.close()
    if other is not None and other != url:
        return find_active(other, auth, verify)
    what = status.get("state") or "not active"
    raise JoinRefusedError(
        f"{url} ({status.get('node')}) is not the active node (it is {what}): give the address "
        f"of the cluster's active node; {_NOTHING_CHANGED}"
    )


def _leader_url(client: ApiClient, leader: object) -> str | None:
    if not isinstance(leader, str):
        return None
    try:
        members = client.cluster().get("members", [])
    except (ApiError, ApiUnreachableError):
        return None
    for member in members:
        if isinstance(member, dict) and member.get("name") == leader and member.get("api_url"):
            return str(member["api_url"])
    return None


def _wrong_credentials(url: str, token: bool = False) -> JoinRefusedError:
    if token:
        return JoinRefusedError(
            f"the active node at {url} refused the join token: it is unknown, expired, already "
            "used, or issued for another node name or address (ask an admin for a new one: "
            f"hacore cluster nodes add NAME --host-ip ADDRESS); {_NOTHING_CHANGED}"
        )
    return JoinRefusedError(
        f"the active node at {url} refused the API credentials: give the cluster's API user and "
        f"password (--username/--password, or a CLI profile that holds them); {_NOTHING_CHANGED}"
    )


def join_request(config: NodeConfig, parts: LocalParts, api: str) -> JoinRequest:
    not_empty = parts.not_empty()
    return JoinRequest(
        name=config.node.name,
        host=config.node.host,
        api_url=api,
        version=reported_version(),
        empty=not not_empty,
        not_empty=not_empty,
        consensus_backend=config.consensus.backend,
        managed=config.consensus.managed,
        replication_backend=config.replication.backend if config.replication else "",
        store_identity=parts.store.identity() if parts.store is not None else None,
        extensions={part.name: part.request(config) for part in ticket_parts()},
    )


def ask_ticket(client: ApiClient, request: JoinRequest) -> Ticket:
    """The active's ticket; every failure is a refusal after which nothing changed here."""
    url = client.base_url
    try:
        return Ticket.parse(client.join_ticket(request.to_json()))
    except AuthenticationError:
        raise _wrong_credentials(url, client.join_token) from None
    except ApiUnreachableError as err:
        raise UnavailableError(
            f"lost the active node while asking to join: {err}; nothing was changed on this "
            "node (run the join again: the active lets the same node retry)"
        ) from None
    except UnavailableError as err:
        raise UnavailableError(f"{url} cannot grant a join now: {err}") from None
    except HttpsRequiredError:
        raise JoinRefusedError(
            f"{url} serves its API over TLS only but this node has tls.enabled: false: every "
            f"node of a cluster must agree; {_NOTHING_CHANGED}"
        ) from None
    except ApiError as err:
        raise JoinRefusedError(f"join refused by {url}: {err}") from None


def check_ticket_ca(ticket: Ticket, ca: x509.Certificate | None) -> None:
    """The CA in the ticket must be the one the joiner pinned: the same node presented both."""
    if ca is None:
        return
    part = ticket.extensions.get(CA_PART)
    try:
        if not isinstance(part, dict):
            raise pki.TlsMaterialError("the join ticket carries no cluster CA")
        granted = node_grant.ca_certificate_of(part)
    except pki.TlsMaterialError as err:
        raise JoinRefusedError(f"the join ticket's CA is unusable: {err}") from None
    if granted != ca:
        raise JoinRefusedError(
            f"the join ticket carries CA {pki.fingerprint(granted)}, not the pinned "
            f"{pki.fingerprint(ca)}"
        )


def joined_state(overrides: dict[str, Any], ticket: Ticket, active_url: str) -> ClusterState:
    record: ClusterRecord = ticket.record
    extra: dict[str, Any] = {
        "cluster": {"name": record.name, "namespace": record.namespace},
        "api": {
            "auth": {"username": ticket.api_username, "password_hash": ticket.api_password_hash},
            "status_requires_auth": ticket.status_requires_auth,
        },
    }
    if ticket.api_users:
        extra["api"]["users"] = [dict(user) for user in ticket.api_users]
    consensus = ticket.consensus
    if not consensus.get("managed"):
        settings = consensus.get("settings") or {}
        extra["consensus"] = {"backend": consensus["backend"], "managed": False, **settings}
    spec = consensus.get("spec")
    return ClusterState(
        phase=Phase.JOINING,
        record=record,
        overrides=deep_merge(overrides, extra),
        replication_user=ticket.replication_user,
        replication_password=ticket.replication_password,
        done=(Step.TICKET,),
        active_url=active_url,
        store_spec=dict(spec) if isinstance(spec, dict) else None,
        # the node key (a join by token) stays out of cluster.json: it is in pki/node
        extensions={k: v for k, v in ticket.extensions.items() if k != CA_PART},
    )


def run_join(
    node: FormingNode, parts: LocalParts, progress: Progress, client: ApiClient, ticket: Ticket
) -> None:
    """Steps 2-3; the service's monitor completes the join once this node streams."""
    state = node.require_state()
    config = node.config
    try:
        progress.begin("ca")
        for part in ticket_parts():
            part.accept(config, ticket.extensions.get(part.name, {}))
        progress.finish("ca", node.secure())
        parts = node.parts()
        progress.begin("store")
        node.start_keeper()
        if parts.store is not None:
            member = parts.store.join(state.store_spec or {})
            detail = f"{config.consensus.backend} server of this node joined at {member.client_url}"
        agent = node.make_agent()
        if parts.store is None:
            found = agent.consensus.get(CONFIG_KEY)
            record = ClusterRecord.decode(found.value) if found is not None else None
            if record is None or record.cluster_id != state.record.cluster_id:
                raise HacoreError(
                    f"the store this node reaches does not hold cluster {state.record.name}"
                )
            detail = f"external {config.consensus.backend} store reached"
        state = node.save(state.with_step(Step.STORE_JOINED))
        progress.finish("store", detail)
    except Exception as err:
        log.error("join failed: %s", err)
        progress.fail(f"{err}; {rollback(node, client, config)}")
        client.close()
        return
    client.close()
    progress.begin("agent")
    node.start_agent()
    node.save(state.with_step(Step.AGENT))
    progress.finish("agent")
    progress.begin("clone", f"waiting to copy the database from {ticket.active}")


def recover_store_join(
    node: FormingNode, state: ClusterState, config: NodeConfig
) -> ClusterState | None:
    """After a restart in the middle of the store join: go on when this node's store server
    had become a voting member, else leave the store and be empty again (the active cancels
    the pending join by itself later, or when the node retries)."""
    parts = local_parts(config, node.plugins, tls_files(config))
    store, name = parts.store, config.node.name
    if store is not None and parts.store_has_data():
        try:
            if not store.is_running():
                store.start()
            me = next((m for m in store.members() if m.name == name), None)
            if me is not None and me.voting:
                log.warning("the agent stopped during a join, after the store join: resuming")
                return node.save(state.with_step(Step.STORE_JOINED))
            store.remove_member(name)
        except HacoreError as err:
            log.warning("could not leave the store cleanly after an interrupted join: %s", err)
    log.warning(
        "the agent stopped during a join, before this node joined the store: the join is "
        "rolled back and this node is empty again (run cluster join again)"
    )
    parts.wipe_store()
    remove_material(config.node.data_dir)
    node.states.remove()
    return None


def rollback(node: FormingNode, client: ApiClient | None, config: NodeConfig) -> str:
    """Make this node empty again and ask the active to forget the join."""
    told = "the active was not told (it cancels the join by itself later, or on a retry)"
    if client is not None:
        try:
            client.join_ticket(
                {"action": "cancel", "name": config.node.name, "host": config.node.host}
            )
            told = "the active forgot the join"
        except (HacoreError, OSError) as err:
            told = f"the active could not be told ({err}); it cancels the join by itself later"
    try:
        node.reset_to_empty()
    except (HacoreError, OSError) as err:
        log.error("could not make this node empty again: %s", err)
        return (
            f"the join was abandoned but this node could not be made empty again ({err}): "
            f"stop its agent and empty {config.node.data_dir}; {told}"
        )
    return f"the join was rolled back: this node is empty again and {told}"
