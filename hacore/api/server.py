"""The agent's REST API: probes for load balancers, the cluster operations the CLI calls, metrics.

HTTP/1.1 with keep-alive, served so that no client can make the API cost the agent more than
a bounded share of its descriptors and interpreter (DESIGN rule 8): one thread owns every
socket in a selector and answers the probes from the loop's cached
:class:`~hacore.agent.snapshot.NodeSnapshot`, a few worker threads run what may block, each client
address has a connection cap enforced at accept, and each request one deadline for its TLS
handshake, headers and body (see :class:`~hacore.api.transport.Transport`).

Routing lives in :class:`~hacore.api.app.ApiApp`, which turns a
:class:`~hacore.api.messages.Request` into a :class:`~hacore.api.messages.Response` without touching
sockets; :class:`ApiServer` binds it to a port. The pieces by module: :mod:`hacore.api.messages`
(messages, parsing, limits), :mod:`hacore.api.transport` (sockets and threads),
:mod:`hacore.api.app` (routing, authentication, errors) and the handlers by group
(:mod:`hacore.api.probe_routes`, :mod:`hacore.api.view_routes`,
:mod:`hacore.api.operation_routes`).
"""

from __future__ import annotations

import logging
import ssl
import threading

from hacore.api.app import ApiApp
from hacore.api.facade import AgentFacade
from hacore.api.limits import connection_budget
from hacore.api.messages import PlainHttp, Request, Response
from hacore.api.transport import (
    IDLE_TIMEOUT,
    PER_CLIENT,
    REQUEST_TIMEOUT,
    WORKERS,
    Transport,
)
from hacore.config.node import ApiSettings
from hacore.errors import HacoreError

logger = logging.getLogger(__name__)


class ApiServer:
    """The REST API on one address; :meth:`start` serves it from a background thread.

    It binds at construction, so a taken port fails at once and ``port`` (0 asks the kernel for
    a free one) is known before :meth:`start`. The limits (see :class:`Transport` and
    docs/api.md) default to the module's constants; ``max_connections`` to what the process's
    descriptor limit leaves after the agent's own needs.
    """

    def __init__(
        self,
        facade: AgentFacade,
        settings: ApiSettings,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        plain: PlainHttp = PlainHttp.NONE,
        idle_timeout: float = IDLE_TIMEOUT,
        request_timeout: float = REQUEST_TIMEOUT,
        workers: int = WORKERS,
        per_client: int = PER_CLIENT,
        max_connections: int | None = None,
    ) -> None:
        self.app = ApiApp(facade, settings)
        self.host = host
        self.tls = ssl_context is not None
        try:
            self._transport = Transport(
                (host, port),
                self.app,
                ssl_context,
                plain,
                idle_timeout=idle_timeout,
                request_timeout=request_timeout,
                workers=workers,
                per_client=per_client,
                max_connections=max_connections or connection_budget(),
            )
        except OSError as err:
            raise HacoreError(
                f"the REST API cannot listen on {host}:{port}: {err.strerror or err}"
            ) from None
        self._thread: threading.Thread | None = None
        if self.tls:
            self.app.set_plain(plain, self.url)

    @property
    def port(self) -> int:
        return int(self._transport.address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def refused(self) -> int:
        """Connections refused at accept so far (over the per-client or the total limit)."""
        return self._transport.refused

    def set_settings(self, settings: ApiSettings) -> None:
        self.app.set_settings(settings)

    def set_tls(self, ssl_context: ssl.SSLContext | None, plain: PlainHttp) -> None:
        """Serve TLS from now on (new connections), and ``plain`` to plain-HTTP ones; None
        goes back to plain HTTP for everything."""
        self.tls = ssl_context is not None
        self.app.set_plain(plain if self.tls else PlainHttp.ALL, self.url)
        self._transport.tls = (ssl_context, plain)

    def start(self) -> ApiServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._transport.serve, name=f"hacore-api-{self.port}", daemon=True
            )
            self._thread.start()
            logger.info("REST API listening on %s", self.url)
        return self

    def shutdown(self) -> None:
        """Stop accepting, end open keep-alive connections, release the port."""
        if self._thread is not None:
            self._transport.stop()
            self._thread.join()
            self._thread = None
        else:
            self._transport.close()

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


__all__ = ["ApiApp", "ApiServer", "PlainHttp", "Request", "Response"]
