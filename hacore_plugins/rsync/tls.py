"""rsync over TLS: the node's stunnel in front of its daemon, and the mirror's ``openssl
s_client`` that reaches a source's.

Both ends trust the cluster CA alone and show their node certificate, and both check the
cluster's CRL: a removed node neither completes a handshake with a member's stunnel nor is
believed as a source. stunnel reads its ``CRLfile`` only when it loads its configuration, so
a watcher hands it each new CRL (:meth:`RsyncTls.watch_crl`); the client reads it at each
pull.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import shlex
import signal
import threading
from pathlib import Path

from hacore.backends.processes import DetachedProcess, host_port
from hacore.backends.records import TlsFiles
from hacore.errors import FilesyncError
from hacore.pki.revocation import crl_path
from hacore_plugins.rsync.daemon import stunnel_client_text, stunnel_text, write_private
from hacore_plugins.rsync.settings import RsyncSettings

log = logging.getLogger(__name__)

STUNNEL_CONFIG = "stunnel.conf"
STUNNEL_LOG = "stunnel.log"
STUNNEL_PID = "stunnel.pid"
#: how often stunnel's CRL file is looked at: a removal's CRL reaches every member's
#: ``crl.pem`` within seconds, and stunnel reads it only when it loads its configuration
CRL_POLL = 1.0
#: what openssl prints that explains nothing
_NOISE = ("Can't use SSL_get_servername", "depth=", "verify return:")
_ALERT = re.compile(r"(?:tlsv1\d?|sslv3|tlsv13) alert [a-z ]+")


def failure_reason(stderr: str, returncode: int) -> str:
    """The line that says why a pull failed, out of what rsync and openssl printed."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(_NOISE)]
    for line in lines:
        if line.startswith("@ERROR"):
            return line
    for line in lines:
        if line.startswith("verify error"):
            return f"TLS: the server's certificate is not trusted ({line})"
    for line in lines:
        alert = _ALERT.search(line)
        if alert:
            return f"TLS: the server refused this node ({alert.group(0)})"
    return lines[0] if lines else f"exit status {returncode}"


class RsyncTls:
    """One node's TLS for its rsync: ``stunnel`` is the server process it configures and
    reloads; ``rsyncd_conf`` the daemon configuration stunnel runs rsync with."""

    def __init__(
        self,
        tls: TlsFiles,
        config: RsyncSettings,
        *,
        node_name: str,
        host: str,
        home: Path,
        rsyncd_conf: Path,
        stunnel: DetachedProcess,
    ) -> None:
        self.tls = tls
        self.config = config
        self.node_name = node_name
        self.host = host
        self.home = home
        self.rsyncd_conf = rsyncd_conf
        self.stunnel = stunnel
        #: the CRL file as stunnel last loaded it (:meth:`_crl_seen`), None: absent
        self._crl_loaded: tuple[int, int, int] | None = None

    def check_material(self) -> None:
        for path in (self.tls.ca_file, self.tls.cert_file, self.tls.key_file):
            if not Path(path).is_file():
                raise FilesyncError(f"rsync over TLS: {path} does not exist (no node material yet)")
        for program in (self.config.stunnel_binary, self.config.openssl_binary):
            if not os.access(program, os.X_OK):
                raise FilesyncError(
                    f"rsync over TLS needs {program} (Debian packages stunnel4 and openssl)"
                )

    def argv(self) -> list[str]:
        """How to start the server: stunnel with its configuration."""
        return [self.config.stunnel_binary, str(self.home / STUNNEL_CONFIG)]

    # -- the server: stunnel ---------------------------------------------------------------

    def crl_file(self) -> Path | None:
        """The cluster's CRL beside the node's CA certificate (the agent keeps it there), None
        while there is none (a node of an earlier release, or before its first start)."""
        path = crl_path(self.tls.ca_file)
        return path if path.is_file() else None

    def _crl_seen(self) -> tuple[int, int, int] | None:
        path = self.crl_file()
        try:
            found = path.stat() if path is not None else None
        except OSError:
            return None
        return None if found is None else (found.st_ino, found.st_mtime_ns, found.st_size)

    def write_stunnel_config(self) -> None:
        seen = self._crl_seen()
        stunnel = stunnel_text(
            host=self.host,
            port=self.config.port,
            rsync=self.config.binary,
            rsyncd_conf=self.rsyncd_conf,
            log_file=self.home / STUNNEL_LOG,
            cert_file=self.tls.cert_file,
            key_file=self.tls.key_file,
            ca_file=self.tls.ca_file,
            crl_file=self.crl_file(),
        )
        write_private(self.home / STUNNEL_CONFIG, stunnel)
        self._crl_loaded = seen

    def reload(self) -> None:
        """stunnel reads its configuration (the node certificate, the CRL) again; to its pid
        alone, not the group, where the transfers of the moment run."""
        pid = self.stunnel.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)

    def watch_crl(self, stopping: threading.Event) -> None:
        """Until ``stopping``: a new CRL (a removal) is handed to stunnel by a SIGHUP, so a
        revoked certificate completes no new handshake a few seconds after the agent
        installed the CRL. The connections of the moment (their rsync daemons) run on."""
        while not stopping.wait(CRL_POLL):
            if self._crl_seen() == self._crl_loaded:
                continue
            try:
                self.write_stunnel_config()
                self.reload()
            except FilesyncError as err:
                log.warning(
                    "rsync: %s: the new revocation list is not loaded: %s", self.node_name, err
                )
            else:
                log.info(
                    "rsync: %s: stunnel reloaded the cluster's revocation list", self.node_name
                )

    # -- the client: openssl s_client ------------------------------------------------------

    def stunnel_connect_command(self, host: str, port: int, config: Path) -> str:
        """Like :meth:`connect_command`, through a stunnel client whose configuration is
        written to ``config`` (the newest CRL counts here too)."""
        text = stunnel_client_text(
            host=host,
            port=port,
            log_file=config.with_suffix(".log"),
            cert_file=self.tls.cert_file,
            key_file=self.tls.key_file,
            ca_file=self.tls.ca_file,
            crl_file=self.crl_file(),
        )
        write_private(config, text)
        return shlex.join([self.config.stunnel_binary, str(config)]).replace("%", "%%")

    def connect_command(self, host: str, port: int) -> str:
        """The ``RSYNC_CONNECT_PROG`` that reaches ``host`` over TLS: only the cluster CA
        is trusted (not the system's store), the certificate must name ``host``, and this
        node's certificate goes along as the client's. A source whose certificate the
        cluster revoked (a removed node posing as the active) is not believed either; the
        command is made at each pull, so the newest CRL counts."""
        try:
            ipaddress.ip_address(host)
            names = ["-verify_ip", host]
        except ValueError:
            names = ["-verify_hostname", host, "-servername", host]
        crl = self.crl_file()
        argv = [
            self.config.openssl_binary,
            "s_client",
            "-connect",
            host_port(host, port),
            "-CAfile",
            str(self.tls.ca_file),
            "-no-CApath",
            "-no-CAstore",
            "-cert",
            str(self.tls.cert_file),
            "-key",
            str(self.tls.key_file),
            "-verify_return_error",
            "-x509_strict",
            *([] if crl is None else ["-CRL", str(crl), "-crl_check"]),
            *names,
            "-quiet",
            "-verify_quiet",
        ]
        # rsync expands %H in it; the shell runs it
        return shlex.join(argv).replace("%", "%%")
