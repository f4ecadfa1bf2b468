"""A client for an agent's REST API, as the CLI and other agents use it.

Error answers come back as the :mod:`hacore.api.errors` class of their status, carrying the
agent's one-line message; no answer at all is :class:`~hacore.api.errors.ApiUnreachableError`.
:func:`find_active` walks a node list to the active, so a CLI profile keeps working after a
failover.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

import httpx

from hacore.api.auth import JOIN_TOKEN_USER
from hacore.api.errors import (
    ApiError,
    ApiUnreachableError,
    AuthenticationError,
    UnavailableError,
    error_for_status,
)

Verify = ssl.SSLContext | str | bool


def _ssl_verify(verify: Verify) -> ssl.SSLContext | bool:
    if isinstance(verify, str):
        try:
            return ssl.create_default_context(cafile=verify)
        except (OSError, ssl.SSLError) as err:
            raise ApiUnreachableError(f"cannot use the CA file {verify}: {err}") from None
    return verify


class ApiClient:
    """One agent's API. ``verify``: an SSL context, a CA file path, or a bool (httpx's)."""

    def __init__(
        self,
        base_url: str,
        auth: tuple[str, str] | None = None,
        timeout: float = 10.0,
        verify: Verify = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.has_auth = auth is not None
        #: the credentials are a single-use join token, not a user's
        self.join_token = auth is not None and auth[0] == JOIN_TOKEN_USER
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.base_url,
            auth=auth,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0)),
            # plain HTTP needs no CA bundle; loading one costs ~0.1 s per client
            verify=_ssl_verify(verify) if self.base_url.startswith("https:") else False,
            # node-to-node and local calls: HTTP_PROXY must not see the credentials
            trust_env=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ApiClient({self.base_url!r})"

    # ---- endpoints ----

    def status(self) -> dict[str, Any]:
        """The node's probe answer; ``["active"]`` says whether it is the active (a standby's
        503 is an answer here, not an error)."""
        return self._json(self._request("GET", "/status", ok=(200, 503)))

    def cluster(self) -> dict[str, Any]:
        return self._json(self._request("GET", "/cluster"))

    def cluster_ca(self) -> dict[str, Any]:
        """The cluster CA this node presents (public: needs no credentials)."""
        return self._json(self._request("GET", "/cluster/ca"))

    def nodes(self) -> list[dict[str, Any]]:
        nodes = self._json(self._request("GET", "/nodes")).get("nodes")
        if not isinstance(nodes, list):
            raise ApiError(f"unexpected answer from {self.base_url}/nodes: no node list")
        return nodes

    def node(self, name: str) -> dict[str, Any]:
        return self._json(self._request("GET", f"/nodes/{quote(name, safe='')}"))

    def start_cluster(self, options: dict[str, Any]) -> dict[str, Any]:
        return self._json(self._request("POST", "/cluster/start", json=options))

    def join_ticket(self, request: dict[str, Any]) -> dict[str, Any]:
        return self._json(self._request("POST", "/cluster/join", json=request))

    def remove_node(self, name: str) -> dict[str, Any]:
        return self._json(self._request("DELETE", f"/nodes/{quote(name, safe='')}"))

    def change_admin_password(self, new_password: str) -> dict[str, Any]:
        """On the active: the password this client authenticates with becomes ``new_password``."""
        return self._json(
            self._request("POST", "/cluster/admin-password", json={"new_password": new_password})
        )

    def teardown(self) -> dict[str, Any]:
        """This node's last step of ``cluster teardown`` (:mod:`hacore.cluster.teardown`)."""
        return self._json(self._request("POST", "/cluster/teardown", json={}))

    def switchover(self, to: str | None = None) -> dict[str, Any]:
        return self._json(self._request("POST", "/switchover", json={"to": to}))

    def restart_node(
        self, name: str, *, database: bool = True, services: bool = False, in_place: bool = False
    ) -> dict[str, Any]:
        body = {"database": database, "services": services}
        if in_place:
            body["in_place"] = True
        path = f"/nodes/{quote(name, safe='')}/restart"
        return self._json(self._request("POST", path, json=body))

    def reinit_node(self, name: str) -> dict[str, Any]:
        return self._json(self._request("POST", f"/nodes/{quote(name, safe='')}/reinit", json={}))

    def failover(self, to: str, *, dry_run: bool = False) -> dict[str, Any]:
        return self._json(self._request("POST", "/failover", json={"to": to, "dry_run": dry_run}))

    def pause(self, reason: str = "") -> dict[str, Any]:
        return self._json(self._request("POST", "/pause", json={"reason": reason}))

    def resume(self, *, force: bool = False) -> dict[str, Any]:
        return self._json(self._request("POST", "/resume", json={"force": force}))

    def history(self) -> dict[str, Any]:
        return self._json(self._request("GET", "/history"))

    def cluster_config(self) -> dict[str, Any]:
        return self._json(self._request("GET", "/cluster/config"))

    def change_cluster_config(self, settings: dict[str, Any], version: int) -> dict[str, Any]:
        body = {"settings": settings, "version": version}
        return self._json(self._request("PUT", "/cluster/config", json=body))

    def salvage_list(self) -> dict[str, Any]:
        return self._json(self._request("GET", "/salvage"))

    def salvage_show(self, ident: str) -> dict[str, Any]:
        return self._json(self._request("GET", f"/salvage/{quote(ident, safe='')}"))

    def explain(self, name: str) -> dict[str, Any]:
        return self._json(self._request("GET", f"/nodes/{quote(name, safe='')}/explain"))

    def metrics(self) -> str:
        return self._request("GET", "/metrics").text

    # ---- plumbing ----

    def _request(
        self, method: str, path: str, *, ok: tuple[int, ...] = (200,), json: Any = None
    ) -> httpx.Response:
        try:
            resp = self._http.request(method, path, json=json)
        except httpx.TimeoutException:
            raise ApiUnreachableError(
                f"cannot reach the hacore agent at {self.base_url}: "
                f"no answer within {self.timeout:g} s"
            ) from None
        except httpx.HTTPError as err:
            raise ApiUnreachableError(
                f"cannot reach the hacore agent at {self.base_url}: {_reason(err)}"
            ) from None
        if resp.status_code in ok:
            return resp
        if resp.status_code == 401:
            if self.has_auth:
                raise AuthenticationError(f"wrong credentials for {self.base_url}")
            raise AuthenticationError(
                f"{self.base_url} requires credentials (API user and password) and none were given"
            )
        raise error_for_status(resp.status_code, self._message(resp))

    def _message(self, resp: httpx.Response) -> str:
        try:
            message = resp.json().get("error")
        except (ValueError, AttributeError):
            message = None
        if isinstance(message, str) and message:
            return message
        return f"{resp.request.method} {resp.request.url} answered HTTP {resp.status_code}"

    def _json(self, resp: httpx.Response) -> dict[str, Any]:
        try:
            data = resp.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise ApiError(f"unexpected answer from {resp.request.url}: not a JSON object")
        return data


def _reason(err: httpx.HTTPError) -> str:
    cause: BaseException = err
    while not str(cause) and cause.__context__ is not None:
        cause = cause.__context__
    return str(cause) or type(cause).__name__


def find_active(
    urls: Iterable[str],
    auth: tuple[str, str] | None = None,
    *,
    timeout: float = 5.0,
    verify: Verify = True,
) -> ApiClient:
    """A client for the active node among ``urls``, skipping standbys and unreachable nodes.

    Wrong credentials are not skipped: every node of a cluster shares them, so trying the
    others would only hide the cause.
    """
    seen: list[str] = []
    for url in urls:
        client = ApiClient(url, auth, timeout=timeout, verify=verify)
        try:
            status = client.status()
        except AuthenticationError:
            client.close()
            raise
        except (ApiUnreachableError, ApiError) as err:
            seen.append(f"{url}: {err}")
            client.close()
            continue
        except BaseException:
            client.close()
            raise
        if status.get("active") is True:
            return client
        client.close()
        seen.append(f"{url}: {status.get('state', 'not active')}")
    if not seen:
        raise UnavailableError("no node URL given to look for the active node")
    raise UnavailableError("no active node found (" + "; ".join(seen) + ")")
