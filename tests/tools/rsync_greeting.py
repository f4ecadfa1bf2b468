"""Whether a client certificate gets through a member's stunnel to the rsync daemon: what the
revocation tests of the rsync file sync ask, with a real TLS handshake."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path


def rsync_greeting(ca_file: Path, cert_file: Path, key_file: Path, port: int) -> str:
    """Empty when a client showing ``cert_file`` gets the rsync daemon's greeting through
    stunnel at ``port``; else why not (with TLS 1.3 a refused client certificate shows as an
    alert at the first read, after the client's side of the handshake)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.load_cert_chain(cert_file, key_file)
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=20) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
        ):
            data = conn.recv(64)
    except OSError as err:  # ssl.SSLError among them
        return str(err) or type(err).__name__
    return "" if data.startswith(b"@RSYNCD") else f"no greeting: {data!r}"
