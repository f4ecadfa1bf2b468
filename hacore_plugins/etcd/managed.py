"""This node's own etcd server, for clusters where hacore runs the store itself.

A newcomer joins as a **learner**: it receives the log without voting, so a slow or failed
join never costs the cluster its quorum; it is promoted to voter only once etcd says it has
caught up. Everything needed to start the server again (name, URLs, token, initial cluster)
is kept in ``etcd.json`` in the data directory, next to the pid file and the log.

With the node's TLS material the server speaks https only, on both ports, and demands a
certificate from the cluster CA of every client and peer; it cannot switch in place between
TLS and plain text, since the peer URLs it advertises are part of the cluster's membership.

Moving the store's leadership off a member (before its removal, or while its node is
active) is :mod:`hacore_plugins.etcd.leadership`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import signal
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import httpx

from hacore.atomic_files import write_atomic
from hacore.backends.client_tls import ClientTls
from hacore.backends.consensus import ManagedStore
from hacore.backends.log_files import LogTrimmer
from hacore.backends.processes import DetachedProcess, pauses, port_taken
from hacore.backends.records import StoreMember, TlsFiles
from hacore.errors import HacoreError, ManagedStoreError, StoreUnavailableError
from hacore_plugins.etcd.client import (
    EtcdClient,
    EtcdMember,
    EtcdRequestError,
    https_verify,
)
from hacore_plugins.etcd.command_line import etcd_argv, initial_cluster, url
from hacore_plugins.etcd.leadership import hand_over_leadership, move_leadership_off
from hacore_plugins.etcd.settings import DEFAULT_BINARY as DEFAULT_BINARY
from hacore_plugins.etcd.settings import EtcdManagedSettings

T = TypeVar("T")
log = logging.getLogger(__name__)

STATE_FILE = "etcd.json"
LOG_FILE = "etcd.log"
PID_FILE = "etcd.pid"
#: seconds between two attempts while the local server comes up (starts, catches up,
#: becomes a voter): from 20 ms, as a joining member is often ready well before a fixed
#: 0.2 s (the join waited for it), up to 0.2 s (:func:`~hacore.backends.processes.pauses`)
RETRY_FIRST = 0.02
RETRY_MAX = 0.2
#: files of a failed attempt that do not make the data directory "in use"
_LEFTOVERS = frozenset({LOG_FILE})


@contextlib.contextmanager
def _failing(what: str) -> Iterator[None]:
    """Store errors as the managed-store error a caller of this module expects."""
    try:
        yield
    except (StoreUnavailableError, EtcdRequestError) as err:
        raise ManagedStoreError(f"{what}: {err}") from None


class EtcdManagedStore(ManagedStore):
    """Settings: ``client_port`` (2379), ``peer_port`` (2380), ``heartbeat_interval`` and
    ``election_timeout`` in ms (100, 1000), ``start_timeout`` in s (60), ``etcd_binary``.

    ``tls``: the node's certificate, key and cluster CA; the server then uses https for
    client and peer traffic and requires client certificates signed by that CA.
    """

    accepts_tls: ClassVar[bool] = True
    moves_leadership: ClassVar[bool] = True

    def __init__(
        self,
        settings: Mapping[str, Any],
        *,
        name: str,
        host: str,
        data_dir: Path,
        tls: TlsFiles | None = None,
    ) -> None:
        super().__init__(settings, name=name, host=host, data_dir=data_dir)
        self.tls = tls
        self.scheme = "https" if tls else "http"
        self.client_tls = ClientTls.from_node(tls) if tls else None
        config = EtcdManagedSettings.parse(self.settings)
        self.client_port = config.client_port
        self.peer_port = config.peer_port
        self.heartbeat_ms = config.heartbeat_ms
        self.election_ms = config.election_ms
        self.start_timeout = config.start_timeout
        self.binary = config.binary
        self.process = DetachedProcess(
            f"etcd server {name}",
            log_path=self.data_dir / LOG_FILE,
            pid_path=self.data_dir / PID_FILE,
            executable_name=Path(self.binary).name,
        )
        #: etcd 3.4 cannot rotate its own log: it is bounded by copy and truncate
        self.log_trimmer = LogTrimmer(self.process.log_path)
        #: held while members are added or removed: the leadership is not moved meanwhile
        #: (a removal first moves the leadership off the leaving member, and a move back onto
        #: it before the removal would leave the store without a leader)
        self._membership = threading.Lock()

    @classmethod
    def validate_settings(cls, settings: Mapping[str, Any]) -> None:
        EtcdManagedSettings.parse(settings)

    @property
    def client_url(self) -> str:
        return url(self.host, self.client_port, self.scheme)

    @property
    def peer_url(self) -> str:
        return url(self.host, self.peer_port, self.scheme)

    @property
    def etcd_data(self) -> Path:
        return self.data_dir / "data"

    def identity(self) -> StoreMember:
        return StoreMember(
            name=self.name, peer_url=self.peer_url, client_url=self.client_url, voting=False
        )

    # -- local state ---------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.data_dir / STATE_FILE).read_text())
        except FileNotFoundError:
            raise ManagedStoreError(
                f"no etcd server was set up in {self.data_dir}: start a cluster or join one first"
            ) from None
        except (OSError, ValueError) as err:
            raise ManagedStoreError(f"cannot read {self.data_dir / STATE_FILE}: {err}") from None
        return data

    def _save_state(self, state: Mapping[str, Any]) -> None:
        write_atomic(self.data_dir / STATE_FILE, json.dumps(state, indent=2, sort_keys=True))

    def _same_transport(self, state: Mapping[str, Any]) -> None:
        """Refuse to run a server set up with TLS without it, or the other way round."""
        was_tls = bool(state.get("tls", False))
        if was_tls != (self.tls is not None):
            then, now = ("with", "without") if was_tls else ("without", "with")
            raise ManagedStoreError(
                f"the etcd server in {self.data_dir} was set up {then} TLS and this node now "
                f"runs {now} it: set tls.enabled back, or remove the node and join it again"
            )

    def _update_state(self, **changes: Any) -> None:
        self._save_state({**self._state(), **changes})

    def _refuse_used_data_dir(self) -> None:
        if self.data_dir.exists():
            used = sorted(p.name for p in self.data_dir.iterdir() if p.name not in _LEFTOVERS)
            if used:
                raise ManagedStoreError(
                    f"data directory {self.data_dir} is not empty ({', '.join(used[:5])}): "
                    "this node already has store data; remove it or pick another directory"
                )
        if self.process.running():
            raise ManagedStoreError(f"an etcd server already runs from {self.data_dir}")

    def _refuse_taken_ports(self) -> None:
        for what, port in (("client", self.client_port), ("peer", self.peer_port)):
            if port_taken(self.host, port):
                raise ManagedStoreError(
                    f"etcd {what} port {port} on {self.host} is already in use by another process"
                )

    def _forget_local_server(self) -> None:
        """Undo a failed bootstrap or join: the data directory is as it was before."""
        with contextlib.suppress(HacoreError):
            self.process.stop(signal.SIGKILL, timeout=5)
        shutil.rmtree(self.etcd_data, ignore_errors=True)
        for name in (STATE_FILE, PID_FILE):
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / name).unlink()

    # -- the local server ----------------------------------------------------------------

    def _launch(self, state: Mapping[str, Any]) -> None:
        if self.tls is not None:
            for path in (self.tls.ca_file, self.tls.cert_file, self.tls.key_file):
                if not Path(path).is_file():
                    raise ManagedStoreError(f"etcd server {self.name}: no TLS file {path}")
        self.etcd_data.mkdir(mode=0o700, parents=True, exist_ok=True)
        argv = etcd_argv(
            self.binary,
            name=self.name,
            data_dir=self.etcd_data,
            host=self.host,
            client_port=self.client_port,
            peer_port=self.peer_port,
            initial_cluster=state["initial_cluster"],
            token=state["token"],
            state=state["cluster_state"],
            heartbeat_ms=self.heartbeat_ms,
            election_ms=self.election_ms,
            tls=self.tls,
        )
        self.log_trimmer.now()
        try:
            self.process.start(argv, cwd=self.data_dir, umask=0o077)
        except OSError as err:
            raise ManagedStoreError(f"cannot run {self.binary}: {err.strerror}") from None

    def _died(self, doing: str) -> ManagedStoreError:
        code = self.process.exit_code()
        status = f" (exit status {code})" if code is not None else ""
        return ManagedStoreError(
            f"etcd server {self.name} exited while {doing}{status}; last lines of "
            f"{self.process.log_path}:\n{self.process.log_tail()}"
        )

    def _until(self, doing: str, attempt: Callable[[], T | None], timeout: float) -> T:
        """Retry ``attempt`` until it returns a value, the server dies, or ``timeout``."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        waits = pauses(RETRY_FIRST, RETRY_MAX)
        while True:
            if not self.process.running():
                raise self._died(doing)
            try:
                result = attempt()
                if result is not None:
                    return result
            except ManagedStoreError:
                raise
            except (HacoreError, httpx.HTTPError) as err:
                last = str(err)
                log.debug("etcd server %s %s: %s", self.name, doing, last)
            if time.monotonic() > deadline:
                raise ManagedStoreError(
                    f"etcd server {self.name} was not done {doing} after {timeout:.0f}s "
                    f"({last}); last lines of {self.process.log_path}:\n{self.process.log_tail()}"
                )
            time.sleep(next(waits))

    def _serves(self) -> bool | None:
        """A linearizable read on the local member: it has a leader and is a voter."""
        with EtcdClient([self.client_url], timeout=2.0, tls=self.client_tls) as client:
            client.range(b"/hacore/")
        return True

    def _client(self, endpoints: Sequence[str] = (), timeout: float = 5.0) -> EtcdClient:
        known: list[str] = [self.client_url]
        with contextlib.suppress(ManagedStoreError):
            known += self._state().get("endpoints", [])
        known += endpoints
        return EtcdClient(list(dict.fromkeys(known)), timeout=timeout, tls=self.client_tls)

    # -- ManagedStore --------------------------------------------------------------------

    def bootstrap(self) -> StoreMember:
        self._refuse_used_data_dir()
        self._refuse_taken_ports()
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        state = {
            "name": self.name,
            "token": f"hacore-{uuid.uuid4().hex}",
            "initial_cluster": f"{self.name}={self.peer_url}",
            "cluster_state": "new",
            "endpoints": [self.client_url],
            "added": {},
            "tls": self.tls is not None,
        }
        self._save_state(state)
        try:
            self._launch(state)
            self._until("starting", self._serves, self.start_timeout)
        except BaseException:
            self._forget_local_server()
            raise
        return StoreMember(name=self.name, peer_url=self.peer_url, client_url=self.client_url)

    def add_member(self, member: StoreMember) -> dict[str, Any]:
        with (
            self._membership,
            _failing(f"cannot add {member.name} to the store"),
            self._client() as client,
        ):
            members = client.member_list()
            new = self._existing_entry(members, member)
            if new is None:
                # etcd refuses changes until every voter has been connected for 5 s.
                deadline = client.deadline(self.start_timeout)
                new, members = self._add_learner(client, member, deadline)
        self._remember_endpoints(members)
        state = self._state()
        self._update_state(added={**state.get("added", {}), member.name: str(new.id)})
        return {
            "name": member.name,
            "member_id": str(new.id),
            "peer_url": member.peer_url,
            "initial_cluster": initial_cluster(members, new.id, member.name),
            "token": state["token"],
            "endpoints": [u for m in members for u in m.client_urls],
        }

    def _add_learner(
        self, client: EtcdClient, member: StoreMember, deadline: float
    ) -> tuple[EtcdMember, list[EtcdMember]]:
        """MemberAdd, with the two answers that do not mean "refused".

        etcd names a new member ``sha1(peer URLs, cluster, current whole second)`` and refuses
        a removed ID forever, answering "member not found": a join rolled back and retried
        within the same second asks for exactly that ID, and the next second gives a new one.
        The client resends a request that timed out; when the first one was applied, the
        resend hears "member ID already exist" (same second) or "Peer URLs already exists":
        that entry is ours to adopt.
        """
        while True:
            try:
                return client.member_add([member.peer_url], learner=True, deadline=deadline)
            except EtcdRequestError as err:
                text = str(err)
                if "too many learner" in text:
                    raise ManagedStoreError(
                        "another node is still joining the store (etcd accepts one learner "
                        "at a time): retry once it has finished"
                    ) from None
                if "already exist" in text:
                    members = client.member_list(deadline=max(deadline, client.deadline()))
                    adopted = self._existing_entry(members, member)
                    if adopted is not None:
                        log.info("etcd had applied the add of %s already: adopted", member.name)
                        return adopted, members
                if "member not found" in text and time.monotonic() < deadline:
                    log.info(
                        "etcd refused the ID it derived for %s in this second (a member removed "
                        "in the same second had it): asking again in the next second",
                        member.name,
                    )
                    time.sleep(1.05 - time.time() % 1.0)
                    continue
                raise ManagedStoreError(f"etcd refused to add {member.name}: {err}") from None

    @staticmethod
    def _existing_entry(members: Sequence[EtcdMember], member: StoreMember) -> EtcdMember | None:
        """The entry of a newcomer added before (a retried join), or None."""
        for m in members:
            if member.peer_url in m.peer_urls:
                if m.name in ("", member.name) and m.is_learner:
                    return m
                raise ManagedStoreError(
                    f"peer URL {member.peer_url} already belongs to store member "
                    f"{m.name or '(not started)'}; remove it first"
                )
            if m.name == member.name:
                raise ManagedStoreError(
                    f"the store already has a member named {member.name} at "
                    f"{', '.join(m.peer_urls)}; remove it first"
                )
        return None

    def join(self, spec: Mapping[str, Any]) -> StoreMember:
        try:
            member_id = int(spec["member_id"])
            endpoints = [str(e) for e in spec["endpoints"]]
            state: dict[str, Any] = {
                "name": self.name,
                "token": str(spec["token"]),
                "initial_cluster": str(spec["initial_cluster"]),
                "cluster_state": "existing",
                "endpoints": endpoints,
                "added": {},
                "tls": self.tls is not None,
            }
        except (KeyError, TypeError, ValueError) as err:
            raise ManagedStoreError(f"the etcd join material is incomplete ({err})") from None
        self._same_scheme(str(spec.get("peer_url", "")))
        if spec.get("name") != self.name or spec.get("peer_url") != self.peer_url:
            raise ManagedStoreError(
                f"the etcd join material is for {spec.get('name')} at {spec.get('peer_url')}, "
                f"not for this node ({self.name} at {self.peer_url})"
            )
        self._refuse_used_data_dir()
        self._refuse_taken_ports()
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._save_state(state)
        try:
            self._launch(state)
            with self._client(endpoints) as client:
                self._until(
                    "catching up", lambda: self._promote(client, member_id), self.start_timeout
                )
            self._until("becoming a voter", self._serves, self.start_timeout)
        except BaseException:
            self._forget_local_server()
            raise
        return StoreMember(name=self.name, peer_url=self.peer_url, client_url=self.client_url)

    def _same_scheme(self, peer_url: str) -> None:
        scheme = peer_url.partition("://")[0]
        if scheme in ("http", "https") and scheme != self.scheme:
            store, node = ("with", "without") if scheme == "https" else ("without", "with")
            raise ManagedStoreError(
                f"the store runs {store} TLS and this node {node} it: every node of a cluster "
                "needs the same tls.enabled"
            )

    @staticmethod
    def _promote(client: EtcdClient, member_id: int) -> bool | None:
        """True once a voter; None while etcd says the learner is still behind."""
        try:
            client.member_promote(member_id)
        except EtcdRequestError as err:
            text = str(err)
            if "in sync" in text:
                return None
            if "can only promote a learner member" in text:
                return True  # already promoted by an earlier attempt
            if "member not found" in text:
                raise ManagedStoreError(
                    "this node was removed from the store while it was joining"
                ) from None
            raise
        return True

    def remove_member(self, name: str) -> None:
        with (
            self._membership,
            _failing(f"cannot remove {name} from the store"),
            self._client() as client,
        ):
            members = client.member_list()
            added = {}
            with contextlib.suppress(ManagedStoreError):
                added = self._state().get("added", {})
            target = next((m for m in members if m.name == name), None)
            if target is None and name in added:
                target = next((m for m in members if str(m.id) == added[name]), None)
            if target is None:
                return
            if len(members) == 1:
                raise ManagedStoreError(f"{name} is the store's only member: it cannot be removed")
            hand_over_leadership(client, target, members, self.name, self.client_tls)
            try:
                client.member_remove(target.id)
            except EtcdRequestError as err:
                if "member not found" not in str(err):
                    raise ManagedStoreError(f"etcd refused to remove {name}: {err}") from None
        if name in added:
            with contextlib.suppress(ManagedStoreError, OSError):
                self._update_state(added={k: v for k, v in added.items() if k != name})
        if name == self.name:
            # A removed member cannot serve again from its data: leave the node ready to rejoin.
            self._forget_local_server()

    def move_leadership_off(self) -> str | None:
        """Hand this member's leadership to a caught-up voter that follows it
        (:func:`~hacore_plugins.etcd.leadership.move_leadership_off`); never while members
        are added or removed."""
        if not self._membership.acquire(blocking=False):
            return None
        try:
            return move_leadership_off(self.client_url, self.name, self.client_tls)
        finally:
            self._membership.release()

    def members(self) -> tuple[StoreMember, ...]:
        with _failing("cannot list the store's members"), self._client() as client:
            members = client.member_list()
        self._remember_endpoints(members)
        names = {v: k for k, v in self._added().items()}
        verify = https_verify(self.client_tls)
        return tuple(
            sorted(
                (
                    StoreMember(
                        name=m.name or names.get(str(m.id), ""),
                        peer_url=m.peer_urls[0] if m.peer_urls else "",
                        client_url=m.client_urls[0] if m.client_urls else "",
                        voting=not m.is_learner,
                        healthy=bool(m.client_urls) and _healthy(m.client_urls[0], verify),
                    )
                    for m in members
                ),
                key=lambda m: m.name,
            )
        )

    def _added(self) -> dict[str, str]:
        with contextlib.suppress(ManagedStoreError):
            return dict(self._state().get("added", {}))
        return {}

    def _remember_endpoints(self, members: Sequence[EtcdMember]) -> None:
        endpoints = [u for m in members for u in m.client_urls]
        with contextlib.suppress(ManagedStoreError, OSError):
            if endpoints and endpoints != self._state().get("endpoints"):
                self._update_state(endpoints=endpoints)

    def start(self) -> None:
        state = self._state()
        self._same_transport(state)
        if not (self.etcd_data / "member").is_dir():
            raise ManagedStoreError(
                f"no etcd data in {self.etcd_data}: this node must join the store again"
            )
        if self.process.running():
            return
        self._refuse_taken_ports()
        self._launch(state)
        # Answers without a quorum too: the other members may still be down.
        with EtcdClient([self.client_url], timeout=2.0, tls=self.client_tls) as client:
            self._until("starting", client.member_list, self.start_timeout)

    def stop(self) -> None:
        try:
            self.process.stop()
        except HacoreError as err:
            raise ManagedStoreError(str(err)) from None

    def client_settings(self) -> dict[str, Any]:
        """The endpoints of every member; with TLS also the node's files, so the settings
        reach the store on their own, with or without the node's ``tls`` given beside them."""
        if self.is_running():
            with contextlib.suppress(HacoreError), self._client(timeout=2.0) as client:
                self._remember_endpoints(client.member_list())
        endpoints = [self.client_url]
        with contextlib.suppress(ManagedStoreError):
            endpoints += self._state().get("endpoints", [])
        settings: dict[str, Any] = {"endpoints": list(dict.fromkeys(endpoints))}
        if self.tls is not None:
            settings["ca_file"] = str(self.tls.ca_file)
            settings["cert_file"] = str(self.tls.cert_file)
            settings["key_file"] = str(self.tls.key_file)
        return settings

    def is_running(self) -> bool:
        self.log_trimmer.tick()  # asked every loop by the agent's supervisor
        return self.process.running()


def _healthy(client_url: str, verify: ssl.SSLContext | bool) -> bool:
    try:
        resp = httpx.get(f"{client_url}/health", timeout=1.0, verify=verify, trust_env=False)
        return bool(resp.json().get("health") == "true")
    except (httpx.HTTPError, ValueError):
        return False
