"""The TLS a store client uses: which CA it trusts and which certificate it shows.

One record for every consensus plugin that talks TLS to its servers (etcd over HTTPS,
ZooKeeper over its secure client port), so each settings parser produces the same thing
from ``ca_file``/``cert_file``/``key_file`` or from the node's own material, and each client
builds its ``ssl`` context the same way: TLS 1.2 or newer, hostnames checked, and only the
configured CA trusted when one is given (the system's trust store otherwise, as for any
public server).
"""

from __future__ import annotations

import ssl

import attrs

from hacore.backends.records import TlsFiles
from hacore.errors import ConfigError


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

    def context(self, store: str, *, strict_x509: bool = True) -> ssl.SSLContext:
        """A client context: ``ca_file`` alone trusted (when given), TLS 1.2+, hostnames
        checked, the client certificate shown when there is one.

        ``strict_x509`` also refuses certificates that break X.509 rules newer OpenSSL and
        Python releases enforce anyway. ``store`` names the store in the error, a
        :class:`ConfigError` since the files come from the configuration.
        """
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            if strict_x509:
                context.verify_flags |= ssl.VERIFY_X509_STRICT
            if self.cert_file:
                context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as err:
            files = ", ".join(f for f in (self.ca_file, self.cert_file, self.key_file) if f)
            raise ConfigError(f"cannot use the {store} TLS files {files}: {err}") from None
        return context
