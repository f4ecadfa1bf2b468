"""TLS between hacore and ZooKeeper: the client side (kazoo, four-letter words) and the files a
server needs.

kazoo's own TLS code always adds the system's trust store to the CA it is given, so a server
showing any publicly trusted certificate would pass. hacore's connections trust the configured
CA alone: :class:`TlsHandler` replaces kazoo's socket factory with one that wraps the socket in
a context built here (TLS 1.2+, hostname checked, strict X.509, the client certificate shown).
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

from kazoo.handlers.threading import SequentialThreadingHandler

from hacore.atomic_files import write_atomic
from hacore.backends.client_tls import ClientTls
from hacore.backends.records import TlsFiles

#: key and certificate in one file: the form ZooKeeper's PEM key store reads
SERVER_PEM = "zookeeper-server.pem"


def client_context(tls: ClientTls) -> ssl.SSLContext:
    """The context of every hacore connection to ZooKeeper: strict X.509 on top of what
    :meth:`ClientTls.context` gives (the configured CA alone, TLS 1.2+, hostname checked)."""
    return tls.context("ZooKeeper", strict_x509=True)


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
    return {"use_ssl": True, "handler": TlsHandler(client_context(tls))}


def write_server_pem(tls: TlsFiles, directory: Path) -> Path:
    """Key and certificate in one 0600 file, rewritten before each start so a renewed
    certificate is picked up. ZooKeeper reads the EC PKCS#8 key hacore.pki writes as is."""
    directory.mkdir(parents=True, exist_ok=True)
    data = Path(tls.key_file).read_bytes().rstrip(b"\n") + b"\n"
    data += Path(tls.cert_file).read_bytes()
    return write_atomic(directory / SERVER_PEM, data, 0o600)
