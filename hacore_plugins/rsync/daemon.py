"""Each node's rsync server: one read-only module per mirrored directory.

Read-only, so a mirror pulling from the wrong node can never write to it; every module wants
the cluster's secret. With the cluster's TLS material the daemon has no socket of its own:
stunnel accepts TLS (a client certificate from the cluster CA is required) and runs one
``rsync --server --daemon`` per connection, so nothing on the node speaks rsync in clear text.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path

from hacore.atomic_files import write_atomic
from hacore.backends.processes import host_port
from hacore.errors import FilesyncError

#: the user name mirrors authenticate as
USER = "hacore"

#: stunnel splits ``execArgs`` on blanks and both configuration formats end a value at a
#: line break, so a path with either could add settings of its own choosing
_UNSAFE = re.compile(r"[\x00-\x1f\x7f\s]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def write_private(path: Path, text: str) -> None:
    """rsync refuses secrets files others can read; created 0600 from the start."""
    try:
        write_atomic(path, text, 0o600)
    except OSError as err:
        raise FilesyncError(f"cannot write {path}: {err.strerror}") from None


def checked(value: object, what: str, *, blanks: bool = True) -> str:
    """``value`` as text for a generated configuration line; refused when it holds a control
    character (or, with ``blanks=False``, white space), which would let it add lines."""
    text = str(value)
    if (_UNSAFE if not blanks else _CONTROL).search(text):
        kind = "control characters" if blanks else "white space or control characters"
        raise FilesyncError(f"rsync: {what} {text!r} holds {kind}; refusing to configure it")
    return text


def config_text(
    *,
    host: str | None,
    port: int | None,
    modules: Mapping[str, Path],
    log_file: Path,
    secrets_file: Path | None,
) -> str:
    """rsyncd.conf; without ``host``/``port`` for a daemon that stunnel starts per connection.

    Without ``secrets_file`` the modules ask for no password: only for a daemon behind
    stunnel, whose client certificate from the cluster CA is then the only key (a Syncthing
    node's seed, :mod:`hacore_plugins.syncthing.seed`, which shares no secret).

    As root, each module is a chroot, so a symlink in a served directory never leads the
    daemon out of it; munged symlinks in addition, as the rsync manual asks of a daemon
    that may not chroot.
    """
    root = os.getuid() == 0
    lines = ["# written by hacore; rewritten at every start"]
    if host is not None and port is not None:
        lines += [f"address = {checked(host, 'address')}", f"port = {port}"]
    lines += [
        f"log file = {checked(log_file, 'log file path')}",
        f"use chroot = {'yes' if root else 'no'}",
        # keep the daemon's own user: it must read every file of the directories it serves
        f"uid = {os.getuid()}",
        f"gid = {os.getgid()}",
        "reverse lookup = no",
        "munge symlinks = yes",
        "",
    ]
    for name, path in modules.items():
        lines += [
            f"[{checked(name, 'module name', blanks=False)}]",
            f"    path = {checked(path, 'directory')}",
            "    read only = yes",
            "    list = no",
        ]
        if secrets_file is not None:
            lines += [
                f"    auth users = {USER}",
                f"    secrets file = {checked(secrets_file, 'secrets file path')}",
                "    strict modes = yes",
            ]
        lines.append("")
    return "\n".join(lines)


def _tls_lines(cert_file: Path, key_file: Path, ca_file: Path, crl_file: Path | None) -> list[str]:
    """The certificate lines both ends of the tunnel share: this node's certificate, the
    cluster CA alone, the CRL when there is one, the whole chain checked."""
    crl = [] if crl_file is None else [f"CRLfile = {checked(crl_file, 'CRL path')}"]
    return [
        f"cert = {checked(cert_file, 'certificate path')}",
        f"key = {checked(key_file, 'key path')}",
        f"CAfile = {checked(ca_file, 'CA path')}",
        *crl,
        "verifyChain = yes",
    ]


def stunnel_text(
    *,
    host: str,
    port: int,
    rsync: str,
    rsyncd_conf: Path,
    log_file: Path,
    cert_file: Path,
    key_file: Path,
    ca_file: Path,
    crl_file: Path | None = None,
) -> str:
    """stunnel's configuration: TLS 1.2+, the node certificate, clients only with a
    certificate the cluster CA signed and (with ``crl_file``) not revoked by the cluster's
    CRL; each connection runs its own rsync daemon. stunnel reads the CRL when it loads its
    configuration (at start and on SIGHUP), not at each connection."""
    for value, what in ((rsync, "rsync binary"), (rsyncd_conf, "rsync home")):
        checked(value, what, blanks=False)
    listen = host_port(host, port)
    return "\n".join(
        [
            "# written by hacore; rewritten at every start",
            "foreground = yes",
            "pid =",
            "syslog = no",
            f"output = {checked(log_file, 'log file path')}",
            "debug = warning",
            "",
            "[rsync]",
            f"accept = {checked(listen, 'address')}",
            f"exec = {rsync}",
            f"execArgs = rsync --server --daemon --config={rsyncd_conf} .",
            *_tls_lines(cert_file, key_file, ca_file, crl_file),
            "requireCert = yes",
            "sslVersionMin = TLSv1.2",
            "TIMEOUTclose = 0",
            "",
        ]
    )


def stunnel_client_text(
    *,
    host: str,
    port: int,
    log_file: Path,
    cert_file: Path,
    key_file: Path,
    ca_file: Path,
    crl_file: Path | None = None,
) -> str:
    """stunnel as a client on its standard input and output (inetd mode: no ``accept``),
    what rsync's ``RSYNC_CONNECT_PROG`` runs: TLS 1.2+, only a server whose certificate the
    cluster CA signed for ``host`` (and, with ``crl_file``, did not revoke), this node's
    certificate shown. It moved data 1.4-2.2x faster than ``openssl s_client`` (load 10)."""
    target = host_port(host, port)
    try:
        ipaddress.ip_address(host)
        check = f"checkIP = {checked(host, 'address', blanks=False)}"
    except ValueError:
        check = f"checkHost = {checked(host, 'host name', blanks=False)}"
    return "\n".join(
        [
            "# written by hacore for one transfer",
            "syslog = no",
            f"output = {checked(log_file, 'log file path')}",
            "debug = warning",
            "client = yes",
            # rsync's small requests (one per file) otherwise wait for delayed ACKs: ~10%
            "socket = r:TCP_NODELAY=1",
            f"connect = {checked(target, 'address', blanks=False)}",
            *_tls_lines(cert_file, key_file, ca_file, crl_file),
            check,
            "sslVersionMin = TLSv1.2",
            "",
        ]
    )
