"""The node's TLS material as PostgreSQL and its tools read it, when the node runs with TLS.

The server, the WAL receiver, ``pg_basebackup`` and ``pg_rewind`` run as ``os_user``: they
cannot enter hacore's own 0700 TLS directory, and libpq and the server refuse a key that is
not theirs or is readable by others. So they get copies in ``node/tls/`` (0700, the key 0600,
all owned by ``os_user``), beside the other node-local files and never inside the data
directory that clones and rewinds copy between nodes. The copies are compared with the
originals whenever the node files are written (every start among them), so a renewed
certificate is picked up.
"""

from __future__ import annotations

import os
from pathlib import Path

from hacore.backends.records import TlsFiles
from hacore.errors import ReplicationError
from hacore.pki.errors import TlsMaterialError
from hacore.pki.revocation import crl_path
from hacore.pki.tls_files import CERT_MODE, KEY_MODE, private_dir, write_atomic
from hacore_plugins.postgresql.commands import ServerUser
from hacore_plugins.postgresql.layout import Layout

#: Server parameters hacore sets itself when the node runs with TLS.
TLS_PARAMETERS = frozenset({"ssl", "ssl_cert_file", "ssl_key_file", "ssl_ca_file", "ssl_crl_file"})

#: Members must show a certificate signed by the cluster CA, and still give the password.
#: Not ``verify-full``: with a password method it demands that the certificate's CN be the
#: role name, while every member logs in as the one replication role and its certificate
#: names the node (and ``map=`` is not allowed with scram-sha-256).
HBA_CLIENT_CERT = "clientcert=verify-ca"


def install(tls: TlsFiles, layout: Layout, user: ServerUser) -> bool:
    """Make ``node/tls/`` hold ``os_user``'s copies of ``tls``; True when any file changed."""
    owner = (user.uid, user.gid) if user.switch else None
    copies: tuple[tuple[Path, Path, int], ...] = (
        (tls.ca_file, layout.tls_ca, CERT_MODE),
        (tls.cert_file, layout.tls_cert, CERT_MODE),
        (tls.key_file, layout.tls_key, KEY_MODE),
    )
    crl = crl_path(tls.ca_file)
    if crl.exists():
        copies += ((crl, layout.tls_crl, CERT_MODE),)
    changed = False
    try:
        private_dir(layout.tls_dir, owner)
        for source, target, mode in copies:
            data = _read(source)
            if not _same(target, data, mode, owner):
                write_atomic(target, data, mode, owner)
                changed = True
    except TlsMaterialError as err:
        raise ReplicationError(f"cannot give PostgreSQL the node's TLS files: {err}") from None
    return changed


def _read(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise TlsMaterialError(f"cannot read {path}: {err.strerror}") from None


def _same(target: Path, data: bytes, mode: int, owner: tuple[int, int] | None) -> bool:
    try:
        st = target.stat()
        if st.st_mode & 0o777 != mode or (owner is not None and st.st_uid != owner[0]):
            return False
        return target.read_bytes() == data
    except OSError:
        return False


def server_parameters(layout: Layout) -> dict[str, str]:
    """The server's TLS files; the CRL (the certificates of removed nodes, docs/security.md)
    whenever the node has one, re-read at every reload."""
    parameters = {
        "ssl": "on",
        "ssl_cert_file": str(layout.tls_cert),
        "ssl_key_file": str(layout.tls_key),
        "ssl_ca_file": str(layout.tls_ca),
    }
    if layout.tls_crl.exists():
        parameters["ssl_crl_file"] = str(layout.tls_crl)
    return parameters


def client_options(ca_file: Path, cert_file: Path, key_file: Path) -> dict[str, str]:
    """libpq options of a connection to another member: TLS, the server checked against the
    cluster CA and the host name, this node's certificate shown."""
    return {
        "sslmode": "verify-full",
        "sslrootcert": os.fspath(ca_file),
        "sslcert": os.fspath(cert_file),
        "sslkey": os.fspath(key_file),
    }


def tool_options(layout: Layout) -> dict[str, str]:
    """Options for the clients that run as ``os_user`` (WAL receiver, pg_basebackup,
    pg_rewind): they read the server user's copies."""
    return client_options(layout.tls_ca, layout.tls_cert, layout.tls_key)


def hacore_options(tls: TlsFiles) -> dict[str, str]:
    """Options for hacore's own connections to another member: its original files."""
    return client_options(tls.ca_file, tls.cert_file, tls.key_file)
