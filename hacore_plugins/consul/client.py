"""py-consul clients for several agents, each call bounded by one deadline.

py-consul fixes one socket timeout per client. hacore needs the whole call, across every agent
tried, to end within ``retry_timeout``, so each request's timeout is cut to what is left of
the current call's deadline (kept per thread: the agent loop and the API may share a backend).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import consul
import consul.exceptions
import consul.std
import requests
import urllib3.exceptions

from hacore.errors import ConfigError, HacoreError, StoreUnavailableError
from hacore_plugins.consul.settings import ConsulSettings, Endpoint

T = TypeVar("T")

#: A refused connection is known at once; a silent host costs at most this to connect to.
CONNECT_TIMEOUT = 0.5
#: The least time one agent gets when the deadline is shared among several.
MIN_ATTEMPT = 0.25

_call = threading.local()


class _DeadlineHTTPClient(consul.std.HTTPClient):  # type: ignore[misc]
    def timeout(self, params: Any) -> float | tuple[float, float] | None:
        base: float | None = super().timeout(params)
        deadline: float | None = getattr(_call, "deadline", None)
        if deadline is None or base is None:
            return base
        read = max(0.001, min(base, deadline - time.monotonic()))
        return (min(read, CONNECT_TIMEOUT), read)


class _Client(consul.std.Consul):  # type: ignore[misc]
    def http_connect(
        self, host: str, port: int, scheme: str, verify: bool | str = True, cert: Any = None
    ) -> _DeadlineHTTPClient:
        return _DeadlineHTTPClient(
            host, port, scheme, verify, cert, connections_timeout=self.connections_timeout
        )


def make_client(endpoint: Endpoint, settings: ConsulSettings, timeout: float) -> consul.Consul:
    client = _Client(
        host=endpoint.host,
        port=endpoint.port,
        scheme=endpoint.scheme,
        token=settings.token,
        dc=settings.datacenter,
        verify=settings.verify,
        cert=settings.cert,
        connections_timeout=timeout,
    )
    # py-consul lets $CONSUL_HTTP_TOKEN override the token it is given; the config wins here.
    if settings.token is not None:
        client.token = settings.token
    return client


def _never_sent(exc: requests.RequestException) -> bool:
    """True when the request surely did not reach the agent, so a retry cannot apply it twice."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if isinstance(exc, requests.ConnectionError) and exc.args:
        reason = getattr(exc.args[0], "reason", None)
        return isinstance(reason, urllib3.exceptions.NewConnectionError)
    return False


def _no_leader(exc: consul.ConsulException) -> bool:
    # Answered by a server that knows no raft leader: nothing was applied.
    return "No cluster leader" in str(exc)


class ConsulPool:
    """The configured agents, tried in order; the last one that answered is tried first."""

    def __init__(self, settings: ConsulSettings, retry_timeout: float) -> None:
        self.settings = settings
        self.retry_timeout = retry_timeout
        self.clients: Sequence[consul.Consul] = [
            make_client(endpoint, settings, retry_timeout) for endpoint in settings.endpoints
        ]
        self._current = 0

    @property
    def urls(self) -> str:
        return ", ".join(endpoint.url for endpoint in self.settings.endpoints)

    def close(self) -> None:
        """Drop the pooled HTTP connections; the pool still works (it reconnects) afterwards."""
        for client in self.clients:
            client.http.session.close()

    def call(
        self,
        fn: Callable[[consul.Consul], T],
        *,
        what: str,
        idempotent: bool = True,
        timeout: float | None = None,
        blocking: bool = False,
    ) -> T:
        """Run ``fn`` against the first agent that answers before the deadline.

        The time left is shared among the agents not yet tried in this round, so one hung
        agent cannot eat the whole budget (except for a ``blocking`` query, which must be
        allowed its whole wait). A write that is not idempotent is retried only when it
        surely was not applied; otherwise the outcome is unknown and the error says so.
        """
        budget = self.retry_timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        count = len(self.clients)
        last: Exception | None = None
        try:
            while True:
                for step in range(count):
                    index = (self._current + step) % count
                    remaining = deadline - time.monotonic()
                    share = remaining if blocking else max(remaining / (count - step), MIN_ATTEMPT)
                    _call.deadline = time.monotonic() + min(share, remaining)
                    try:
                        result = fn(self.clients[index])
                    except requests.RequestException as exc:
                        if not idempotent and not _never_sent(exc):
                            raise StoreUnavailableError(
                                f"Consul {what}: no answer from "
                                f"{self.settings.endpoints[index].url} and the write may or may "
                                "not have been applied"
                            ) from exc
                        last = exc
                    except (consul.ACLPermissionDenied, consul.ACLDisabled) as exc:
                        raise ConfigError(
                            f"Consul refused {what}: the ACL token lacks permission ({exc})"
                        ) from exc
                    except consul.NotFound:
                        raise
                    except (consul.exceptions.BadRequest, consul.exceptions.ClientError) as exc:
                        raise HacoreError(f"Consul rejected {what}: {exc}") from exc
                    except consul.ConsulException as exc:
                        text = str(exc).strip()
                        if "Invalid Session TTL" in text:
                            raise ConfigError(
                                f"Consul refused the session TTL ({text}); raise ttl or "
                                "adjust the consul 'min_session_ttl' setting"
                            ) from exc
                        if not idempotent and not _no_leader(exc):
                            raise StoreUnavailableError(
                                f"Consul {what} failed ({text}); the write may or may not have "
                                "been applied"
                            ) from exc
                        last = exc
                    else:
                        self._current = index
                        return result
                    if time.monotonic() >= deadline:
                        break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                time.sleep(min(0.05, remaining))
        finally:
            _call.deadline = None
        raise StoreUnavailableError(
            f"Consul {what}: no agent answered within {budget:g}s (tried {self.urls}): {last}"
        )
