"""A small client for the Syncthing REST API, on httpx.

Only the calls hacore needs; every failure becomes a :class:`FilesyncError` that names the
call, so the agent can print it as one line.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import httpx

from hacore.errors import FilesyncError

#: Syncthing's "never" timestamp
_ZERO_YEAR = 1


def timestamp(raw: object) -> float | None:
    """A Syncthing RFC 3339 time as epoch seconds; None for its zero time or garbage."""
    if not isinstance(raw, str) or not raw:
        return None
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        return None
    return None if parsed.year <= _ZERO_YEAR + 1 else parsed.timestamp()


UNIX = "unix://"


class SyncthingApi:
    """One Syncthing instance's REST API, authenticated by its API key.

    ``base_url`` is ``unix:///path/to/socket`` or an ``http(s)://`` URL. The environment's
    proxies never apply (``trust_env=False``): a proxy in ``HTTP_PROXY`` would otherwise
    receive the API key, even for a loopback address.
    """

    def __init__(self, base_url: str, api_key: str, *, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        transport = None
        url = self.base_url
        if url.startswith(UNIX):
            transport = httpx.HTTPTransport(uds=url[len(UNIX) :])
            url = "http://localhost"
        self._client = httpx.Client(
            base_url=url,
            headers={"X-API-Key": api_key},
            timeout=timeout,
            transport=transport,
            trust_env=False,
        )

    def close(self) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | httpx.QueryParams | None = None,
        body: Any = None,
        timeout: float | None = None,
    ) -> Any:
        try:
            response = self._client.request(
                method,
                path,
                params=params,
                json=body,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
        except httpx.HTTPError as err:
            raise FilesyncError(
                f"Syncthing API at {self.base_url} did not answer {method} {path}: {err!r}"
            ) from None
        if response.status_code >= 400:
            text = response.text.strip().splitlines()[0] if response.text.strip() else ""
            raise FilesyncError(
                f"Syncthing API {method} {path} failed: HTTP {response.status_code} {text}"
            )
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return response.text

    def get(self, path: str, **params: str) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, **params: str) -> Any:
        return self.request("POST", path, params=params)

    def ping(self, timeout: float = 1.0) -> bool:
        try:
            return bool(self.request("GET", "/rest/system/ping", timeout=timeout))
        except FilesyncError:
            return False

    def my_id(self) -> str:
        return str(self.get("/rest/system/status")["myID"])

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = self.get("/rest/config")
        return config

    def put_config(self, config: Mapping[str, Any]) -> None:
        self.request("PUT", "/rest/config", body=config)

    def patch_folder(self, folder: str, changes: Mapping[str, Any]) -> None:
        self.request("PATCH", f"/rest/config/folders/{folder}", body=changes)

    def patch_device(self, device_id: str, changes: Mapping[str, Any]) -> None:
        self.request("PATCH", f"/rest/config/devices/{device_id}", body=changes)

    def patch_options(self, changes: Mapping[str, Any]) -> None:
        self.request("PATCH", "/rest/config/options", body=changes)

    def default_folder(self) -> dict[str, Any]:
        folder: dict[str, Any] = self.get("/rest/config/defaults/folder")
        return folder

    def folder_status(self, folder: str) -> dict[str, Any]:
        status: dict[str, Any] = self.get("/rest/db/status", folder=folder)
        return status

    def completion(self, folder: str, device: str | None = None) -> dict[str, Any]:
        params = {"folder": folder} if device is None else {"folder": folder, "device": device}
        completion: dict[str, Any] = self.get("/rest/db/completion", **params)
        return completion

    def folder_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.get("/rest/stats/folder")
        return stats

    def pending_devices(self) -> dict[str, Any]:
        """Devices that called this one while it did not know them, by device ID; none
        from a Syncthing older than 1.18, which has no such call."""
        try:
            pending: dict[str, Any] = self.get("/rest/cluster/pending/devices") or {}
        except FilesyncError:
            return {}
        return pending

    def connections(self) -> dict[str, Any]:
        connections: dict[str, Any] = self.get("/rest/system/connections")["connections"]
        return connections

    def scan(self, folder: str, timeout: float | None = None) -> None:
        """Returns when the scan is done."""
        self.request("POST", "/rest/db/scan", params={"folder": folder}, timeout=timeout)

    def wait_running(self, folder: str, timeout: float) -> None:
        """A folder restarts after a config change; scans and reverts want it running."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                state = self.folder_status(folder).get("state")
            except FilesyncError:
                state = None
            if state and state != "error":
                return
            if time.monotonic() > deadline:
                detail = ""
                with contextlib.suppress(FilesyncError, KeyError, TypeError):
                    detail = str(self.folder_status(folder).get("error") or "")
                raise FilesyncError(
                    f"Syncthing folder {folder} is {state or 'not answering'}"
                    + (f": {detail}" if detail else "")
                )
            time.sleep(0.05)

    def scan_when_ready(self, folder: str, ready_timeout: float, scan_timeout: float) -> None:
        """Scan now and wait for it; a folder restarting after a type change refuses for a
        moment (up to ``ready_timeout``), and a large tree takes long to scan."""
        deadline = time.monotonic() + ready_timeout
        while True:
            try:
                self.scan(folder, timeout=max(self.timeout, scan_timeout))
                return
            except FilesyncError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def revert(self, folder: str) -> None:
        self.post("/rest/db/revert", folder=folder)

    def override(self, folder: str) -> None:
        self.post("/rest/db/override", folder=folder)

    def shutdown(self) -> None:
        self.post("/rest/system/shutdown")

    def events(self, since: int, types: Sequence[str], timeout: float) -> list[dict[str, Any]]:
        """Long-poll for events after ``since``; an empty list when none came in ``timeout``."""
        params = {"since": str(since), "timeout": str(int(max(1, timeout)))}
        if types:
            params["events"] = ",".join(types)
        found = self.request("GET", "/rest/events", params=params, timeout=timeout + 10)
        return list(found or [])
