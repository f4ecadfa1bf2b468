"""The node service's API servers: one on node.yaml's address and, when a start or join
advertises another address of this machine, one on that address too."""

from __future__ import annotations

import logging
import ssl

from hacore.api.facade import AgentFacade
from hacore.api.server import ApiServer, PlainHttp
from hacore.config.node import ApiSettings
from hacore.errors import HacoreError

log = logging.getLogger("hacore.cluster")


class NodeListeners:
    """The servers of one node's API, by host; each serves the same facade."""

    def __init__(self, facade: AgentFacade, port: int) -> None:
        self.facade = facade
        self.port = port
        self._servers: dict[str, ApiServer] = {}

    def listen(
        self,
        hosts: tuple[str, str],
        settings: ApiSettings,
        context: ssl.SSLContext | None,
        plain: PlainHttp,
    ) -> None:
        """Serve on ``hosts`` (node.yaml's, then the advertised one) with these credentials
        and TLS; a server already listening takes them for its next connections. Failing to
        listen on node.yaml's address raises; on the advertised one (behind NAT it is not an
        address of this machine) it is logged."""
        base = hosts[0]
        for host in dict.fromkeys(hosts):
            server = self._servers.get(host)
            if server is None:
                try:
                    server = ApiServer(self.facade, settings, host=host, port=self.port)
                except HacoreError as err:
                    if host == base:
                        raise
                    log.warning("the API is not served on %s (%s); only on %s", host, err, base)
                    continue
                self._servers[host] = server.start()
            server.set_settings(settings)
            server.set_tls(context, plain)

    def close(self) -> None:
        for server in list(self._servers.values()):
            server.shutdown()
        self._servers.clear()
