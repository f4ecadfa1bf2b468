"""How a ZooKeeper server is configured, launched and asked whether it serves.

Shared by the managed store (production) and the test harness, so both run the server the
same way. ZooKeeper rewrites its static configuration file and writes a new dynamic file
(``<dynamic>.<version>``) after every reconfig; the static file is therefore regenerated from
settings before each start, pointing at the newest dynamic file.

With TLS (:class:`ServerTls`) the server listens for clients only on its ``secureClientPort``,
which is static configuration: its ``server.N`` lines carry no client address at all.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
from collections.abc import Iterable, Sequence
from pathlib import Path

import attrs

from hacore.atomic_files import write_atomic

MAIN_CLASS = "org.apache.zookeeper.server.quorum.QuorumPeerMain"
#: zookeeper.jar names its other dependencies in its manifest; only the logging binding is extra.
DEFAULT_CLASSPATH = ("/usr/share/java/zookeeper.jar", "/usr/share/java/slf4j-simple.jar")
#: the Netty server TLS needs: its codec jar is missing from zookeeper.jar's manifest on Debian
TLS_CLASSPATH = ("/usr/share/java/netty-codec.jar",)
CLASSPATH_ENV = "HACORE_ZOOKEEPER_CLASSPATH"
DEFAULT_JVM_OPTIONS = ("-Xmx256m", "-XX:+UseSerialGC")
DYNAMIC_FILE = "zoo.cfg.dynamic"
#: snapshots (and the transaction logs they need) kept by the hourly purge; 3 is ZooKeeper's
#: minimum
AUTOPURGE_SNAPSHOTS = 3
AUTOPURGE_HOURS = 1
STATIC_FILE = "zoo.cfg"

_SERVER_LINE = re.compile(
    r"^server\.(?P<id>\d+)=(?P<host>[^:;]+):(?P<peer>\d+):(?P<election>\d+)"
    r"(?::(?P<role>participant|observer))?(?:;(?:(?P<chost>[^:;]+):)?(?P<cport>\d+))?$"
)


@attrs.frozen
class ServerEntry:
    """One ``server.N=`` line of a dynamic configuration; ``client_port`` 0: no plain port."""

    server_id: int
    host: str
    peer_port: int
    election_port: int
    client_port: int
    role: str = "participant"
    client_host: str = ""

    @property
    def client_address(self) -> str:
        host = self.client_host if self.client_host not in ("", "0.0.0.0") else self.host
        return f"{host}:{self.client_port}"

    @property
    def peer_address(self) -> str:
        return f"{self.host}:{self.peer_port}:{self.election_port}"

    def line(self) -> str:
        server = f"server.{self.server_id}={self.host}:{self.peer_port}:{self.election_port}"
        if not self.client_port:
            return f"{server}:{self.role}"
        return f"{server}:{self.role};{self.client_host or self.host}:{self.client_port}"

    @classmethod
    def parse(cls, line: str) -> ServerEntry:
        match = _SERVER_LINE.match(line.strip().replace(" ", ""))
        if match is None:
            raise ValueError(f"not a ZooKeeper server line: {line!r}")
        return cls(
            server_id=int(match["id"]),
            host=match["host"],
            peer_port=int(match["peer"]),
            election_port=int(match["election"]),
            client_port=int(match["cport"] or 0),
            role=match["role"] or "participant",
            client_host=match["chost"] or "",
        )


@attrs.frozen
class DynamicConfig:
    """The ensemble as ZooKeeper reports it in ``/zookeeper/config`` or a dynamic file."""

    servers: tuple[ServerEntry, ...]
    version: str = ""

    @classmethod
    def parse(cls, text: str) -> DynamicConfig:
        servers: list[ServerEntry] = []
        version = ""
        for raw in text.splitlines():
            line = raw.strip()
            if line.startswith("server."):
                servers.append(ServerEntry.parse(line))
            elif line.startswith("version="):
                version = line.partition("=")[2]
        return cls(tuple(sorted(servers, key=lambda s: s.server_id)), version)

    def render(self) -> str:
        return "".join(f"{server.line()}\n" for server in self.servers)

    def server(self, server_id: int) -> ServerEntry | None:
        return next((s for s in self.servers if s.server_id == server_id), None)

    def client_addresses(self) -> list[str]:
        """The plain client addresses (none for servers serving TLS clients only)."""
        return [server.client_address for server in self.servers if server.client_port]


@attrs.frozen
class ServerTls:
    """TLS for quorum and clients: ``key_store`` holds key and certificate (PEM), the
    ``trust_store`` the CA; clients connect to ``client_host:client_port`` only, with a
    certificate from that CA."""

    key_store: Path
    trust_store: Path
    client_host: str
    client_port: int
    #: refuse revoked certificates, on the client and the quorum ports
    #: (:mod:`hacore_plugins.zookeeper.revocation`)
    check_crl: bool = False

    def config_lines(self) -> list[str]:
        stores = []
        for prefix in ("ssl", "ssl.quorum"):
            stores += [
                f"{prefix}.keyStore.location={self.key_store}",
                f"{prefix}.keyStore.type=PEM",
                f"{prefix}.trustStore.location={self.trust_store}",
                f"{prefix}.trustStore.type=PEM",
                f"{prefix}.clientAuth=need",
            ]
            if self.check_crl:
                stores.append(f"{prefix}.crl=true")
        return [
            "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory",
            f"secureClientPort={self.client_port}",
            f"secureClientPortAddress={self.client_host}",
            "sslQuorum=true",
            *stores,
        ]


@attrs.frozen
class ServerLimits:
    """Timing of one server: session timeouts outside [min, max] are clamped by ZooKeeper."""

    tick_ms: int = 250
    min_session_ms: int = 500
    max_session_ms: int = 60_000
    init_limit: int = 40
    sync_limit: int = 20


def newest_dynamic_file(conf_dir: Path) -> Path | None:
    """The dynamic file ZooKeeper wrote last (``zoo.cfg.dynamic.<hex version>``), else ours."""
    versioned: list[tuple[int, Path]] = []
    for path in conf_dir.glob(f"{DYNAMIC_FILE}.*"):
        try:
            versioned.append((int(path.suffix[1:], 16), path))
        except ValueError:
            continue
    if versioned:
        return max(versioned)[1]
    plain = conf_dir / DYNAMIC_FILE
    return plain if plain.exists() else None


def write_static_config(
    conf_dir: Path,
    *,
    data_dir: Path,
    dynamic_file: Path,
    limits: ServerLimits,
    skip_acl: bool = False,
    four_letter_words: Iterable[str] = ("srvr", "ruok"),
    max_client_connections: int = 60,
    tls: ServerTls | None = None,
) -> Path:
    """(Re)write ``zoo.cfg``: the settings that never change at runtime."""
    lines = [
        f"tickTime={limits.tick_ms}",
        f"initLimit={limits.init_limit}",
        f"syncLimit={limits.sync_limit}",
        f"minSessionTimeout={limits.min_session_ms}",
        f"maxSessionTimeout={limits.max_session_ms}",
        f"dataDir={data_dir}",
        f"maxClientCnxns={max_client_connections}",
        "admin.enableServer=false",
        # A one-server ensemble must still run the quorum code, or it cannot grow.
        "standaloneEnabled=false",
        "reconfigEnabled=true",
        f"4lw.commands.whitelist={','.join(four_letter_words)}",
        f"dynamicConfigFile={dynamic_file}",
        # Snapshots and transaction logs are never removed otherwise: keep the newest few
        # and purge the rest every hour, so a member's disk use stays bounded.
        f"autopurge.snapRetainCount={AUTOPURGE_SNAPSHOTS}",
        f"autopurge.purgeInterval={AUTOPURGE_HOURS}",
    ]
    if skip_acl:
        lines.append("skipACL=yes")
    if tls is not None:
        lines += tls.config_lines()
    return write_atomic(conf_dir / STATIC_FILE, "".join(f"{line}\n" for line in lines))


def write_myid(data_dir: Path, server_id: int) -> None:
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    (data_dir / "myid").write_text(f"{server_id}\n")


def classpath(tls: bool = False) -> str:
    extra = tuple(jar for jar in TLS_CLASSPATH if Path(jar).exists()) if tls else ()
    return os.environ.get(CLASSPATH_ENV) or ":".join((*DEFAULT_CLASSPATH, *extra))


def java_executable() -> str | None:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and os.access(Path(java_home, "bin", "java"), os.X_OK):
        return str(Path(java_home, "bin", "java"))
    return shutil.which("java")


def missing_runtime() -> str | None:
    """Why no ZooKeeper server can be started here, or None."""
    if java_executable() is None:
        return "no java executable on PATH (install a JRE)"
    jar = classpath().split(":")[0]
    if not Path(jar).exists():
        return f"{jar} not found (install the zookeeper package or set ${CLASSPATH_ENV})"
    return None


def server_argv(
    static_config: Path,
    *,
    jvm_options: Sequence[str] = DEFAULT_JVM_OPTIONS,
    system_properties: dict[str, str] | None = None,
    tls: bool = False,
) -> list[str]:
    java = java_executable() or "java"
    props = {
        "java.net.preferIPv4Stack": "true",
        "zookeeper.admin.enableServer": "false",
        "org.slf4j.simpleLogger.showDateTime": "true",
        **(system_properties or {}),
    }
    return [
        java,
        *jvm_options,
        *(f"-D{key}={value}" for key, value in props.items()),
        "-cp",
        classpath(tls),
        MAIN_CLASS,
        str(static_config),
    ]


def four_letter_word(
    address: str, word: str, timeout: float = 1.0, context: ssl.SSLContext | None = None
) -> str:
    """Send a four-letter admin command (``srvr``, ``ruok``) and return the answer; over TLS
    when a ``context`` is given (the secure client port answers them too)."""
    host, _, port = address.rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=timeout)
    if context is not None:
        try:
            sock = context.wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
    with sock:
        sock.settimeout(timeout)
        sock.sendall(word.encode())
        chunks: list[bytes] = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


def server_mode(
    address: str, timeout: float = 1.0, context: ssl.SSLContext | None = None
) -> str | None:
    """``leader``, ``follower`` or ``observer`` while the server serves clients, else None."""
    try:
        answer = four_letter_word(address, "srvr", timeout, context)
    except OSError:
        return None
    for line in answer.splitlines():
        if line.startswith("Mode:"):
            return line.partition(":")[2].strip()
    return None


def answers(address: str, timeout: float = 1.0, context: ssl.SSLContext | None = None) -> bool:
    """True when the JVM is up and listening, even without a quorum."""
    try:
        return four_letter_word(address, "ruok", timeout, context).startswith("imok")
    except OSError:
        return False
