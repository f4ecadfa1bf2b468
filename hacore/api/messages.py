"""HTTP/1.1 messages as the REST API sees them: :class:`Request`, :class:`Response`, the
request-head parser with its limits, and the response encoder.

Kept apart from the sockets (:mod:`hacore.api.transport`) and the routes
(:mod:`hacore.api.app`) so that each can be read, and tested, without the others.
"""

from __future__ import annotations

import email.utils
import enum
import functools
import http
import json
import time
from collections.abc import Mapping
from typing import Any

import attrs

from hacore.api.auth import Role
from hacore.api.errors import BadRequestError

JSON = "application/json"
MAX_BODY = 1024 * 1024
MAX_HEADERS = 100
MAX_LINE = 8192
#: the largest request head (request line and headers) that can be valid
MAX_HEAD = (MAX_LINE + 2) * (MAX_HEADERS + 1)


class PlainHttp(enum.Enum):
    """What a server that speaks TLS does with a plain-HTTP connection on the same port."""

    #: nothing: the connection is treated as TLS, and its handshake fails
    NONE = "none"
    #: only the load-balancer probes that need no credentials; anything else gets a 403
    #: naming the HTTPS URL (so no credential or cluster data ever crosses in clear text)
    PROBES = "probes"
    #: everything, as without TLS: a node that is still being started or joined, whose local
    #: CLI may not have switched to HTTPS yet
    ALL = "all"


@attrs.frozen
class Request:
    method: str
    path: str
    #: names in lower case
    headers: Mapping[str, str]
    body: bytes = b""
    #: came over TLS (or from a server without TLS, where the question does not arise)
    secure: bool = True
    #: the client's address (for the per-client limits and the log)
    client: str = ""
    #: what the credentials may do, once checked (None: none checked, or none needed)
    role: Role | None = None
    #: the single-use join token presented instead of credentials (``POST /cluster/join``)
    join_token: str | None = None


@attrs.frozen
class Response:
    status: int
    body: bytes = b""
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()


def json_response(status: int, data: Any, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, json.dumps(data).encode(), JSON, headers)


def error_response(status: int, message: str, **headers: str) -> Response:
    return json_response(status, {"error": message}, tuple(headers.items()))


def json_object(req: Request) -> dict[str, Any]:
    """The body as a JSON object; an empty body is an empty object."""
    if not req.body.strip():
        return {}
    try:
        data = json.loads(req.body)
    except UnicodeDecodeError:
        raise BadRequestError("the request body is not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise BadRequestError(f"the request body is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise BadRequestError(
            f"the request body must be a JSON object, not a {type(data).__name__}"
        )
    return data


@functools.lru_cache(maxsize=2)
def _http_date(second: int) -> str:
    return email.utils.formatdate(second, usegmt=True)


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class Refused(Exception):
    """A request the transport answers itself, then closes the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@attrs.frozen
class Head:
    method: str
    target: str
    version: str
    #: names in lower case
    headers: dict[str, str]
    #: bytes of the head, its blank line included
    size: int
    body_length: int
    close: bool
    expect_continue: bool


def _head_end(buf: bytearray, start: int) -> tuple[int, int] | None:
    """Where the head's last line ends and where its blank line ends."""
    crlf, lf = buf.find(b"\n\r\n", start), buf.find(b"\n\n", start)
    found = [hit for hit in ((crlf, crlf + 3), (lf, lf + 2)) if hit[0] >= 0]
    return min(found) if found else None


def parse_head(buf: bytearray, start: int = 0) -> Head | None:
    """The request head at the start of ``buf`` (no leading blank lines), None while it is not
    all there; raises :class:`Refused`. ``start``: where a new line end may be."""
    end = _head_end(buf, start)
    if end is None:
        line_start = buf.rfind(b"\n") + 1
        if len(buf) - line_start > MAX_LINE:
            if line_start:
                raise Refused(431, "a request header line is too long")
            raise Refused(414, "the request line is too long")
        if len(buf) > MAX_HEAD:
            raise Refused(431, f"more than {MAX_HEADERS} request headers")
        return None
    last, size = end
    lines = bytes(buf[:last]).split(b"\n")
    requestline = lines[0].rstrip(b"\r").decode("iso-8859-1")
    if len(lines[0]) > MAX_LINE:
        raise Refused(414, "the request line is too long")
    words = requestline.split()
    if len(words) != 3 or not words[2].startswith("HTTP/"):
        raise Refused(400, f"malformed request line {requestline[:80]!r}")
    method, target, version = words
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise Refused(505, f"HTTP version {version[5:]!r} is not supported (use 1.1)")
    headers: dict[str, str] = {}
    for index, raw in enumerate(lines[1:]):
        if len(raw) > MAX_LINE + 1:
            raise Refused(431, "a request header line is too long")
        if index >= MAX_HEADERS:
            raise Refused(431, f"more than {MAX_HEADERS} request headers")
        line = raw.rstrip(b"\r").decode("iso-8859-1")
        name, colon, value = line.partition(":")
        # no folded lines, no space before the colon (RFC 9112 section 5)
        if not colon or not name or name != name.strip():
            raise Refused(400, "malformed request header line")
        key, value = name.lower(), value.strip()
        # repeated headers are joined, so a repeated Content-Length is refused
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    if "transfer-encoding" in headers:
        raise Refused(411, "send the request body with a Content-Length")
    raw_length = headers.get("content-length")
    try:
        length = int(raw_length) if raw_length is not None else 0
    except ValueError:
        length = -1
    if length < 0:
        raise Refused(400, "Content-Length is not a number >= 0")
    if length > MAX_BODY:
        raise Refused(413, f"request bodies are limited to {MAX_BODY} bytes")
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    return Head(
        method=method,
        target=target,
        version=version,
        headers=headers,
        size=size,
        body_length=length,
        close=version == "HTTP/1.0" or "close" in tokens,
        expect_continue=version == "HTTP/1.1"
        and headers.get("expect", "").lower() == "100-continue",
    )


def encode(resp: Response, *, head_only: bool, close: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {resp.status} {_reason(resp.status)}",
        "Server: hacore",
        f"Date: {_http_date(int(time.time()))}",
    ]
    if resp.content_type:
        lines.append(f"Content-Type: {resp.content_type}")
    lines.append(f"Content-Length: {len(resp.body)}")
    lines.extend(f"{name}: {value}" for name, value in resp.headers)
    if close:
        lines.append("Connection: close")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("iso-8859-1")
    return head if head_only or not resp.body else head + resp.body
