"""The manager's REST service.

``python -m sample_manager.api --dsn DSN --resources DIR [--host 127.0.0.1] [--port 8100]``

| request | answer |
|---|---|
| ``GET /health`` | 200 when the database answers and takes writes, else 503 |
| ``POST /workflows`` ``{"name", "steps", "resumable"}`` | 201, the new pending workflow |
| ``GET /workflows[?state=S]`` | every workflow (in state S) |
| ``GET /workflows/{id}`` | one workflow with its recorded steps; 404 if unknown |
| ``GET /resources`` | the files of the resources directory, with their sizes |
| ``GET /resources/{name}`` / ``PUT /resources/{name}`` | read / write one file |

Each request opens its own database connection: after a failover the service runs on
another node anyway, and a connection that outlives its database would only fail later.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import psycopg

from sample_manager import workflows
from sample_manager.db import (
    Conn,
    DatabaseConfigError,
    connect,
    ensure_schema,
    first_line,
    resolve_dsn,
)

log = logging.getLogger("sample_manager.api")

DEFAULT_PORT = 8100
MAX_UPLOAD = 64 * 2**20
MAX_BODY = 64 * 2**10
_RESOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_WORKFLOW_PATH = re.compile(r"/workflows/(\d{1,9})")
_RESOURCE_PATH = re.compile(r"/resources/([^/]+)")


class ApiError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class ManagerServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], dsn: str, resources: Path) -> None:
        super().__init__(address, Handler)
        self.dsn = dsn
        self.resources = resources
        self._schema_ready = False
        self._schema_lock = threading.Lock()

    def database(self) -> Conn:
        conn = connect(self.dsn, application="sample-manager-api")
        if not self._schema_ready:
            with self._schema_lock:
                try:
                    ensure_schema(conn)
                except BaseException:
                    conn.close()
                    raise
                self._schema_ready = True
        return conn


class Handler(BaseHTTPRequestHandler):
    server: ManagerServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)

    # -- routing ----------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        try:
            if method == "GET" and path == "/health":
                self._health()
            elif path == "/workflows" and method in ("GET", "POST"):
                if method == "POST":
                    self._create_workflow()
                else:
                    self._list_workflows(parse_qs(url.query).get("state", [None])[0])
            elif method == "GET" and (match := _WORKFLOW_PATH.fullmatch(path)):
                self._get_workflow(int(match.group(1)))
            elif method == "GET" and path == "/resources":
                self._list_resources()
            elif method in ("GET", "PUT") and (match := _RESOURCE_PATH.fullmatch(path)):
                name = _resource_name(match.group(1))
                if method == "PUT":
                    self._put_resource(name)
                else:
                    self._get_resource(name)
            else:
                raise ApiError(HTTPStatus.NOT_FOUND, f"no route for {method} {path}")
        except ApiError as err:
            self._fail(err.status, str(err))
        except psycopg.OperationalError as err:
            self._fail(HTTPStatus.SERVICE_UNAVAILABLE, f"database: {first_line(err)}")
        except psycopg.Error as err:
            log.error("%s %s: %s", method, path, err)
            self._fail(HTTPStatus.INTERNAL_SERVER_ERROR, f"database: {first_line(err)}")

    def _fail(self, status: HTTPStatus, message: str) -> None:
        # A body the request may have left unread would be taken for the next request.
        self.close_connection = True
        self._send_json(status, {"error": message})

    # -- workflows --------------------------------------------------------------------------

    def _health(self) -> None:
        with self.server.database() as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        if row is None or row[0]:
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "the database is read-only")
        self._send_json(HTTPStatus.OK, {"ok": True})

    def _create_workflow(self) -> None:
        body = self._json_body()
        name, steps, resumable = body.get("name"), body.get("steps"), body.get("resumable", True)
        if not isinstance(name, str) or not name.strip():
            raise ApiError(HTTPStatus.BAD_REQUEST, '"name" must be a non-empty string')
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 10_000:
            raise ApiError(HTTPStatus.BAD_REQUEST, '"steps" must be an integer from 1 to 10000')
        if not isinstance(resumable, bool):
            raise ApiError(HTTPStatus.BAD_REQUEST, '"resumable" must be true or false')
        with self.server.database() as conn:
            created = workflows.create(conn, name, steps, resumable)
        self._send_json(HTTPStatus.CREATED, created.to_json())

    def _list_workflows(self, state: str | None) -> None:
        if state is not None and state not in workflows.STATES:
            known = ", ".join(workflows.STATES)
            raise ApiError(HTTPStatus.BAD_REQUEST, f"state must be one of {known}")
        with self.server.database() as conn:
            found = workflows.list_all(conn, state)
        self._send_json(HTTPStatus.OK, [w.to_json() for w in found])

    def _get_workflow(self, workflow_id: int) -> None:
        with self.server.database() as conn:
            found = workflows.get(conn, workflow_id)
            done = workflows.steps(conn, workflow_id) if found else []
        if found is None:
            raise ApiError(HTTPStatus.NOT_FOUND, f"no workflow {workflow_id}")
        self._send_json(HTTPStatus.OK, {**found.to_json(), "steps": [s.to_json() for s in done]})

    # -- resources --------------------------------------------------------------------------

    def _list_resources(self) -> None:
        root = self.server.resources
        listing = [
            {"name": entry.name, "size": entry.stat().st_size}
            for entry in sorted(root.iterdir())
            if entry.is_file() and _RESOURCE_NAME.fullmatch(entry.name)
        ]
        self._send_json(HTTPStatus.OK, listing)

    def _get_resource(self, name: str) -> None:
        try:
            data = (self.server.resources / name).read_bytes()
        except FileNotFoundError:
            raise ApiError(HTTPStatus.NOT_FOUND, f"no resource {name}") from None
        self._send(HTTPStatus.OK, data, "application/octet-stream")

    def _put_resource(self, name: str) -> None:
        length = self._length(MAX_UPLOAD)
        target = self.server.resources / name
        existed = target.exists()
        # Written aside and renamed, so a reader (or the file sync) never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=self.server.resources, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                remaining = length
                while remaining:
                    chunk = self.rfile.read(min(remaining, 2**16))
                    if not chunk:
                        raise ApiError(HTTPStatus.BAD_REQUEST, "the body ended early")
                    out.write(chunk)
                    remaining -= len(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        status = HTTPStatus.OK if existed else HTTPStatus.CREATED
        self._send_json(status, {"name": name, "size": length})

    # -- plumbing ---------------------------------------------------------------------------

    def _length(self, limit: int) -> int:
        raw = self.headers.get("Content-Length")
        if raw is None or not raw.isdigit():
            raise ApiError(HTTPStatus.LENGTH_REQUIRED, "a Content-Length header is required")
        length = int(raw)
        if length > limit:
            raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the limit is {limit} bytes")
        return length

    def _json_body(self) -> dict[str, Any]:
        raw = self.rfile.read(self._length(MAX_BODY))
        try:
            body = json.loads(raw)
        except ValueError:
            raise ApiError(HTTPStatus.BAD_REQUEST, "the body must be JSON") from None
        if not isinstance(body, dict):
            raise ApiError(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
        return body

    def _send_json(self, status: HTTPStatus, body: object) -> None:
        self._send(status, json.dumps(body).encode() + b"\n", "application/json")

    def _send(self, status: HTTPStatus, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _resource_name(raw: str) -> str:
    if not _RESOURCE_NAME.fullmatch(raw):
        raise ApiError(
            HTTPStatus.BAD_REQUEST,
            "a resource name is letters, digits, '.', '_' or '-', not starting with '.'",
        )
    return raw


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sample-manager-api", description=__doc__)
    parser.add_argument("--dsn", help="PostgreSQL DSN (default: $SAMPLE_MANAGER_DSN)")
    parser.add_argument("--resources", type=Path, required=True, help="the resources directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        dsn = resolve_dsn(args.dsn)
    except DatabaseConfigError as err:
        print(f"sample-manager-api: {err}", file=sys.stderr)
        return 2
    args.resources.mkdir(parents=True, exist_ok=True)
    server = ManagerServer((args.host, args.port), dsn, args.resources.resolve())
    log.info("serving on http://%s:%d (resources: %s)", args.host, args.port, args.resources)
    # SIGTERM (how hacore's process backend stops a service) ends the process at once: every
    # request is a short transaction the database either committed or rolled back.
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
