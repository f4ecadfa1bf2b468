"""supervisord's XML-RPC interface over its unix socket or its loopback HTTP port.

The standard library speaks XML-RPC; it only lacks a transport for a unix socket, which is
where supervisord listens by default (``[unix_http_server]``). The ``supervisor`` package
itself is not needed.
"""

from __future__ import annotations

import http.client
import socket
import xmlrpc.client
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import attrs

from hacore.config.check import backend_settings
from hacore.errors import ConfigError, ServiceError

WHERE = "services"
#: Debian's and most distributions' default ``[unix_http_server] file``
DEFAULT_SOCKET = "/var/run/supervisor.sock"
_KNOWN = ("socket", "url", "username", "password", "timeout")


class Faults:
    """supervisord's fault codes (``supervisor.xmlrpc.Faults``)."""

    BAD_NAME = 10
    NO_FILE = 20
    NOT_EXECUTABLE = 21
    FAILED = 30
    ABNORMAL_TERMINATION = 40
    SPAWN_ERROR = 50
    ALREADY_STARTED = 60
    NOT_RUNNING = 70


@attrs.frozen
class SupervisorSettings:
    """Where supervisord listens: a unix ``socket`` path or an ``http://`` ``url``."""

    socket: str | None = None
    url: str | None = None
    username: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    #: covers a start's ``startsecs`` and a stop's ``stopwaitsecs`` (supervisord answers
    #: those calls only when the program is up, or down)
    timeout: float = 60.0

    @property
    def where(self) -> str:
        return f"unix://{self.socket}" if self.socket else str(self.url)

    @classmethod
    def parse(cls, settings: Mapping[str, Any]) -> SupervisorSettings:
        sec = backend_settings(WHERE, settings, _KNOWN)
        socket_path = sec.optional_path("socket")
        url = sec.optional_string("url")
        sock = None if socket_path is None else str(socket_path)
        if sock is not None and url is not None:
            sec.problem(f"{WHERE}: give socket or url for supervisord, not both")
        elif url is not None:
            url = sec.attempt(lambda: _check_url(str(url)), url)
        elif sock is None:
            sock = DEFAULT_SOCKET
        username = sec.optional_string("username")
        password = sec.optional_secret("password", what="a non-empty string")
        if (username is None) != (password is None):
            sec.problem(f"{WHERE}: username and password must be given together")
        timeout = sec.number("timeout", 60.0, what="a number of seconds > 0")
        sec.done()
        return cls(sock, url, username, password, timeout)


def _check_url(url: str) -> str:
    parts = urlsplit(url)
    example = "such as http://127.0.0.1:9001"
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(f"{WHERE}.url must be an http:// URL {example} (got {url!r})")
    if parts.username or parts.password:
        raise ConfigError(f"{WHERE}.url: give the credentials as username and password")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigError(f"{WHERE}.url has an invalid port (got {url!r})") from None
    path = parts.path.rstrip("/") or "/RPC2"
    return f"http://{parts.netloc}{path}"


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _Transport(xmlrpc.client.Transport):
    """HTTP with a timeout, over TCP or (``socket_path``) a unix socket."""

    def __init__(self, socket_path: str | None, timeout: float) -> None:
        super().__init__()
        self.socket_path = socket_path
        self.timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        chost, self._extra_headers, _ = self.get_host_info(host)
        if self.socket_path is not None:
            return _UnixHTTPConnection(self.socket_path, self.timeout)
        return http.client.HTTPConnection(chost, timeout=self.timeout)


class SupervisorClient:
    """One XML-RPC call per connection: the agent's loop and its health checks may call at once."""

    def __init__(self, settings: SupervisorSettings) -> None:
        self.settings = settings

    def call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """Call ``supervisor.<method>``; a Fault is the caller's to interpret."""
        s = self.settings
        auth = ""
        if s.username is not None and s.password is not None:
            auth = f"{quote(s.username, safe='')}:{quote(s.password, safe='')}@"
        if s.socket is not None:
            uri = f"http://{auth}localhost/RPC2"
        else:
            assert s.url is not None
            uri = s.url.replace("http://", f"http://{auth}", 1)
        transport = _Transport(s.socket, timeout or s.timeout)
        try:
            with xmlrpc.client.ServerProxy(uri, transport=transport) as proxy:
                return getattr(proxy.supervisor, method)(*args)
        except xmlrpc.client.Fault:
            raise
        except xmlrpc.client.ProtocolError as err:
            if err.errcode == 401:
                raise ServiceError(
                    f"supervisord at {s.where} refused the credentials (HTTP 401): check "
                    "services.username and services.password"
                ) from None
            raise ServiceError(
                f"supervisord at {s.where} answered HTTP {err.errcode} {err.errmsg}"
            ) from None
        except TimeoutError:
            raise ServiceError(
                f"supervisord at {s.where} did not answer {method} within "
                f"{timeout or s.timeout:g} s"
            ) from None
        except OSError as err:
            reason = err.strerror or str(err)
            raise ServiceError(f"cannot reach supervisord at {s.where}: {reason}") from None
        except (http.client.HTTPException, xmlrpc.client.ResponseError) as err:
            raise ServiceError(f"bad answer from supervisord at {s.where}: {err}") from None
