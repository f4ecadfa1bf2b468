"""TLS between hacore and ZooKeeper: the client side (kazoo, four-letter words) and the files a
server needs.

kazoo's own TLS code always adds the system's trust store to the CA it is given, so a server
showing any publicly trusted certificate would pass. hacore's connections trust the configured
CA alone: :class:`TlsHandler` replaces kazoo's socket factory with one that wraps the socket in
a context built here (TLS 1.2+, hostname checked, strict X.509, the client certificate shown).
"""

from __future__ import annotations

import os
import socket
import ssl
from pathlib import Path
from typing import Any

import attrs
from kazoo.handlers.threading import SequentialThreadingHandler

from hacore.backends.records import TlsFiles
from hacore.errors import ConfigError

#: key and certificate in one file: the form ZooKeeper's PEM key store reads
SERVER_PEM = "zookeeper-server.pem"


@attrs.frozen
class ClientTls:
    """What a client trusts (``ca_file``; None = the system's trust store) and shows."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @classmethod
    def from_node(cls, tls: TlsFiles) -> ClientTls:
        """The node's own material: trust the cluster CA, show the node certificate."""
        return cls(str(tls.ca_file), str(tls.cert_file), str(tls.key_file))

    def settings(self) -> dict[str, str]:
        """These files as consensus settings (``ca_file``, ``cert_file``, ``key_file``)."""
        return {k: v for k, v in attrs.asdict(self).items() if v is not None}

    def context(self) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.verify_flags |= ssl.VERIFY_X509_STRICT
            if self.cert_file:
                context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            files = ", ".join(f for f in (self.ca_file, self.cert_file, self.key_file) if f)
            raise ConfigError(f"cannot use the ZooKeeper TLS files {files}: {exc}") from None
        return context


class TlsHandler(SequentialThreadingHandler):  # type: ignore[misc]
    """kazoo's threading handler, its TLS connections made with one given context."""

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__()
        self.context = context

    def create_connection(
        self,
        address: tuple[str, int],
        hostname: str | None = None,
        timeout: float | None = None,
        use_ssl: bool = False,
        **_: Any,
    ) -> socket.socket:
        if not use_ssl:
            plain: socket.socket = super().create_connection(address, timeout=timeout)
            return plain
        return connect(self.context, address, hostname, timeout)


def connect(
    context: ssl.SSLContext,
    address: tuple[str, int],
    hostname: str | None,
    timeout: float | None,
) -> ssl.SSLSocket:
    """A TCP connection to ``address`` with the TLS handshake done (server checked)."""
    sock = socket.create_connection(address, timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return context.wrap_socket(sock, server_hostname=hostname or address[0])
    except BaseException:
        sock.close()
        raise


def kazoo_options(tls: ClientTls | None) -> dict[str, Any]:
    """Keyword arguments that make a ``KazooClient`` connect over TLS (none without ``tls``)."""
    if tls is None:
        return {}
    return {"use_ssl": True, "handler": TlsHandler(tls.context())}


def write_server_pem(tls: TlsFiles, directory: Path) -> Path:
    """Key and certificate in one 0600 file, rewritten before each start so a renewed
    certificate is picked up. ZooKeeper reads the EC PKCS#8 key hacore.pki writes as is."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / SERVER_PEM
    tmp = path.with_suffix(".tmp")
    data = Path(tls.key_file).read_bytes().rstrip(b"\n") + b"\n"
    data += Path(tls.cert_file).read_bytes()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return path
